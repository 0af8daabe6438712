#!/usr/bin/env python3
"""Goldens for the fine-tuning / segmentation augmentations of the `data` crate (data/tests/augment.rs).

Writes data/tests/goldens/augment/augment.{json,bin.gz}: a manifest of cases (op, parameters, scripted
draws, expected boxes/values, byte offsets into the .bin) and the gzipped concatenated arrays (uint8 images
as HWC bytes, float tensors as little-endian f32, exact doubles as f64). The input images are stored in the .bin as well.

What each case runs (the real implementations wherever they exist):
  * timm 1.0 `auto_augment.AugmentOp` / `RandAugment` (Pillow ops) with their `random` / `np.random` draws
    replaced by scripted values, so that the op, magnitude and sign are explicit;
  * Pillow `Image.rotate` / `Image.transform(AFFINE)` with every filter;
  * timm `RandomErasing._erase` and `mixup.{mixup_target, rand_bbox, cutmix_bbox_and_lam, Mixup}` with
    scripted draws;
  * torchvision `RandomCrop(size, padding=4)` under `torch.manual_seed`, and the eval pipeline
    Resize → CenterCrop → ToTensor → Normalize;
  * mmseg 0.12 `PhotoMetricDistortion` transcribed below with explicit draws (mmseg/mmcv are not installable
    next to torch 2.x); its colour conversions are the real `cv2.cvtColor`.

OpenCV's uint8 HSV→RGB result depends on the SIMD path the wheel dispatches to (AVX2: blocks of 32
pixels truncated with fused multiply-adds, scalar tail rounded); the CPU features are recorded in the
manifest and the Rust test picks the matching backend.

Setup (produced with the versions recorded in the manifest: pillow 13.0.0, timm 1.0.31, torch 2.15.0,
torchvision 0.29.2, numpy 2.4, opencv-python-headless 5.0.0):
    python3 -m venv venv && venv/bin/pip install pillow==13.0.0 timm==1.0.31 numpy torch torchvision \
        opencv-python-headless==5.0.0.93
    venv/bin/python tests/reference/data_augment_reference.py
"""
import gzip
import json
import os

import cv2
import numpy as np
import PIL
import timm
import timm.data.auto_augment as aa
import timm.data.mixup as tmix
import timm.data.random_erasing as terase
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

ROOT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "tests", "goldens", "augment"
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

blob = bytearray()
cases = []
inputs = {}


def put(arr):
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint8:
        dtype = "u8"
    elif arr.dtype == np.float32:
        dtype = "f32"
        arr = arr.astype("<f4")
    elif arr.dtype == np.float64:  # exact doubles (JSON readers may round the last bit)
        dtype = "f64"
        arr = arr.astype("<f8")
    else:
        raise TypeError(arr.dtype)
    off = len(blob)
    blob.extend(arr.tobytes())
    return {"dtype": dtype, "shape": list(arr.shape), "offset": off, "len": len(blob) - off}


def case(op, params, **out):
    entry = {"op": op, "params": params}
    entry.update(out)
    cases.append(entry)


def natural(w, h, seed):
    """Smooth colour fields, a noisy channel and saturated 0/255 squares (bicubic overshoot)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 90 * np.sin(x / 4.0 + seed) * np.cos(y / 6.0)
    g = 180 * x / max(w - 1, 1) + 40 * np.sin((x + y) / 3.0)
    b = 200 * y / max(h - 1, 1) + rng.normal(0, 6, (h, w))
    img = np.stack([r, g, b], -1)
    img[2:6, 2:6] = 255
    img[h - 6 : h - 2, w - 6 : w - 2] = 0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def add_input(name, arr):
    inputs[name] = put(arr)
    return arr


def pil(arr):
    return Image.fromarray(arr, "RGB")


class Script:
    """Stands in for Python's `random` module: each call pops the next scripted value."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = []
        self.ints = []

    def _next(self, kind):
        if not self.values:
            raise RuntimeError(f"script exhausted at {kind}")
        self.calls.append(kind)
        return self.values.pop(0)

    def random(self):
        return self._next("random")

    def gauss(self, mu, sigma):
        return self._next("gauss")

    def uniform(self, a, b):
        # Scripted as the unit draw u, mapped with CPython's formula.
        u = self._next("uniform")
        return a + (b - a) * u

    def randint(self, a, b):
        u = self._next("randint")
        v = a + int(u * (b - a + 1))
        self.ints.append(v)
        return v


# ---------------------------------------------------------------------------------------------
# RandAugment: every op of the increasing set, fixed magnitudes, both signs

RA_OPS = list(aa._RAND_INCREASING_TRANSFORMS)
SIGNED = {
    "Rotate",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
}


def ra_hparams(img_size):
    # transforms_imagenet_train's aa_params for the BEiT/DeiT recipe (interpolation bicubic).
    return dict(
        translate_const=int(img_size * 0.45),
        img_mean=tuple([min(255, round(255 * x)) for x in IMAGENET_MEAN]),
        interpolation=Image.Resampling.BICUBIC,
    )


def run_op(name, img, magnitude, negate, hparams):
    op = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
    saved = aa.random
    aa.random = Script([0.9 if negate else 0.1] * 2)
    try:
        return np.asarray(op(pil(img))), None
    except ValueError as e:
        # Pillow 13 rejects posterize(bits=0), which PosterizeIncreasing asks for at magnitude 10.
        # Older Pillow (and the official runs) returned black: lut = [i & ~255] = 0.
        if name != "PosterizeIncreasing":
            raise
        level = aa.LEVEL_TO_ARG[name](max(0.0, min(magnitude, 10.0)), hparams)[0]
        assert level == 0, level
        return np.asarray(pil(img).point([0] * 768)), f"pillow raises ({e}); old-Pillow result"
    finally:
        aa.random = saved


def ra_cases(images):
    hp = ra_hparams(32)
    for img_name, mags in (("sq", (0.0, 4.5, 9.0, 9.73, 10.0)), ("wide", (9.73, 10.0))):
        img = images[img_name]
        for name in RA_OPS:
            for m in mags:
                signs = [False, True] if (name in SIGNED and m > 0) else [False]
                for neg in signs:
                    out, note = run_op(name, img, m, neg, hp)
                    params = {"input": img_name, "name": name, "magnitude": m, "negate": neg}
                    if note:
                        params["note"] = note
                    case("ra_op", params, out=put(out))
    # Histogram ops on a low-contrast image and on degenerate histograms.
    for img_name in ("dim", "flat"):
        for name in ("AutoContrast", "Equalize", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
                     "ContrastIncreasing", "SharpnessIncreasing"):
            for m in (5.0, 9.0):
                out, note = run_op(name, images[img_name], m, False, hp)
                case("ra_op", {"input": img_name, "name": name, "magnitude": m, "negate": False}, out=put(out))


def ra_chain_cases(images):
    """RandAugment.__call__ end to end with scripted np.random.choice and random draws."""
    chains = [
        # (ops, python-random script): per op: random() prob draw, gauss magnitude, [random() sign]
        (["Rotate", "Equalize"], [0.2, 9.4, 0.7, 0.3, 8.1]),
        (["ShearX", "ShearX"], [0.6, 0.4, 9.2, 0.1]),
        (["TranslateYRel", "SolarizeAdd"], [0.5, 12.0, 0.9, 0.0, -1.0]),
        (["SharpnessIncreasing", "PosterizeIncreasing"], [0.01, 8.7, 0.2, 0.4, 9.9]),
        (["ColorIncreasing", "TranslateXRel"], [0.3, 9.0, 0.55, 0.45, 9.6, 0.4]),
    ]
    hp = ra_hparams(32)
    for img_name in ("sq", "wide"):
        for ops, script in chains:
            ra = aa.rand_augment_transform("rand-m9-mstd0.5-inc1", dict(hp))
            by_name = {op.name: op for op in ra.ops}
            chosen = [by_name[n] for n in ops]
            saved_choice, saved_random = np.random.choice, aa.random
            np.random.choice = lambda *a, **k: chosen
            aa.random = Script(script)
            try:
                out = np.asarray(ra(pil(images[img_name])))
                calls = aa.random.calls
            finally:
                np.random.choice, aa.random = saved_choice, saved_random
            case("ra_chain", {"input": img_name, "ops": ops, "script": script, "calls": calls}, out=put(out))


# ---------------------------------------------------------------------------------------------
# Pillow geometry with every filter

def geometry_cases(images):
    filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC}
    # RandAugment's cases above cover bicubic with a fill colour; these add the other filters, the
    # default black fill and the fast paths (0/90/180/270 degrees, scale-only and fixed-point nearest).
    img_name = "wide"
    img = pil(images[img_name])
    for fname, f in filters.items():
        for angle, fill in ((-33.7, None), (12.5, (124, 116, 104)), (90.0, None), (180.0, None),
                            (270.0, (1, 2, 3)), (0.0, None), (405.0, (124, 116, 104))):
            out = np.asarray(img.rotate(angle, resample=f, fillcolor=fill))
            case("rotate", {"input": img_name, "angle": angle, "filter": fname, "fill": fill}, out=put(out))
        for data, fill in (((1, 0.27, 0, 0, 1, 0), None), ((1, 0, -5.85, 0, 1, 0), (124, 116, 104)),
                           ((0.7, 0, 3.2, 0, 1.3, -2.0), None), ((0.9, -0.2, 4.0, 0.15, 1.1, -3.0), (9, 9, 9)),
                           ((1, 0.1, 40000.0, 0, 1, 0), (124, 116, 104)), ((-1, 0, 20.5, 0, -1, 15.25), None)):
            out = np.asarray(img.transform(img.size, Image.Transform.AFFINE, data, resample=f, fillcolor=fill))
            case("affine", {"input": img_name, "data": list(data), "filter": fname, "fill": fill}, out=put(out))


# ---------------------------------------------------------------------------------------------
# RandomErasing (timm) with scripted draws

def erasing_cases():
    rng = np.random.default_rng(11)
    shapes = [(24, 24), (17, 29), (8, 8), (40, 5), (3, 3), (224, 224)]
    for max_count in (None, 3):
        for (h, w) in shapes:
            for k in range(6):
                script = [float(u) for u in rng.random(1 + 3 + 10 * 4 * 3)]
                script[0] = 0.1 if k != 5 else 0.9  # p 0.25: draw 0.9 skips the image
                if k == 4:  # force failed attempts (two draws each): huge areas, extreme aspect ratios
                    first = 1 + (1 if max_count else 0)
                    for a in range(4):
                        script[first + 2 * a] = 0.999
                        script[first + 2 * a + 1] = 0.001 if a % 2 else 0.999
                er = terase.RandomErasing(0.25, mode="pixel", max_count=max_count, device="cpu")
                boxes = []

                s = Script(script)

                def fake_pixels(per_pixel, rand_color, patch_size, dtype=torch.float32, device="cpu"):
                    # _erase draws top then left right before asking for the pixels.
                    boxes.append([s.ints[-2], s.ints[-1], *patch_size[1:]])
                    return torch.full(patch_size, float(len(boxes)), dtype=dtype)

                saved_random, saved_pixels = terase.random, terase._get_pixels
                terase.random, terase._get_pixels = s, fake_pixels
                img = torch.zeros(3, h, w)
                try:
                    er(img)
                finally:
                    terase.random, terase._get_pixels = saved_random, saved_pixels
                # The markers written must agree with the recorded boxes (the last box wins overlaps).
                for n, (top, left, bh, bw) in enumerate(boxes, start=1):
                    region = img[:, top:top + bh, left:left + bw]
                    assert region.numel() == 0 or bool((region >= n).all()), (boxes, n)
                case("erasing", {"h": h, "w": w, "max_count": max_count, "script": script[: len(s.calls)],
                                 "calls": s.calls}, boxes=boxes)


# ---------------------------------------------------------------------------------------------
# Mixup / CutMix (timm)

def mixup_cases():
    labels = [3, 0, 9, 3, 7, 1]
    for lam in (1.0, 0.73, 0.5, 0.0421, 0.999):
        for smoothing in (0.1, 0.0):
            t = tmix.mixup_target(torch.tensor(labels), 10, lam, smoothing)
            case("mixup_target", {"labels": labels, "num_classes": 10, "lam": lam, "smoothing": smoothing},
                 out=put(t.numpy().astype(np.float32)))
    for (h, w) in ((24, 24), (17, 29), (224, 224), (5, 3)):
        for lam in (0.9, 0.5, 0.13, 0.0, 0.99999):
            for (cy, cx) in ((0, 0), (h // 2, w // 3), (h - 1, w - 1)):
                saved = np.random.randint
                seq = [cy, cx]
                np.random.randint = lambda lo, hi, size=None: seq.pop(0)
                try:
                    box = tmix.rand_bbox((3, h, w), lam)
                    seq[:] = [cy, cx]
                    box2, lam2 = tmix.cutmix_bbox_and_lam((2, 3, h, w), lam, correct_lam=True)
                finally:
                    np.random.randint = saved
                assert tuple(box) == tuple(box2)
                case("rand_bbox", {"h": h, "w": w, "lam": lam, "cy": cy, "cx": cx},
                     box=[int(v) for v in box], lam=put(np.array([lam2], dtype=np.float64)))
    # Batch mode: mixing with the flipped batch.
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 3, 9, 11, generator=gen)
    inputs["mix_batch"] = put(x0.numpy())
    labels = [2, 5, 5, 0]
    for use_cutmix, lam, cy, cx in ((False, 0.6180339887, 0, 0), (True, 0.41, 4, 7), (True, 0.8, 0, 10),
                                    (False, 1.0, 0, 0), (True, 0.02, 8, 1)):
        m = tmix.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                       correct_lam=True, label_smoothing=0.1, num_classes=6)
        m._params_per_batch = lambda: (lam, use_cutmix)
        saved = np.random.randint
        seq = [cy, cx]
        np.random.randint = lambda lo, hi, size=None: seq.pop(0)
        try:
            x = x0.clone()
            xm, target = m(x, torch.tensor(labels))
        finally:
            np.random.randint = saved
        case("mix_batch", {"labels": labels, "num_classes": 6, "smoothing": 0.1, "cutmix": use_cutmix,
                           "lam": lam, "cy": cy, "cx": cx},
             images=put(xm.numpy()), targets=put(target.numpy().astype(np.float32)))


# ---------------------------------------------------------------------------------------------
# Fine-tuning transforms (torchvision)

def finetune_cases(images):
    # <= 32 px: RandomCrop(size, padding=4) replaces RandomResizedCrop.
    for img_name, size, seed in (("sq32", 32, 0), ("sq32", 32, 7), ("sq32", 28, 3), ("wide", 17, 1)):
        img = pil(images[img_name])
        torch.manual_seed(seed)
        out = np.asarray(T.RandomCrop(size, padding=4)(img))
        torch.manual_seed(seed)
        i, j, _, _ = T.RandomCrop.get_params(F.pad(img, 4), (size, size))
        case("random_crop_pad", {"input": img_name, "size": size, "padding": 4, "top": i, "left": j},
             out=put(out))
    # Eval: Resize(int(size / crop_pct), interpolation) -> CenterCrop -> ToTensor -> Normalize.
    for img_name in ("land", "wide"):
        for size in (24, 20):
            for interp, mode in (("bilinear", T.InterpolationMode.BILINEAR),
                                 ("bicubic", T.InterpolationMode.BICUBIC)):
                resize = int(size / (224 / 256))
                t = T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(size), T.ToTensor(),
                               T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
                out = t(pil(images[img_name])).numpy()
                case("eval", {"input": img_name, "size": size, "resize": resize, "interpolation": interp},
                     out=put(out))
    t = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    case("eval", {"input": "sq32", "size": 32, "resize": None, "interpolation": "bicubic"},
         out=put(t(pil(images["sq32"])).numpy()))
    # Train with explicit draws: crop box -> resized_crop bicubic -> flip -> RandAugment -> tensor.
    hp = ra_hparams(24)
    for img_name, box, flip, ops, script in (
        ("land", (3, 5, 30, 41), True, ["Rotate", "ContrastIncreasing"], [0.2, 9.3, 0.8, 0.4, 8.8, 0.3]),
        ("land", (0, 0, 47, 61), False, ["Invert", "ShearY"], [0.9, 0.1, 9.1, 0.6]),
        ("wide", (2, 1, 12, 20), True, ["AutoContrast", "TranslateXRel"], [0.5, 9.5, 0.2, 8.9, 0.7]),
    ):
        img = F.resized_crop(pil(images[img_name]), *box, [24, 24], T.InterpolationMode.BICUBIC)
        if flip:
            img = F.hflip(img)
        ra = aa.rand_augment_transform("rand-m9-mstd0.5-inc1", dict(hp))
        by_name = {op.name: op for op in ra.ops}
        chosen = [by_name[n] for n in ops]
        saved_choice, saved_random = np.random.choice, aa.random
        np.random.choice = lambda *a, **k: chosen
        aa.random = Script(script)
        try:
            img = ra(img)
            calls = aa.random.calls
        finally:
            np.random.choice, aa.random = saved_choice, saved_random
        out = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(img)).numpy()
        case("train_explicit", {"input": img_name, "size": 24, "box": list(box), "flip": flip, "ops": ops,
                                "script": script, "calls": calls}, out=put(out))


# ---------------------------------------------------------------------------------------------
# PhotoMetricDistortion (mmseg 0.12, transcribed; colour conversions are cv2's)

def pmd_convert(img, alpha=1, beta=0):
    img = img.astype(np.float32) * alpha + beta
    img = np.clip(img, 0, 255)
    return img.astype(np.uint8)


def pmd_apply(rgb, d):
    """mmseg 0.12 PhotoMetricDistortion.__call__ with the draws given explicitly. mmseg's images are
    BGR; cv2's BGR2HSV on BGR equals RGB2HSV on RGB, so the RGB image is converted with the RGB codes."""
    img = rgb
    if d["brightness"] is not None:
        img = pmd_convert(img, beta=d["brightness"])
    if d["mode"] == 1 and d["contrast"] is not None:
        img = pmd_convert(img, alpha=d["contrast"])
    if d["saturation"] is not None:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        img[:, :, 1] = pmd_convert(img[:, :, 1], alpha=d["saturation"])
        img = cv2.cvtColor(img, cv2.COLOR_HSV2RGB)
    if d["hue"] is not None:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + d["hue"]) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2RGB)
    if d["mode"] == 0 and d["contrast"] is not None:
        img = pmd_convert(img, alpha=d["contrast"])
    return img


def photometric_cases(images):
    # Check the BGR/RGB claim on the real codes once.
    bgr = images["pm"][:, :, ::-1].copy()
    assert (cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV) == cv2.cvtColor(images["pm"], cv2.COLOR_RGB2HSV)).all()
    for img_name in ("pm", "wide", "sq"):
        img = images[img_name]
        case("cv_rgb2hsv", {"input": img_name}, out=put(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)))
    rng = np.random.default_rng(21)
    hsv = np.stack([rng.integers(0, 180, (40, 70)), rng.integers(0, 256, (40, 70)),
                    rng.integers(0, 256, (40, 70))], -1).astype(np.uint8)
    inputs["hsv"] = put(hsv)
    case("cv_hsv2rgb", {"input": "hsv"}, out=put(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)))
    draws = [
        dict(brightness=None, mode=0, contrast=None, saturation=None, hue=None),
        dict(brightness=-23.717, mode=0, contrast=None, saturation=None, hue=None),
        dict(brightness=31.2, mode=1, contrast=1.4321, saturation=None, hue=None),
        dict(brightness=None, mode=0, contrast=0.5123, saturation=1.37, hue=None),
        dict(brightness=None, mode=1, contrast=None, saturation=0.61, hue=-18),
        dict(brightness=5.5, mode=0, contrast=1.21, saturation=1.49, hue=17),
        dict(brightness=-31.9, mode=1, contrast=0.77, saturation=0.5, hue=4),
        dict(brightness=None, mode=0, contrast=None, saturation=None, hue=-7),
    ]
    for img_name in ("pm", "wide"):
        for d in draws:
            case("photometric", dict(input=img_name, **d), out=put(pmd_apply(images[img_name], d)))
    # convert(): float32 multiply-add, clip, truncate; every uint8 value.
    vals = np.arange(256, dtype=np.uint8)
    for alpha, beta in ((1, -23.717), (1, 31.2), (1.4321, 0), (0.5123, 0), (1.37, 0), (0.61, 0)):
        case("pmd_convert", {"alpha": alpha, "beta": beta}, out=put(pmd_convert(vals, alpha, beta)))


def opencv_simd():
    line = cv2.getCPUFeaturesLine() if hasattr(cv2, "getCPUFeaturesLine") else ""
    return {"cpu_features": line, "avx2": "*AVX2" in line.split()}


def main():
    images = {
        "sq": add_input("sq", natural(20, 20, 1)),
        "wide": add_input("wide", natural(29, 17, 2)),
        "sq32": add_input("sq32", natural(32, 32, 3)),
        "land": add_input("land", natural(61, 47, 4)),
        "pm": add_input("pm", natural(45, 20, 5)),
    }
    dim = (natural(16, 12, 6).astype(np.float64) * 0.45 + 60).astype(np.uint8)
    images["dim"] = add_input("dim", dim)
    flat = np.zeros((6, 8, 3), np.uint8)
    flat[:, :, 0] = 77  # one value: autocontrast/equalize leave the band alone
    flat[:, :4, 1] = 10
    flat[:, 4:, 1] = 200  # two values
    flat[:, :, 2] = np.arange(8, dtype=np.uint8)[None, :] * 30
    images["flat"] = add_input("flat", flat)

    ra_cases(images)
    ra_chain_cases(images)
    geometry_cases(images)
    erasing_cases()
    mixup_cases()
    finetune_cases(images)
    photometric_cases(images)

    os.makedirs(ROOT, exist_ok=True)
    with gzip.GzipFile(os.path.join(ROOT, "augment.bin.gz"), "wb", mtime=0) as f:
        f.write(bytes(blob))
    meta = {
        "generator": "tests/reference/data_augment_reference.py",
        "versions": {
            "pillow": PIL.__version__,
            "timm": timm.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
        "opencv_simd": opencv_simd(),
        "inputs": inputs,
        "cases": cases,
    }
    with open(os.path.join(ROOT, "augment.json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases, {len(blob)} bytes before gzip")


if __name__ == "__main__":
    main()
