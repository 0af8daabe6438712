#!/usr/bin/env python3
"""Golden outputs of PIL / torchvision image transforms for the `data` crate's parity tests.

Writes data/tests/goldens/transforms.{json,bin.gz}: a manifest of cases (op, parameters, output shape,
byte offset into the .bin) and the gzipped concatenated outputs (uint8 images as HWC bytes, float tensors as
little-endian f32 CHW). Inputs are not stored: both sides generate them from `pattern()` below.

Setup (any recent versions; produced with pillow 13.0.0, torch 2.15.0, torchvision 0.29.2):
    python3 -m venv venv && venv/bin/pip install pillow numpy torch torchvision
    venv/bin/python tests/reference/data_transforms.py
"""
import gzip
import io
import json
import os
import struct

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter, ImageOps

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "tests", "goldens")


def pattern(w, h, seed):
    """Test image: a 0/255 checkerboard band (stresses bicubic overshoot and clipping), red/green
    gradients and xorshift32 noise in blue. Mirrored exactly by `pattern` in data/tests/parity.rs."""
    state = seed & 0xFFFFFFFF or 1
    out = np.zeros((h, w, 3), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            state ^= (state << 13) & 0xFFFFFFFF
            state ^= state >> 17
            state ^= (state << 5) & 0xFFFFFFFF
            noise = state & 0xFF
            if x * 3 < w and ((x // 3 + y // 3) % 2 == 0):
                out[y, x] = (255, 255, 255) if (x + y) % 4 < 2 else (0, 0, 0)
            else:
                out[y, x] = (x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), noise)
    return Image.fromarray(out, "RGB")


INPUTS = {
    "land": (61, 47, 7),
    "port": (40, 90, 11),
    "tiny": (9, 6, 3),
    "small": (24, 20, 5),
}
FILTERS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
}
TV_FILTERS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}

cases = []
blob = bytearray()


def add(op, params, arr, dtype):
    global blob
    arr = np.ascontiguousarray(arr)
    if dtype == "u8":
        data = arr.astype(np.uint8).tobytes()
    else:
        data = arr.astype("<f4").tobytes()
    cases.append({"op": op, "params": params, "shape": list(arr.shape), "dtype": dtype,
                  "offset": len(blob), "len": len(data)})
    blob += data


def img_arr(img):
    return np.asarray(img.convert("RGB"))


def main():
    imgs = {name: pattern(*spec) for name, spec in INPUTS.items()}

    # Resize(int): shorter side, torchvision output-size arithmetic, PIL antialiasing.
    for name, sizes in [("land", [5, 20, 32]), ("port", [7, 32]), ("tiny", [4, 24])]:
        for size in sizes:
            for filt in FILTERS:
                out = F.resize(imgs[name], size, TV_FILTERS[filt])
                add("resize_shorter", {"input": name, "size": size, "filter": filt}, img_arr(out), "u8")
    # Smooth (blurred) inputs, which is what natural images look like to a resampler.
    for name, sizes in [("land", [13, 20, 32]), ("port", [7, 11, 32])]:
        smooth = imgs[name].filter(ImageFilter.GaussianBlur(radius=2.0))
        for size in sizes:
            out = F.resize(smooth, size, TV_FILTERS["bicubic"])
            add("resize_shorter_smooth", {"input": name, "blur": 2.0, "size": size, "filter": "bicubic"},
                img_arr(out), "u8")
    # Explicit (w, h) resizes, independent per axis (one axis may stay unchanged). Pillow 13 runs the
    # vertical pass first iff (H - h) > 0 and (H - h) > 2 * (W - w); the shapes cover both orders:
    # both axes up, both down, one up and one down, and the rule's boundary (land 61x47: H - h = 20 =
    # 2 * (W - w) is horizontal first, H - h = 21 vertical first).
    for name, w, h in [("land", 17, 29), ("land", 61, 13), ("port", 7, 90), ("tiny", 30, 2),
                       ("tiny", 23, 17), ("port", 30, 20), ("land", 20, 40), ("land", 80, 12),
                       ("port", 10, 100), ("land", 51, 27), ("land", 51, 26), ("small", 31, 7)]:
        for filt in FILTERS:
            out = imgs[name].resize((w, h), FILTERS[filt])
            add("resize", {"input": name, "width": w, "height": h, "filter": filt}, img_arr(out), "u8")
    # A seeded sweep of small output shapes (sizes are stored in the params, not re-drawn in Rust).
    sweep = np.random.default_rng(20240613)
    for name in ["land", "port", "small"] * 6:
        w, h = (int(v) for v in sweep.integers(1, 21, size=2))
        filt = ["bicubic", "bilinear"][int(sweep.integers(0, 2))]
        out = imgs[name].resize((w, h), FILTERS[filt])
        add("resize", {"input": name, "width": w, "height": h, "filter": filt}, img_arr(out), "u8")
    for name, w, h in [("land", 15, 9), ("port", 9, 24), ("land", 23, 11)]:
        smooth = imgs[name].filter(ImageFilter.GaussianBlur(radius=2.0))
        out = smooth.resize((w, h), Image.BICUBIC)
        add("resize_smooth", {"input": name, "blur": 2.0, "width": w, "height": h, "filter": "bicubic"},
            img_arr(out), "u8")

    # CenterCrop: Python round() (half to even) and zero padding when the crop is larger.
    for name, size in [("land", 30), ("land", 31), ("land", 46), ("port", 39), ("tiny", 8), ("land", 70)]:
        add("center_crop", {"input": name, "size": size}, img_arr(F.center_crop(imgs[name], size)), "u8")

    # ToTensor + Normalize (ImageNet), and the full eval transform.
    tt = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    add("normalize", {"input": "land"}, tt(imgs["land"]).numpy(), "f32")
    ev = T.Compose([T.Resize(40, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(36), tt])
    add("eval_transform", {"input": "port", "resize": 40, "crop": 36}, ev(imgs["port"]).numpy(), "f32")

    # resized_crop = RandomResizedCrop after its parameters are drawn: PIL crops (a new image), then
    # resizes the crop, so the pass order follows the crop's shape. size is [height, width].
    for (i, j, h, w, size, filt) in [(3, 5, 30, 40, [24, 24], "bicubic"), (0, 0, 47, 61, [16, 16], "bilinear"),
                                     (10, 2, 12, 9, [20, 20], "bicubic"), (2, 20, 45, 12, [16, 16], "bicubic"),
                                     (1, 3, 45, 30, [16, 16], "bilinear"), (5, 0, 12, 40, [20, 20], "bicubic"),
                                     (0, 10, 40, 25, [18, 30], "bicubic"), (7, 7, 33, 33, [12, 20], "bilinear")]:
        out = F.resized_crop(imgs["land"], i, j, h, w, size, TV_FILTERS[filt])
        add("resized_crop", {"input": "land", "top": i, "left": j, "height": h, "width": w,
                             "size": size, "filter": filt}, img_arr(out), "u8")

    for r in [0.8, 1.9]:
        out = imgs["land"].filter(ImageFilter.GaussianBlur(radius=r))
        add("gaussian_blur", {"input": "land", "radius": r}, img_arr(out), "u8")
    add("hflip", {"input": "land"}, img_arr(F.hflip(imgs["land"])), "u8")

    # Colour ops, as torchvision's PIL functional applies them.
    for name in ["small"]:
        for f in [0.0, 0.6, 1.0, 1.37]:
            add("brightness", {"input": name, "factor": f}, img_arr(F.adjust_brightness(imgs[name], f)), "u8")
            add("contrast", {"input": name, "factor": f}, img_arr(F.adjust_contrast(imgs[name], f)), "u8")
            add("saturation", {"input": name, "factor": f}, img_arr(F.adjust_saturation(imgs[name], f)), "u8")
        for f in [-0.5, -0.1, 0.0, 0.037, 0.1, 0.5]:
            add("hue", {"input": name, "factor": f}, img_arr(F.adjust_hue(imgs[name], f)), "u8")
        add("grayscale", {"input": name}, img_arr(F.rgb_to_grayscale(imgs[name], num_output_channels=3)), "u8")
        add("solarize", {"input": name, "threshold": 128}, img_arr(ImageOps.solarize(imgs[name], threshold=128)), "u8")
        for r in [0.1, 0.5, 0.93, 1.6, 2.0, 7.5, 30.0]:
            out = imgs[name].filter(ImageFilter.GaussianBlur(radius=r))
            add("gaussian_blur", {"input": name, "radius": r}, img_arr(out), "u8")

    # Label maps: nearest resize in mode L (what segmentation pipelines do to masks).
    lab = Image.fromarray((np.asarray(imgs["land"])[:, :, 2] % 7).astype(np.uint8), "L")
    for w, h in [(30, 23), (90, 70), (61, 20)]:
        add("label_nearest", {"input": "land", "width": w, "height": h},
            np.asarray(lab.resize((w, h), Image.NEAREST)), "u8")

    # JPEG decoding: PIL (libjpeg-turbo) pixels of a small committed JPEG.
    buf = io.BytesIO()
    imgs["land"].save(buf, format="JPEG", quality=90)
    jpeg_bytes = buf.getvalue()
    with open(os.path.join(ROOT, "land_q90.jpg"), "wb") as f:
        f.write(jpeg_bytes)
    add("jpeg_decode", {"file": "land_q90.jpg"}, img_arr(Image.open(io.BytesIO(jpeg_bytes))), "u8")

    os.makedirs(ROOT, exist_ok=True)
    with gzip.GzipFile(os.path.join(ROOT, "transforms.bin.gz"), "wb", mtime=0) as f:
        f.write(bytes(blob))
    meta = {"generator": "tests/reference/data_transforms.py",
            "versions": {"pillow": PIL.__version__, "torch": torch.__version__,
                         "torchvision": torchvision.__version__},
            "inputs": {k: list(v) for k, v in INPUTS.items()},
            "cases": cases}
    with open(os.path.join(ROOT, "transforms.json"), "w") as f:
        json.dump(meta, f, indent=0)
    print(f"{len(cases)} cases, {len(blob)} bytes")


if __name__ == "__main__":
    main()
