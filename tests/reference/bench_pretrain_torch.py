"""PyTorch reference for `ibot bench pretrain`: images/s of one full iBOT training step on CPU.

Same work as ours: teacher on 2 global crops, student on the masked globals and the local crops
(drop-path 0.1), shared iBOT head (3-layer MLP 2048/256, weight-normed last layer, out_dim 8192) on
every token, the iBOT loss (CLS across views + masked patch distillation, centering), backward,
per-parameter clipping, AdamW, EMA. fp32 (the official code uses fp16 autocast on GPU only).

    /opt/refvenv/bin/python tests/reference/bench_pretrain_torch.py --threads 2 --batch-size 8
    [--precision bf16] > /tmp/torch_pretrain.json
    ibot bench pretrain --batch-size 8 --device cpu --torch-json /tmp/torch_pretrain.json
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim, heads, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.heads = heads
        self.drop_path = drop_path

    def dp(self, x):
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1 - self.drop_path
        mask = (keep + torch.rand(x.shape[0], 1, 1)).floor_() / keep
        return x * mask

    def forward(self, x):
        b, n, c = x.shape
        h = self.norm1(x)
        qkv = self.qkv(h).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        attn = attn.softmax(dim=-1)
        a = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = x + self.dp(self.proj(a))
        x = x + self.dp(self.fc2(F.gelu(self.fc1(self.norm2(x)))))
        return x


class ViT(nn.Module):
    def __init__(self, dim, depth, heads, patch, img, drop_path, masked):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.grid = img // patch
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(
            [Block(dim, heads, drop_path * i / max(depth - 1, 1)) for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.masked_embed = nn.Parameter(torch.zeros(1, dim)) if masked else None

    def pos(self, rows):
        if rows == self.grid:
            return self.pos_embed
        cls, p = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = p.shape[-1]
        p = p.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        p = F.interpolate(p, scale_factor=((rows + 0.1) / self.grid,) * 2, mode="bicubic")
        return torch.cat([cls, p.permute(0, 2, 3, 1).reshape(1, -1, d)], 1)

    def forward(self, x, mask=None):
        x = self.patch_embed(x)
        rows = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.masked_embed.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos(rows)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class Head(nn.Module):
    def __init__(self, dim, out_dim, hidden=2048, bottleneck=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


def ibot_loss(s_cls, s_patch, s_local, t_cls, t_patch, masks, center, center2, g, tt, tpt):
    s_cls = torch.cat([s_cls, s_local]) / 0.1
    b = t_cls.shape[0] // g
    s_cls_c = (s_cls).split(b)
    s_patch_c = (s_patch / 0.1).split(b)
    t_cls_c = F.softmax((t_cls - center) / tt, dim=-1).detach().split(b)
    t_patch_c = F.softmax((t_patch - center2) / tpt, dim=-1).detach().split(b)
    total1, total2, n1, n2 = 0, 0, 0, 0
    for q in range(g):
        for v in range(len(s_cls_c)):
            if v == q:
                loss2 = torch.sum(-t_patch_c[q] * F.log_softmax(s_patch_c[v], dim=-1), dim=-1)
                m = masks[v].flatten(-2, -1).float()
                loss2 = torch.sum(loss2 * m, dim=-1) / m.sum(dim=-1).clamp(min=1.0)
                total2 += loss2.mean()
                n2 += 1
            else:
                loss1 = torch.sum(-t_cls_c[q] * F.log_softmax(s_cls_c[v], dim=-1), dim=-1)
                total1 += loss1.mean()
                n1 += 1
    with torch.no_grad():
        center.mul_(0.9).add_(0.1 * t_cls.mean(0, keepdim=True))
        center2.mul_(0.9).add_(0.1 * t_patch.mean(1).mean(0, keepdim=True).unsqueeze(0))
    return total1 / n1 + total2 / n2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--local-crops", type=int, default=10)
    ap.add_argument("--out-dim", type=int, default=8192)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: forward passes and loss under torch.autocast('cpu', torch.bfloat16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    g, b = 2, a.batch_size
    student = nn.ModuleDict({"backbone": ViT(a.dim, a.depth, a.heads, a.patch, a.global_size, 0.1, True),
                             "head": Head(a.dim, a.out_dim)})
    teacher = nn.ModuleDict({"backbone": ViT(a.dim, a.depth, a.heads, a.patch, a.global_size, 0.0, False),
                             "head": Head(a.dim, a.out_dim)})
    teacher.load_state_dict(student.state_dict(), strict=False)
    for p in teacher.parameters():
        p.requires_grad = False
    student.train()
    teacher.eval()
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")]
    no_decay = [p for n, p in student.named_parameters() if not (p.ndim >= 2 and not n.endswith(".bias"))]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-4)
    center = torch.zeros(1, a.out_dim)
    center2 = torch.zeros(1, 1, a.out_dim)
    grid = a.global_size // a.patch
    times, losses = [], []
    for step in range(a.steps + 1):
        globals_ = torch.randn(g * b, 3, a.global_size, a.global_size)
        locals_ = torch.randn(a.local_crops * b, 3, a.local_size, a.local_size)
        masks = torch.rand(g * b, grid, grid) < 0.15
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            with torch.no_grad():
                t_tok = teacher["backbone"](globals_)
                t_out = teacher["head"](t_tok)
            s_tok = student["backbone"](globals_, masks.flatten(1))
            s_out = student["head"](s_tok)
            l_tok = student["backbone"](locals_)
            l_cls = student["head"](l_tok[:, 0])
            loss = ibot_loss(s_out[:, 0].float(), s_out[:, 1:].float(), l_cls.float(),
                             t_out[:, 0].float(), t_out[:, 1:].float(),
                             masks.reshape(g, b, grid, grid),
                             center, center2, g, 0.04, 0.04)
        opt.zero_grad()
        loss.backward()
        for p in student.parameters():
            if p.grad is not None:
                norm = p.grad.data.norm(2)
                clip = 3.0 / (norm + 1e-6)
                if clip < 1:
                    p.grad.data.mul_(clip)
        opt.step()
        with torch.no_grad():
            sp = dict(student.named_parameters())
            for n, p in teacher.named_parameters():
                if n in sp:
                    p.data.mul_(0.996).add_(sp[n].detach().data, alpha=0.004)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step > 0:
            times.append(dt)
    mean = sum(times) / len(times)
    print(json.dumps({
        "bench": "pretrain_step_torch", "torch": torch.__version__, "threads": a.threads,
        "precision": a.precision, "loss_per_step": losses,
        "batch_size": b, "global": f"2x{a.global_size}", "local": f"{a.local_crops}x{a.local_size}",
        "step_seconds": times, "mean_step_seconds": mean, "images_per_s": b / mean,
        "note": "one untimed warm-up step; random inputs (no data loading)",
    }, indent=2))


if __name__ == "__main__":
    main()
