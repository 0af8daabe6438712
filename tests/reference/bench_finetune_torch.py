"""PyTorch reference for `ibot bench finetune`: seconds per fine-tuning step on CPU.

Same work as ours (`finetune::train::optimize_step` with the BEiT ViT-S recipe's model and
optimiser): ViT-S/16 at 224 px with drop path 0.1 (linearly increasing over the blocks), final
norm, Linear head on the CLS token, soft-target cross-entropy (Mixup/CutMix targets), backward,
AdamW with BEiT layer-decay parameter groups (decay 0.75, no weight decay for biases, norms and
tokens), no gradient clipping. Random images and targets, no data loading.

    /opt/refvenv/bin/python tests/reference/bench_finetune_torch.py --threads 2 --batch-size 8 \
        [--precision bf16] > /tmp/torch_finetune.json
    ibot bench finetune --batch-size 8 --device cpu --torch-json /tmp/torch_finetune.json
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pretrain_torch import ViT  # noqa: E402


class Classifier(nn.Module):
    def __init__(self, dim, depth, heads, patch, img, drop_path, classes):
        super().__init__()
        self.backbone = ViT(dim, depth, heads, patch, img, drop_path, False)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        self.head.weight.data.mul_(0.001)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.backbone(x)[:, 0])


def layer_id(name, depth):
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith("backbone.") and not name.startswith("backbone.norm."):
        return 0
    return depth + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: forward and loss under torch.autocast('cpu', torch.bfloat16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Classifier(a.dim, a.depth, a.heads, a.patch, a.size, 0.1, a.classes).train()
    groups = {}
    for n, p in model.named_parameters():
        no_decay = p.ndim == 1 or n.endswith(".bias") or "token" in n or "pos_embed" in n
        lid = layer_id(n, a.depth)
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else 0.05,
                           "lr": 1e-4 * 0.75 ** (a.depth + 1 - lid)}
        groups[key]["params"].append(p)
    opt = torch.optim.AdamW(list(groups.values()), lr=1e-4)
    b = a.batch_size
    x = torch.randn(b, 3, a.size, a.size)
    target = F.softmax(torch.randn(b, a.classes), dim=-1)
    times, losses = [], []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(x)
        loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step > 0:
            times.append(dt)
    mean = sum(times) / len(times)
    print(json.dumps({
        "bench": "finetune_step_torch", "torch": torch.__version__, "threads": a.threads,
        "precision": a.precision, "batch_size": b, "size": a.size, "classes": a.classes,
        "step_seconds": times, "mean_step_seconds": mean, "images_per_s": b / mean,
        "loss_per_step": losses,
        "note": "one untimed warm-up step; random images and soft targets (no data loading)",
    }, indent=2))


if __name__ == "__main__":
    main()
