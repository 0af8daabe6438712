#!/usr/bin/env python3
"""PyTorch timing of the k-NN benchmark, on the data `ibot bench knn --out-dir DIR` writes.

Two PyTorch implementations, both timed from L2 normalisation to the final counts (loading not timed):
  dino  DINO's `eval_knn.py` as released: `knn_classifier` called once per k (each call redoes the
        similarity and top-k) with its (batch·k × 1000) one-hot vote tensor, 100 test chunks.
  fast  the same math in one pass, as `ibot` does it: similarity and top-max(k) once per chunk, votes by
        `scatter_add_`, every k read from the sorted prefix.
Both count only voted classes (see tests/reference/knn_reference.py), so their counts must equal ibot's
up to float-summation near-ties.

Usage: python tests/reference/bench_knn_torch.py DIR [--threads 2] [--impl fast|dino|both]
"""
import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from knn_reference import dino_knn_torch  # noqa: E402


def load(d):
    d = pathlib.Path(d)
    train = torch.from_numpy(np.load(d / "train.npy"))
    test = torch.from_numpy(np.load(d / "test.npy"))
    train_labels = torch.from_numpy(np.loadtxt(d / "train_labels.txt", dtype=np.int64))
    test_labels = torch.from_numpy(np.loadtxt(d / "test_labels.txt", dtype=np.int64))
    return train, train_labels, test, test_labels


@torch.no_grad()
def dino(train, train_labels, test, test_labels, ks, T):
    train = torch.nn.functional.normalize(train, dim=1, p=2)
    test = torch.nn.functional.normalize(test, dim=1, p=2)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    return {k: dino_knn_torch(train, train_labels, test, test_labels, k, T, num_classes, voted_only=True) for k in ks}


@torch.no_grad()
def fast(train, train_labels, test, test_labels, ks, T, chunk=100):
    train = torch.nn.functional.normalize(train, dim=1, p=2)
    test = torch.nn.functional.normalize(test, dim=1, p=2)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    max_k = max(ks)
    counts = {k: [0, 0, 0] for k in ks}
    train_t = train.t().contiguous()
    for idx in range(0, test.shape[0], chunk):
        features, targets = test[idx : idx + chunk], test_labels[idx : idx + chunk]
        distances, indices = torch.mm(features, train_t).topk(max_k, largest=True, sorted=True)
        neighbours = train_labels[indices]
        weights = distances.div_(T).exp_()
        for k in ks:
            probs = torch.zeros(features.shape[0], num_classes).scatter_add_(1, neighbours[:, :k], weights[:, :k])
            scores, predictions = probs.topk(min(5, k), dim=1)
            correct = predictions.eq(targets.view(-1, 1)) & (scores > 0)
            counts[k][0] += correct[:, :1].sum().item()
            counts[k][1] += correct.sum().item()
            counts[k][2] += features.shape[0]
    return {k: tuple(v) for k, v in counts.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impl", choices=["fast", "dino", "both"], default="both")
    ap.add_argument("--k", default="10,20,100,200")
    ap.add_argument("--temperature", type=float, default=0.07)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.k.split(",")]
    data = load(args.dir)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "train": int(data[0].shape[0]),
           "test": int(data[2].shape[0]), "dim": int(data[0].shape[1])}
    for name, fn in [("fast", fast), ("dino", dino)]:
        if args.impl not in (name, "both"):
            continue
        start = time.perf_counter()
        res = fn(*data, ks, args.temperature)
        out[name] = {"seconds": time.perf_counter() - start,
                     "knn": {str(k): {"top1": t1 / n, "top5": t5 / n} for k, (t1, t5, n) in res.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
