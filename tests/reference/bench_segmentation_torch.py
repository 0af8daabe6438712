"""UperNet training-step throughput in PyTorch, the model of `ibot bench segment` (the demo recipe
by default: patch-8 ViT of width 96 and depth 4 → pyramid → UPerHead 64 channels + auxiliary
FCNHead 32, 8 images of 64×64, 8 classes, mmseg's loss, AdamW step). Same shapes, same threads.

    /opt/refvenv/bin/python tests/reference/bench_segmentation_torch.py --threads 2 --steps 10 > torch.json
    ibot bench segment --steps 10 --torch-json torch.json
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from backbone_reference import DinoViT  # noqa: E402
from segmentation_reference import FCNHead, Pyramid, UPerHead  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.vit = DinoViT(a.size, a.patch, a.dim, a.depth, a.heads)
        self.out_indices = list(range(a.depth - 4, a.depth))
        self.pyramid = Pyramid(a.dim, a.patch)
        self.decode_head = UPerHead(in_channels=[a.dim] * 4, channels=a.channels, num_classes=a.classes,
                                    in_index=[0, 1, 2, 3], dropout_ratio=0.1)
        self.auxiliary_head = FCNHead(num_convs=1, concat_input=False, in_channels=a.dim, channels=a.aux,
                                      num_classes=a.classes, in_index=2, dropout_ratio=0.1, loss_weight=0.4)

    def forward(self, x, labels):
        b, _, h, w = x.shape
        t = self.vit.prepare_tokens(x)
        feats = []
        for i, blk in enumerate(self.vit.blocks):
            t = blk(t)
            if i in self.out_indices:
                p = self.vit.norm(t[:, 1:])
                feats.append(p.transpose(1, 2).reshape(b, -1, h // self.vit.patch, w // self.vit.patch))
        pyr = self.pyramid(feats)
        lab = labels.unsqueeze(1)
        loss = self.decode_head.losses(self.decode_head(pyr), lab)["loss_seg"]
        return loss + self.auxiliary_head.losses(self.auxiliary_head(pyr), lab)["loss_seg"]


def main():
    p = argparse.ArgumentParser()
    for k, v in [("threads", 2), ("steps", 10), ("warmup", 2), ("batch", 8), ("size", 64), ("patch", 8),
                 ("dim", 96), ("depth", 4), ("heads", 3), ("channels", 64), ("aux", 32), ("classes", 8)]:
        p.add_argument(f"--{k}", type=int, default=v)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Model(a).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(a.batch, 3, a.size, a.size)
    labels = torch.randint(0, a.classes, (a.batch, a.size, a.size))
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = model(x, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    print(json.dumps({"bench": "segment", "framework": "pytorch " + torch.__version__, "threads": a.threads,
                      "batch": a.batch, "size": a.size, "step_seconds_median": step,
                      "images_per_s": a.batch / step, "steps": a.steps}))


if __name__ == "__main__":
    main()
