#!/usr/bin/env python3
"""Golden values for the `metrics` crate, computed by the reference tools.

Writes metrics/tests/goldens/{cluster,classification,segmentation,rle,coco}.json; the Rust tests in
metrics/tests/ and tests/cli_metrics.rs read them and need no Python.

Reference tools (versions used for the committed goldens are recorded in each file's "generator" field):
  * clustering:      scikit-learn (normalized_mutual_info_score, adjusted_rand_score,
                     fowlkes_mallows_score) and scipy.optimize.linear_sum_assignment for Hungarian ACC
  * classification:  numpy stable argsort (top-k with ties: score desc, then class index asc),
                     scikit-learn confusion_matrix / balanced_accuracy_score / top_k_accuracy_score
  * segmentation:    a numpy transcription of mmsegmentation 0.x `intersect_and_union` /
                     `total_area_to_metrics` (torch.histc over [0, C-1] == np.histogram with that range)
  * COCO + RLE:      pycocotools (COCOeval, pycocotools.mask)

Setup (any recent Python 3):
  python3 -m venv /opt/metricsvenv
  /opt/metricsvenv/bin/pip install numpy scipy scikit-learn pycocotools
Run from the repository root:
  /opt/metricsvenv/bin/python tests/reference/metrics_goldens.py
"""

import contextlib
import copy
import io
import json
import os
import sys

import numpy as np
import scipy
import scipy.optimize
import sklearn
from sklearn.metrics import (
    adjusted_rand_score,
    balanced_accuracy_score,
    confusion_matrix,
    fowlkes_mallows_score,
    normalized_mutual_info_score,
    top_k_accuracy_score,
)
from sklearn.metrics.cluster import contingency_matrix

import pycocotools
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "metrics", "tests", "goldens")
SEED = 20240611


def versions():
    return {
        "script": "tests/reference/metrics_goldens.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "pycocotools": getattr(pycocotools, "__version__", "2.0.x"),
    }


def nan_to_none(x):
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    x = float(x)
    return None if np.isnan(x) else x


def write(name, payload):
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name)
    with open(path, "w") as f:
        json.dump(payload, f, separators=(",", ":"), allow_nan=False)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.1f} KiB)")


# ----------------------------------------------------------------------------------------------
# Clustering
# ----------------------------------------------------------------------------------------------


def hungarian_acc(truth, pred):
    """Community ACC: D x D count matrix, max-weight assignment (scipy), matched / N."""
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if truth.size == 0:
        return None
    if truth.min() >= 0 and pred.min() >= 0:
        d = max(pred.max(), truth.max()) + 1
        w = np.zeros((d, d), dtype=np.int64)
        for i in range(pred.size):
            w[pred[i], truth[i]] += 1
        rows, cols = scipy.optimize.linear_sum_assignment(w.max() - w)
        acc = sum(w[r, c] for r, c in zip(rows, cols)) * 1.0 / pred.size
    else:
        acc = None
    # Arbitrary labels: the compact contingency has the same optimum (zero rows/columns add nothing).
    c = contingency_matrix(truth, pred)
    rows, cols = scipy.optimize.linear_sum_assignment(c, maximize=True)
    compact = int(c[rows, cols].sum()) * 1.0 / truth.size
    assert acc is None or acc == compact, (acc, compact)
    return compact


def cluster_case(truth, pred, name=None):
    truth = [int(v) for v in truth]
    pred = [int(v) for v in pred]
    case = {
        "truth": truth,
        "pred": pred,
        "nmi": float(normalized_mutual_info_score(truth, pred)),
        "ari": float(adjusted_rand_score(truth, pred)),
        "fmi": float(fowlkes_mallows_score(truth, pred)),
        "acc": hungarian_acc(truth, pred),
    }
    if name:
        case["name"] = name
    return case


def cluster_goldens(rng):
    fixed = [
        ([0, 0, 1, 1], [1, 1, 0, 0], "permuted"),
        ([0, 0, 0, 0], [5, 5, 5, 5], "both single cluster"),
        ([0, 0, 0, 0], [0, 1, 2, 3], "single vs singletons"),
        ([0, 1, 2, 3], [0, 0, 0, 0], "singletons vs single"),
        ([0, 0, 0, 0], [0, 0, 1, 1], "single vs two"),
        ([0, 1, 2, 3], [3, 2, 1, 0], "all singletons"),
        ([0], [0], "one sample"),
        ([7], [-3], "one sample arbitrary labels"),
        ([0, 0, 1, 2], [0, 0, 1, 1], "merge"),
        ([0, 0, 1, 1], [0, 1, 0, 1], "independent"),
        ([0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 1], "b7 last row"),
        ([], [], "empty"),
        ([3, 3, 9, 9, 9], [0, 1, 2, 3, 4], "more clusters than classes"),
        ([0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 1, 1], "more classes than clusters"),
        ([-5, -5, 100000, 100000, 7], [2, 2, 2, -1, -1], "negative and sparse labels"),
    ]
    cases = [cluster_case(t, p, n) for t, p, n in fixed]
    for i in range(60):
        n = int(rng.integers(2, 250))
        k_true = int(rng.integers(1, 12))
        k_pred = int(rng.integers(1, 15))
        truth = rng.integers(0, k_true, n)
        if i % 3 == 0:
            # Noisy copy of the truth under a permutation: high scores, realistic.
            perm = rng.permutation(max(k_true, k_pred))
            pred = perm[truth] % max(k_pred, 1)
            flip = rng.random(n) < rng.uniform(0.0, 0.5)
            pred = np.where(flip, rng.integers(0, k_pred, n), pred)
        else:
            pred = rng.integers(0, k_pred, n)
        if i % 5 == 4:
            truth = truth * 37 - 50  # arbitrary, negative, non-contiguous values
            pred = pred * 1000 + 3
        cases.append(cluster_case(truth, pred))
    # One larger case exercising many clusters and the pairwise summation order.
    n = 3000
    truth = rng.integers(0, 60, n)
    pred = np.where(rng.random(n) < 0.7, (truth * 7 + 3) % 80, rng.integers(0, 80, n))
    cases.append(cluster_case(truth, pred, "large"))
    write("cluster.json", {"generator": versions(), "cases": cases})


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def classification_goldens(rng):
    cases = []
    for i in range(24):
        n = int(rng.integers(1, 60))
        c = int(rng.integers(2, 12))
        ties = i % 2 == 0
        if ties:
            # Coarse values: many exact ties, which the documented rule (score desc, class asc) resolves.
            scores = (rng.integers(-3, 4, (n, c)) * 0.25).astype(np.float32)
        else:
            scores = rng.normal(size=(n, c)).astype(np.float32)
        labels = rng.integers(0, c, n)
        if i % 7 == 3:
            labels = labels % max(1, c // 2)  # some classes without support
        order = np.argsort(-scores, axis=1, kind="stable")
        rank = np.array([int(np.where(order[j] == labels[j])[0][0]) for j in range(n)])
        preds = order[:, 0]
        ks = {}
        for k in (1, 2, 5):
            kk = min(k, c)
            ks[str(k)] = int((rank < kk).sum())
            if not ties and 2 < c and kk < c:
                assert ks[str(k)] == round(top_k_accuracy_score(labels, scores, k=kk, labels=list(range(c)), normalize=False))
        with warnings_silenced():
            bal = float(balanced_accuracy_score(labels, preds))
        case = {
            "num_classes": c,
            "scores": [float(v) for v in scores.reshape(-1)],
            "labels": [int(v) for v in labels],
            "topk_correct": ks,
            "argmax": [int(v) for v in preds],
            "confusion": confusion_matrix(labels, preds, labels=list(range(c))).tolist(),
            "mean_per_class": bal,
        }
        cases.append(case)
    write("classification.json", {"generator": versions(), "cases": cases})


@contextlib.contextmanager
def warnings_silenced():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------------------------
# Semantic segmentation (mmseg 0.x formula, numpy transcription)
# ----------------------------------------------------------------------------------------------


def mmseg_intersect_and_union(pred, label, num_classes, ignore_index, reduce_zero_label):
    label = label.copy()
    if reduce_zero_label:
        # mmseg: label[label == 0] = 255; label = label - 1; label[label == 254] = 255 (in the label dtype)
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    mask = label != ignore_index
    pred = pred[mask]
    label = label[mask]
    intersect = pred[pred == label]
    rng = (0, num_classes - 1)
    area_intersect = np.histogram(intersect, bins=num_classes, range=rng)[0].astype(np.float64)
    area_pred = np.histogram(pred, bins=num_classes, range=rng)[0].astype(np.float64)
    area_label = np.histogram(label, bins=num_classes, range=rng)[0].astype(np.float64)
    area_union = area_pred + area_label - area_intersect
    return area_intersect, area_union, area_pred, area_label


def mmseg_metrics(preds, labels, num_classes, ignore_index, reduce_zero_label):
    ti = np.zeros(num_classes)
    tu = np.zeros(num_classes)
    tp = np.zeros(num_classes)
    tl = np.zeros(num_classes)
    for p, l in zip(preds, labels):
        i, u, pa, la = mmseg_intersect_and_union(p, l, num_classes, ignore_index, reduce_zero_label)
        ti += i
        tu += u
        tp += pa
        tl += la
    with np.errstate(divide="ignore", invalid="ignore"):
        all_acc = ti.sum() / tl.sum()
        acc = ti / tl
        iou = ti / tu
        with warnings_silenced():
            m_iou = np.nanmean(iou)
            m_acc = np.nanmean(acc)
    return {
        "aAcc": nan_to_none(all_acc),
        "mIoU": nan_to_none(m_iou),
        "mAcc": nan_to_none(m_acc),
        "iou": nan_to_none(list(iou)),
        "acc": nan_to_none(list(acc)),
        "area_intersect": [int(v) for v in ti],
        "area_union": [int(v) for v in tu],
        "area_pred": [int(v) for v in tp],
        "area_label": [int(v) for v in tl],
    }


def segmentation_goldens(rng):
    cases = []
    for i in range(24):
        c = int(rng.choice([2, 3, 5, 8, 19, 150]))
        n_img = int(rng.integers(1, 4))
        reduce_zero = i % 3 == 1
        ignore = 255
        dtype = np.uint16 if i % 6 == 5 else np.uint8
        preds, labels, shapes = [], [], []
        for _ in range(n_img):
            h, w = int(rng.integers(1, 24)), int(rng.integers(1, 24))
            top = c + 1 if reduce_zero else c
            label = rng.integers(0, top, (h, w))
            pred = rng.integers(0, c, (h, w))
            agree = rng.random((h, w)) < 0.5
            pred = np.where(agree, label - (1 if reduce_zero else 0), pred)
            pred = np.clip(pred, 0, None)
            # Ignore pixels, out-of-range predictions and out-of-range labels.
            label = np.where(rng.random((h, w)) < 0.1, 255, label)
            pred = np.where(rng.random((h, w)) < 0.03, min(c + 3, 254), pred)
            if dtype == np.uint16:
                label = np.where(rng.random((h, w)) < 0.03, 256 + int(rng.integers(0, 300)), label)
                pred = np.where(rng.random((h, w)) < 0.03, 300, pred)
            preds.append(pred.astype(dtype))
            labels.append(label.astype(dtype))
            shapes.append([h, w])
        if i % 4 == 2 and c > 3:
            # A class absent from both prediction and ground truth, and one predicted but absent from GT.
            absent = c - 1
            predicted_only = c - 2
            for p, l in zip(preds, labels):
                gt_val = absent + 1 if reduce_zero else absent
                l[l == gt_val] = 255
                l[l == (predicted_only + 1 if reduce_zero else predicted_only)] = 255
                p[p == absent] = 0
                p[0, 0] = predicted_only
        res = mmseg_metrics(preds, labels, c, ignore, reduce_zero)
        cases.append(
            {
                "num_classes": c,
                "ignore_index": ignore,
                "reduce_zero_label": reduce_zero,
                "bit_depth": 16 if dtype == np.uint16 else 8,
                "images": [
                    {"shape": s, "pred": [int(v) for v in p.reshape(-1)], "gt": [int(v) for v in l.reshape(-1)]}
                    for s, p, l in zip(shapes, preds, labels)
                ],
                **res,
            }
        )
    # mmseg#964: background 99.96, building IoU 0 / Acc NaN.
    gt = np.zeros((50, 50), np.uint8)
    pred = gt.copy()
    pred[0, 0] = 1
    res = mmseg_metrics([pred], [gt], 2, 255, False)
    cases.append(
        {
            "num_classes": 2,
            "ignore_index": 255,
            "reduce_zero_label": False,
            "bit_depth": 8,
            "images": [{"shape": [50, 50], "pred": [int(v) for v in pred.reshape(-1)], "gt": [int(v) for v in gt.reshape(-1)]}],
            **res,
        }
    )
    write("segmentation.json", {"generator": versions(), "cases": cases})


# ----------------------------------------------------------------------------------------------
# RLE mask API
# ----------------------------------------------------------------------------------------------


def rle_to_json(rle):
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def uncompressed_counts(mask):
    """Column-major runs starting with zeros (the uncompressed RLE form)."""
    flat = mask.reshape(-1, order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return counts


def random_mask(rng, h, w):
    kind = rng.integers(0, 4)
    if kind == 0:
        return (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    if kind == 1:
        return np.zeros((h, w), np.uint8)
    if kind == 2:
        return np.ones((h, w), np.uint8)
    m = np.zeros((h, w), np.uint8)
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = 1
    return m


def random_polygon(rng, h, w, cx=None, cy=None, r=None):
    cx = rng.uniform(-2, w + 2) if cx is None else cx
    cy = rng.uniform(-2, h + 2) if cy is None else cy
    r = rng.uniform(0.5, max(h, w) * 0.7) if r is None else r
    k = int(rng.integers(3, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = r * rng.uniform(0.5, 1.0, k)
    xy = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    if rng.random() < 0.3:
        xy = np.round(xy)  # integer vertices hit pixel-boundary rounding
    else:
        xy = np.round(xy, 2)
    return [float(v) for v in xy.reshape(-1)]


def rle_goldens(rng):
    cases = []
    # B.7: 4x5 mask with ones at rows 1-2, cols 1-3; all-ones 3x3.
    fixed = [np.zeros((4, 5), np.uint8), np.ones((3, 3), np.uint8)]
    fixed[0][1:3, 1:4] = 1
    masks = fixed + [random_mask(rng, int(rng.integers(1, 30)), int(rng.integers(1, 30))) for _ in range(40)]
    # Long runs exercise the multi-group (and negative-delta) string encoding.
    big = np.zeros((300, 400), np.uint8)
    big[10:290, 5:17] = 1
    big[:, 200:] = 1
    masks.append(big)
    for m in masks:
        h, w = m.shape
        rle = mask_utils.encode(np.asfortranarray(m))
        cases.append(
            {
                "kind": "encode",
                "h": h,
                "w": w,
                "counts": uncompressed_counts(m),
                "string": rle["counts"].decode(),
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            }
        )
    # Merge (union / intersection) of same-size masks.
    for _ in range(15):
        h, w = int(rng.integers(1, 25)), int(rng.integers(1, 25))
        ms = [random_mask(rng, h, w) for _ in range(int(rng.integers(1, 4)))]
        rles = [mask_utils.encode(np.asfortranarray(m)) for m in ms]
        for intersect in (False, True):
            merged = mask_utils.merge(rles, intersect=intersect)
            cases.append(
                {
                    "kind": "merge",
                    "h": h,
                    "w": w,
                    "intersect": intersect,
                    "inputs": [r["counts"].decode() for r in rles],
                    "string": merged["counts"].decode(),
                }
            )
    # Polygons (frPoly), several polygons of one object (merged), and boxes (frBbox).
    for _ in range(40):
        h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        polys = [random_polygon(rng, h, w) for _ in range(int(rng.integers(1, 3)))]
        rles = mask_utils.frPyObjects(polys, h, w)
        merged = mask_utils.merge(rles)
        cases.append(
            {
                "kind": "polygons",
                "h": h,
                "w": w,
                "polygons": polys,
                "each": [r["counts"].decode() for r in rles],
                "string": merged["counts"].decode(),
                "area": int(mask_utils.area(merged)),
            }
        )
    for _ in range(20):
        h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        bb = [float(v) for v in np.round([rng.uniform(-3, w), rng.uniform(-3, h), rng.uniform(0, w), rng.uniform(0, h)], 2)]
        rle = mask_utils.frPyObjects(np.array([bb], dtype=np.float64), h, w)[0]
        cases.append({"kind": "bbox", "h": h, "w": w, "bbox": bb, "string": rle["counts"].decode()})
    # IoU matrices: boxes and masks, with crowd flags.
    for _ in range(15):
        nd, ng = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        h, w = int(rng.integers(5, 30)), int(rng.integers(5, 30))
        dt_boxes = [[float(v) for v in np.round(rng.uniform(0, 20, 4), 1)] for _ in range(nd)]
        gt_boxes = [[float(v) for v in np.round(rng.uniform(0, 20, 4), 1)] for _ in range(ng)]
        crowd = [int(rng.random() < 0.4) for _ in range(ng)]
        box_iou = mask_utils.iou(dt_boxes, gt_boxes, crowd) if nd and ng else []
        dt_m = [mask_utils.encode(np.asfortranarray(random_mask(rng, h, w))) for _ in range(nd)]
        gt_m = [mask_utils.encode(np.asfortranarray(random_mask(rng, h, w))) for _ in range(ng)]
        mask_iou = mask_utils.iou(dt_m, gt_m, crowd) if nd and ng else []
        cases.append(
            {
                "kind": "iou",
                "h": h,
                "w": w,
                "dt_boxes": dt_boxes,
                "gt_boxes": gt_boxes,
                "iscrowd": crowd,
                "box_iou": np.asarray(box_iou, dtype=float).tolist(),
                "dt_masks": [r["counts"].decode() for r in dt_m],
                "gt_masks": [r["counts"].decode() for r in gt_m],
                "mask_iou": np.asarray(mask_iou, dtype=float).tolist(),
            }
        )
    write("rle.json", {"generator": versions(), "cases": cases})


# ----------------------------------------------------------------------------------------------
# COCO evaluation
# ----------------------------------------------------------------------------------------------


def random_box(rng, h, w, area=None):
    if area is not None:
        side = np.sqrt(area)
        bw = side * rng.uniform(0.8, 1.25)
        bh = area / bw
    else:
        bw, bh = rng.uniform(1, w * 0.9), rng.uniform(1, h * 0.9)
    x, y = rng.uniform(0, max(w - bw, 0.1)), rng.uniform(0, max(h - bh, 0.1))
    return [float(x), float(y), float(bw), float(bh)]


def jitter_box(rng, b, scale):
    x, y, bw, bh = b
    return [
        float(np.round(x + rng.normal(0, scale * bw), 2)),
        float(np.round(y + rng.normal(0, scale * bh), 2)),
        float(np.round(max(0.5, bw * rng.uniform(1 - scale, 1 + scale)), 2)),
        float(np.round(max(0.5, bh * rng.uniform(1 - scale, 1 + scale)), 2)),
    ]


def box_polygon(rng, b):
    x, y, bw, bh = b
    return random_polygon(rng, 0, 0, cx=x + bw / 2, cy=y + bh / 2, r=min(bw, bh) / 2 + 0.5)


def make_coco_case(rng, quirk):
    n_img = int(rng.integers(1, 6))
    cat_ids = sorted(int(v) for v in rng.choice(np.arange(1, 12), int(rng.integers(1, 5)), replace=False))
    images = []
    for i in range(n_img):
        images.append({"id": int(i * 3 + 1), "height": int(rng.integers(60, 140)), "width": int(rng.integers(60, 140)), "file_name": f"{i}.jpg"})
    anns, dets = [], []
    ann_id = 1
    score_pool = np.round(rng.uniform(0.05, 1.0, 6), 2)  # shared values make exact score ties
    for img in images:
        h, w = img["height"], img["width"]
        if rng.random() < 0.2:
            n_gt = 0  # image without ground truth
        else:
            n_gt = int(rng.integers(1, 9))
        for _ in range(n_gt):
            cat = int(rng.choice(cat_ids))
            special = rng.random()
            if special < 0.15:
                b = random_box(rng, h, w, area=1024.0)
            elif special < 0.25:
                b = random_box(rng, h, w, area=9216.0 * rng.uniform(0.5, 1.0))
            else:
                b = random_box(rng, h, w)
            b = [float(v) for v in np.round(b, 2)]
            crowd = int(rng.random() < 0.12)
            poly = box_polygon(rng, b)
            if crowd:
                rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
                m = mask_utils.decode(rle)
                seg = {"size": [h, w], "counts": uncompressed_counts(m)}
                area = float(mask_utils.area(rle))
            else:
                seg = [poly]
                area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))))
            if special < 0.15:
                area = 1024.0  # exactly 32^2: both small and medium
            elif special < 0.2:
                area = 9216.0  # exactly 96^2: both medium and large
            ann = {"id": ann_id, "image_id": img["id"], "category_id": cat, "bbox": b, "area": area, "iscrowd": crowd, "segmentation": seg}
            if rng.random() < 0.1:
                ann["ignore"] = int(rng.integers(0, 2))  # overwritten by iscrowd in pycocotools
            anns.append(ann)
            ann_id += 1
            # Detections around this object.
            for _ in range(int(rng.integers(0, 3))):
                if rng.random() < 0.15:
                    continue
                db = jitter_box(rng, b, rng.uniform(0.0, 0.15))
                score = float(rng.choice(score_pool)) if rng.random() < 0.4 else float(np.round(rng.random(), 4))
                dcat = cat if rng.random() < 0.85 else int(rng.choice(cat_ids))
                # The detection's mask is the object's polygon carried along with the box jitter.
                xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
                xs = db[0] + (xs - b[0]) * db[2] / b[2]
                ys = db[1] + (ys - b[1]) * db[3] / b[3]
                moved = [float(v) for v in np.round(np.stack([xs, ys], 1).reshape(-1), 2)]
                dets.append({"image_id": img["id"], "category_id": dcat, "bbox": db, "score": score, "_poly": moved})
        # Background false positives.
        for _ in range(int(rng.integers(0, 5))):
            db = [float(v) for v in np.round(random_box(rng, h, w), 2)]
            if rng.random() < 0.1:
                db = [float(rng.integers(0, max(1, w - 32))), float(rng.integers(0, max(1, h - 32))), 32.0, 32.0]
            dets.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": db,
                    "score": float(rng.choice(score_pool)),
                    "_poly": box_polygon(rng, db),
                }
            )
    if quirk == "many_dets":
        img = images[0]
        for _ in range(40):
            db = [float(v) for v in np.round(random_box(rng, img["height"], img["width"]), 2)]
            dets.append({"image_id": img["id"], "category_id": cat_ids[0], "bbox": db, "score": float(rng.choice(score_pool)), "_poly": box_polygon(rng, db)})
    if quirk == "id_zero" and anns:
        anns[0]["id"] = 0
    if quirk == "no_dets":
        dets = []
    rng.shuffle(dets)
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in cat_ids]
    if quirk == "cat_without_gt":
        extra = max(cat_ids) + 5
        categories.append({"id": extra, "name": f"class_{extra}", "supercategory": "thing"})
        for img in images[:2]:
            db = [float(v) for v in np.round(random_box(rng, img["height"], img["width"]), 2)]
            dets.append({"image_id": img["id"], "category_id": extra, "bbox": db, "score": 0.99, "_poly": box_polygon(rng, db)})
    gt = {"images": images, "annotations": anns, "categories": categories}
    return gt, dets


def detections_for(iou_type, dets, images, segm_with_bbox):
    dims = {img["id"]: (img["height"], img["width"]) for img in images}
    out = []
    for d in dets:
        r = {"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"]}
        if iou_type == "bbox":
            r["bbox"] = d["bbox"]
        else:
            h, w = dims[d["image_id"]]
            rle = mask_utils.merge(mask_utils.frPyObjects([d["_poly"]], h, w))
            r["segmentation"] = rle_to_json(rle)
            if segm_with_bbox:
                r["bbox"] = d["bbox"]  # pycocotools then takes area = w*h (the bbox branch of loadRes)
        out.append(r)
    return out


def run_cocoeval(gt, dets, iou_type, max_dets):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        else:
            # loadRes cannot take an empty list; an empty result set evaluates like this.
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": copy.deepcopy(gt["categories"]), "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]
    per_cat = []
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_cat.append([int(cat_id), float(np.mean(p)) if p.size else -1.0])
    return [float(s) for s in ev.stats], per_cat


def coco_goldens(rng):
    quirks = ["plain"] * 10 + ["many_dets", "many_dets", "id_zero", "no_dets", "cat_without_gt", "cat_without_gt"]
    cases = []
    for i, quirk in enumerate(quirks):
        gt, dets = make_coco_case(rng, quirk)
        segm_with_bbox = i % 4 == 1
        case = {"name": f"{i}_{quirk}", "gt": gt, "results": []}
        for iou_type in ("bbox", "segm"):
            dt = detections_for(iou_type, dets, gt["images"], segm_with_bbox)
            case["dt_" + iou_type] = dt
            for max_dets in ([1, 10, 100], [100, 300, 1000], [2, 5, 10], [10, 1, 3]):
                if max_dets != [1, 10, 100] and i % 3 != 0 and quirk == "plain":
                    continue
                stats, per_cat = run_cocoeval(gt, dt, iou_type, max_dets)
                case["results"].append({"iou_type": iou_type, "max_dets": max_dets, "stats": stats, "per_category": per_cat})
        cases.append(case)
    # The hand-checked case of evaluation-reference.md B.7.
    gt = {
        "images": [{"id": 1, "height": 200, "width": 200}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32], "area": 1024, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 100, 60, 60], "area": 3600, "iscrowd": 1},
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [100, 100, 40, 50], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [5, 105, 20, 20], "score": 0.95},
        {"image_id": 1, "category_id": 2, "bbox": [150, 0, 20, 20], "score": 0.99},
    ]
    stats, per_cat = run_cocoeval(gt, dt, "bbox", [1, 10, 100])
    cases.append({"name": "b7_hand_checked", "gt": gt, "dt_bbox": dt, "results": [{"iou_type": "bbox", "max_dets": [1, 10, 100], "stats": stats, "per_category": per_cat}]})
    write("coco.json", {"generator": versions(), "cases": cases})


def main():
    rng = np.random.default_rng(SEED)
    cluster_goldens(rng)
    classification_goldens(rng)
    segmentation_goldens(rng)
    rle_goldens(rng)
    coco_goldens(rng)


if __name__ == "__main__":
    sys.exit(main())
