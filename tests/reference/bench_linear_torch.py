"""PyTorch CPU timing of iBOT's linear sweep, for comparison with `ibot bench linear`.

Runs the training loop of bytedance/ibot `evaluation/eval_linear_multi.py` on cached features: one
`nn.Linear` + optimiser (SGD momentum 0.9 or utils.LARS) + CosineAnnealingLR per head, every head
forward/backward/step on every shuffled batch of 1024. Reports seconds per epoch (the mean of the timed
epochs) for the 180-head grid and the 45-head (`--sweep_lr_only`) grid.

Usage:
  ibot bench linear --out-dir /tmp/linbench           # writes the features, prints Rust timings
  /opt/refvenv/bin/python tests/reference/bench_linear_torch.py /tmp/linbench --threads 2
"""

import argparse
import itertools
import json
import os
import time

import numpy as np
import torch
from torch import nn

from linear_reference import LARS


def grid(sweep):
    lrs = [base * n for base in [10 ** k for k in range(-4, 1)] for n in range(1, 10)]
    if sweep == "full":
        return list(itertools.product(lrs, [0, 1e-6], ["sgd", "lars"]))
    return list(itertools.product(lrs, [0], ["sgd"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--sweep", default="full,lr-only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.from_numpy(np.load(os.path.join(args.dir, "train.npy")).astype(np.float32))
    y = torch.from_numpy(np.loadtxt(os.path.join(args.dir, "train_labels.txt"), dtype=np.int64))
    classes = int(y.max()) + 1
    runs = []
    for sweep in args.sweep.split(","):
        heads, opts, scheds = [], [], []
        for lr, wd, o in grid(sweep):
            lin = nn.Linear(x.shape[1], classes)
            lin.weight.data.normal_(mean=0.0, std=0.01)
            lin.bias.data.zero_()
            cls = torch.optim.SGD if o == "sgd" else LARS
            opt = cls(lin.parameters(), lr * args.batch_size / 256.0, momentum=0.9, weight_decay=wd)
            heads.append(lin)
            opts.append(opt)
            scheds.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100, eta_min=0))
        times = []
        for epoch in range(args.epochs):
            g = torch.Generator().manual_seed(epoch)
            order = torch.randperm(x.shape[0], generator=g)
            start = time.perf_counter()
            for s in range(0, x.shape[0], args.batch_size):
                idx = order[s:s + args.batch_size]
                inp, target = x[idx], y[idx]
                for lin, opt in zip(heads, opts):
                    loss = nn.CrossEntropyLoss()(lin(inp), target)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            for sc in scheds:
                sc.step()
            times.append(time.perf_counter() - start)
        runs.append({"sweep": sweep, "heads": len(heads), "seconds_per_epoch": float(np.mean(times)),
                     "epoch_seconds": times})
    print(json.dumps({"bench": "linear (PyTorch %s, CPU)" % torch.__version__, "threads": args.threads,
                      "train": int(x.shape[0]), "dim": int(x.shape[1]), "classes": classes,
                      "batch_size": args.batch_size, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
