#!/usr/bin/env python3
"""pycocotools goldens for the `data` crate's COCO mask code (data/src/rle.rs, data/src/coco.rs).

Writes data/tests/goldens/coco_masks.json with two parts:
  "cases": hand-made inputs with pycocotools' answers — random binary masks (compressed string,
           uncompressed counts, area, bbox) and polygons, some reaching outside the image
           (compressed string of `frPyObjects` + `merge`, area, bbox);
  "synth": for the annotations of `ibot data synth --seed 3 --images 8 --size 32` (train split),
           what pycocotools' `COCO.annToRLE` gives: the decoded mask re-encoded as a compressed
           string, its area and bbox. The Rust test regenerates the synthetic set and compares.

Setup (produced with pycocotools 2.0.11, numpy 2.x):
    python3 -m venv venv && venv/bin/pip install numpy pycocotools
    ibot data synth --out /tmp/synth --seed 3 --images 8 --size 32
    venv/bin/python tests/reference/data_coco.py /tmp/synth
If the generator changes on purpose, rerun both commands and commit the new golden.
"""
import importlib.metadata
import json
import os
import sys

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "tests", "goldens",
                   "coco_masks.json")
SYNTH = {"seed": 3, "images": 8, "size": 32, "split": "train"}


def uncompressed_counts(mask):
    """Runs over the column-major pixels, starting with background (the COCO convention)."""
    flat = np.asfortranarray(mask).ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            run, current = 0, v
        run += 1
    counts.append(run)
    return counts


def bbox_list(b):
    return [float(v) for v in b]


def mask_cases(rng):
    cases = []
    shapes = [(1, 1), (1, 7), (5, 1), (6, 8), (17, 13), (40, 33), (300, 200)]
    for h, w in shapes:
        for kind in ["empty", "full", "blobs", "noise"]:
            if kind == "empty":
                m = np.zeros((h, w), np.uint8)
            elif kind == "full":
                m = np.ones((h, w), np.uint8)
            elif kind == "blobs":
                m = np.zeros((h, w), np.uint8)
                for _ in range(3):
                    y0, x0 = rng.integers(0, h), rng.integers(0, w)
                    y1, x1 = rng.integers(y0, h) + 1, rng.integers(x0, w) + 1
                    m[y0:y1, x0:x1] = 1
            else:
                m = (rng.random((h, w)) < 0.3).astype(np.uint8)
            if h * w > 10000 and kind == "noise":
                continue  # keeps the golden small; blobs give the long runs
            rle = mask_utils.encode(np.asfortranarray(m))
            counts = uncompressed_counts(m)
            # frPyObjects on the uncompressed form must give the same string.
            via = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
            assert via["counts"] == rle["counts"]
            assert (mask_utils.decode(rle) == m).all()
            cases.append({
                "kind": "mask", "name": f"{kind}_{h}x{w}", "height": h, "width": w,
                "counts": counts, "compressed": rle["counts"].decode("ascii"),
                "area": int(mask_utils.area(rle)), "bbox": bbox_list(mask_utils.toBbox(rle)),
            })
    return cases


def polygon_cases(rng):
    cases = []
    specs = [
        ("square", 6, 8, [[1.5, 0.5, 5.5, 0.5, 5.5, 3.5, 1.5, 3.5]]),
        ("triangle", 20, 24, [[2.2, 3.1, 21.7, 5.4, 9.9, 18.6]]),
        ("outside", 16, 16, [[-4.0, -3.0, 20.5, 2.0, 14.0, 19.5, 1.0, 12.0]]),
        ("thin", 10, 30, [[0.0, 4.0, 29.9, 4.2, 29.9, 4.9, 0.0, 4.6]]),
        ("two_parts", 25, 25, [[1, 1, 8, 1, 8, 8, 1, 8], [5.5, 5.5, 20.3, 6.1, 12.4, 22.9]]),
    ]
    for i in range(6):
        h, w = int(rng.integers(8, 60)), int(rng.integers(8, 60))
        k = int(rng.integers(3, 12))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(1, max(h, w) * 0.6, k)
        poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).ravel()
        specs.append((f"random{i}", h, w, [[round(float(v), 3) for v in poly]]))
    for name, h, w, polys in specs:
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        cases.append({
            "kind": "polygon", "name": name, "height": h, "width": w, "polygons": polys,
            "compressed": rle["counts"].decode("ascii"),
            "area": int(mask_utils.area(rle)), "bbox": bbox_list(mask_utils.toBbox(rle)),
        })
    return cases


def synth_cases(root):
    path = os.path.join(root, "coco", "annotations", f"instances_{SYNTH['split']}.json")
    with open(os.path.join(root, "synth.json")) as f:
        cfg = json.load(f)["config"]
    assert {k: cfg[k] for k in ("seed", "images", "size")} == {k: SYNTH[k] for k in ("seed", "images", "size")}, cfg
    coco = COCO(path)
    out = []
    for ann_id in sorted(coco.anns):
        ann = coco.anns[ann_id]
        rle = coco.annToRLE(ann)
        mask = coco.annToMask(ann)
        again = mask_utils.encode(np.asfortranarray(mask))
        seg = ann["segmentation"]
        form = "polygon" if isinstance(seg, list) else (
            "uncompressed" if isinstance(seg["counts"], list) else "compressed")
        out.append({
            "id": ann_id, "form": form, "iscrowd": ann["iscrowd"],
            "compressed": again["counts"].decode("ascii"),
            "area": int(mask_utils.area(rle)), "bbox": bbox_list(mask_utils.toBbox(rle)),
        })
    forms = {c["form"] for c in out}
    assert forms == {"polygon", "compressed", "uncompressed"}, forms
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rng = np.random.default_rng(20240611)
    golden = {
        "pycocotools": importlib.metadata.version("pycocotools"),
        "cases": mask_cases(rng) + polygon_cases(rng),
        "synth_config": SYNTH,
        "synth": synth_cases(sys.argv[1]),
    }
    with open(OUT, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print(f"wrote {OUT}: {len(golden['cases'])} cases, {len(golden['synth'])} synth annotations, "
          f"{os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
