#!/usr/bin/env python3
"""Golden fixtures for the pretrain crate's building blocks (run by developers, never by CI).

    /opt/refvenv/bin/python tests/reference/pretrain_reference.py   # writes pretrain/tests/fixtures/

Transcribed from the official iBOT code as described in /work/shared/design/ibot-reference.md:
- `IBOTLoss` below is `iBOTLoss` of main_ibot.py (§4): crop-major chunking, n1 = G(G+L) − G CLS
  terms, n2 = G MIM terms, per-image mask sum clamped ≥ 1, teacher temperatures per epoch,
  centres updated after the loss (world size 1).
- `IBOTHead` is models/head.py's iBOTHead with the default options (§3): Linear/GELU(erf) MLP,
  F.normalize, nn.utils.weight_norm last layer(s), shared or not.
- `cosine_scheduler` is DINO/iBOT utils.cosine_scheduler (§7.2).
- `block_mask` / `rand_mask` / `get_pred_ratio` are ImageFolderMask of loader.py (§5.2–5.4), with
  Python `random` and numpy; many masks are drawn per configuration and only their statistics are
  stored (the Rust generator uses another random stream, so it is compared in distribution).
Outputs: loss_goldens.safetensors, head_goldens.safetensors, schedules.json, mask_stats.json.
"""
import json
import math
import os
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "pretrain", "tests", "fixtures")


# ----------------------------------------------------------------------------------------------
# Schedules


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))

    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temp_schedules(warmup_teacher_temp, teacher_temp, warmup_teacher_temp2, teacher_temp2,
                           warmup_teacher_temp_epochs, nepochs, mim_start_epoch=0):
    """The two arrays built in iBOTLoss.__init__."""
    s1 = np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp
    ))
    s2 = np.concatenate((
        np.linspace(warmup_teacher_temp2, teacher_temp2, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp2
    )) if mim_start_epoch == 0 else np.concatenate((
        np.ones(mim_start_epoch) * warmup_teacher_temp2,
        np.linspace(warmup_teacher_temp2, teacher_temp2, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs - mim_start_epoch) * teacher_temp2
    ))
    return s1, s2


def schedules():
    cos_cases = [
        # lr: 5e-4·64/256, 10 warm-up epochs from 0, cosine to 1e-6
        dict(base=5e-4 * 64 / 256, final=1e-6, epochs=30, iters=7, warmup=10, start=0.0),
        # wd 0.04 → 0.4, no warm-up
        dict(base=0.04, final=0.4, epochs=30, iters=7, warmup=0, start=0.0),
        # teacher momentum 0.996 → 1
        dict(base=0.996, final=1.0, epochs=12, iters=13, warmup=0, start=0.0),
        # warm-up from a non-zero start, one iteration per epoch
        dict(base=1.0, final=0.1, epochs=9, iters=1, warmup=3, start=0.25),
        # warm-up over the whole run (no cosine part)
        dict(base=2.0, final=0.5, epochs=4, iters=3, warmup=4, start=0.0),
        # a single-iteration warm-up
        dict(base=0.3, final=0.0, epochs=3, iters=1, warmup=1, start=0.1),
    ]
    out = {"cosine": [], "teacher_temp": []}
    for c in cos_cases:
        v = cosine_scheduler(c["base"], c["final"], c["epochs"], c["iters"], c["warmup"], c["start"])
        out["cosine"].append({**c, "values": [float(x) for x in v]})
    temp_cases = [
        # code defaults (0.04 → 0.04), README (0.04 → 0.07 over 30 of 100), patch with start epoch
        dict(warm=0.04, temp=0.04, warm2=0.04, temp2=0.07, warmup=30, epochs=100, start=0),
        dict(warm=0.04, temp=0.07, warm2=0.04, temp2=0.07, warmup=30, epochs=100, start=10),
        dict(warm=0.04, temp=0.07, warm2=0.05, temp2=0.06, warmup=1, epochs=5, start=0),
        dict(warm=0.04, temp=0.07, warm2=0.04, temp2=0.07, warmup=0, epochs=6, start=2),
        dict(warm=0.03, temp=0.07, warm2=0.02, temp2=0.09, warmup=7, epochs=7, start=0),
    ]
    for c in temp_cases:
        s1, s2 = teacher_temp_schedules(c["warm"], c["temp"], c["warm2"], c["temp2"], c["warmup"],
                                        c["epochs"], c["start"])
        out["teacher_temp"].append({**c, "cls": [float(x) for x in s1], "patch": [float(x) for x in s2]})
    return out


# ----------------------------------------------------------------------------------------------
# Loss


class IBOTLoss(nn.Module):
    def __init__(self, out_dim, patch_out_dim, ngcrops, nlcrops, warmup_teacher_temp,
                 teacher_temp, warmup_teacher_temp2, teacher_temp2,
                 warmup_teacher_temp_epochs, nepochs, student_temp=0.1,
                 center_momentum=0.9, center_momentum2=0.9,
                 lambda1=1.0, lambda2=1.0, mim_start_epoch=0):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.center_momentum2 = center_momentum2
        self.ngcrops = ngcrops
        self.nlcrops = nlcrops
        self.ncrops = ngcrops + nlcrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.teacher_temp_schedule, self.teacher_temp2_schedule = teacher_temp_schedules(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp2, teacher_temp2,
            warmup_teacher_temp_epochs, nepochs, mim_start_epoch)

    def forward(self, student_output, teacher_output, student_local_cls, student_mask, epoch):
        student_cls, student_patch = student_output
        teacher_cls, teacher_patch = teacher_output

        if student_local_cls is not None:
            student_cls = torch.cat([student_cls, student_local_cls])

        student_cls = student_cls / self.student_temp
        student_cls_c = student_cls.chunk(self.ncrops)
        student_patch = student_patch / self.student_temp
        student_patch_c = student_patch.chunk(self.ngcrops)

        temp = self.teacher_temp_schedule[epoch]
        temp2 = self.teacher_temp2_schedule[epoch]
        teacher_cls_c = F.softmax((teacher_cls - self.center) / temp, dim=-1)
        teacher_cls_c = teacher_cls_c.detach().chunk(self.ngcrops)
        teacher_patch_c = F.softmax((teacher_patch - self.center2) / temp2, dim=-1)
        teacher_patch_c = teacher_patch_c.detach().chunk(self.ngcrops)

        total_loss1, n_loss_terms1 = 0, 0
        total_loss2, n_loss_terms2 = 0, 0
        for q in range(len(teacher_cls_c)):
            for v in range(len(student_cls_c)):
                if v == q:
                    loss2 = torch.sum(-teacher_patch_c[q] * F.log_softmax(student_patch_c[v], dim=-1), dim=-1)
                    mask = student_mask[v].flatten(-2, -1)
                    loss2 = torch.sum(loss2 * mask.float(), dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
                    total_loss2 += loss2.mean()
                    n_loss_terms2 += 1
                else:
                    loss1 = torch.sum(-teacher_cls_c[q] * F.log_softmax(student_cls_c[v], dim=-1), dim=-1)
                    total_loss1 += loss1.mean()
                    n_loss_terms1 += 1

        total_loss1 = total_loss1 / n_loss_terms1 * self.lambda1
        total_loss2 = total_loss2 / n_loss_terms2 * self.lambda2
        total_loss = dict(cls=total_loss1, patch=total_loss2, loss=total_loss1 + total_loss2)
        self.update_center(teacher_cls, teacher_patch)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_cls, teacher_patch):
        world_size = 1
        cls_center = torch.sum(teacher_cls, dim=0, keepdim=True)
        cls_center = cls_center / (len(teacher_cls) * world_size)
        self.center = self.center * self.center_momentum + cls_center * (1 - self.center_momentum)

        patch_center = torch.sum(teacher_patch.mean(1), dim=0, keepdim=True)
        patch_center = patch_center / (len(teacher_patch) * world_size)
        self.center2 = self.center2 * self.center_momentum2 + patch_center * (1 - self.center_momentum2)


LOSS_CASES = [
    # G=2 globals and L=3 locals, patch schedule held for 1 epoch (pred_start_epoch), λ ≠ 1.
    dict(name="gl", G=2, L=3, B=3, grid=(2, 3), K=32, Kp=32, warm=0.04, temp=0.07, warm2=0.04,
         temp2=0.07, warmup=3, epochs=5, start=1, lambda1=1.0, lambda2=0.5,
         step_epochs=[0, 0, 1, 2, 3, 4]),
    # G=2, no local crops, separate patch prototypes (Kp ≠ K), other momenta.
    dict(name="g", G=2, L=0, B=2, grid=(3, 3), K=20, Kp=12, warm=0.05, temp=0.06, warm2=0.03,
         temp2=0.08, warmup=2, epochs=3, start=0, lambda1=0.7, lambda2=1.3,
         step_epochs=[0, 1, 2, 2], center_momentum=0.8, center_momentum2=0.95),
]


def loss_goldens():
    g = torch.Generator().manual_seed(1234)
    out = {}
    meta = []
    for case in LOSS_CASES:
        G, L, B, K, Kp = case["G"], case["L"], case["B"], case["K"], case["Kp"]
        rows, cols = case["grid"]
        N = rows * cols
        loss_fn = IBOTLoss(K, Kp, G, L, case["warm"], case["temp"], case["warm2"], case["temp2"],
                           case["warmup"], case["epochs"], lambda1=case["lambda1"], lambda2=case["lambda2"],
                           mim_start_epoch=case["start"],
                           center_momentum=case.get("center_momentum", 0.9),
                           center_momentum2=case.get("center_momentum2", 0.9))
        for step, epoch in enumerate(case["step_epochs"]):
            p = f"{case['name']}.{step}."
            # Logit scales like a head's cosines (|x| ≤ 1), offset so that the centres matter.
            s_cls = (torch.randn(G * B, K, generator=g) * 0.6).requires_grad_()
            s_patch = (torch.randn(G * B, N, Kp, generator=g) * 0.6).requires_grad_()
            s_local = (torch.randn(L * B, K, generator=g) * 0.6).requires_grad_() if L > 0 else None
            t_cls = torch.randn(G * B, K, generator=g) * 0.5 + 0.2 * torch.arange(K) / K
            t_patch = torch.randn(G * B, N, Kp, generator=g) * 0.5 - 0.1 * torch.arange(Kp) / Kp
            masks = torch.rand(G * B, N, generator=g) < 0.4
            masks[1] = False            # an image with an empty mask in view 0
            masks[B] = True             # a fully masked image in view 1
            if step % 2 == 1:
                masks[G * B - 1] = False
            center_before, center2_before = loss_fn.center.clone(), loss_fn.center2.clone()
            student_mask = [m.reshape(B, rows, cols) for m in masks.chunk(G)]
            res = loss_fn((s_cls, s_patch), (t_cls, t_patch), s_local, student_mask, epoch)
            grads = torch.autograd.grad(res["loss"], [s_cls, s_patch] + ([s_local] if L > 0 else []))
            out[p + "s_cls"] = s_cls.detach()
            out[p + "s_patch"] = s_patch.detach()
            if L > 0:
                out[p + "s_local"] = s_local.detach()
                out[p + "grad_s_local"] = grads[2]
            out[p + "t_cls"] = t_cls
            out[p + "t_patch"] = t_patch
            out[p + "masks"] = masks.float()
            out[p + "loss"] = res["loss"].detach().reshape(1)
            out[p + "cls"] = res["cls"].detach().reshape(1)
            out[p + "patch"] = res["patch"].detach().reshape(1)
            out[p + "grad_s_cls"] = grads[0]
            out[p + "grad_s_patch"] = grads[1]
            out[p + "center_before"] = center_before
            out[p + "center2_before"] = center2_before
            out[p + "center"] = loss_fn.center.clone()
            out[p + "center2"] = loss_fn.center2.clone()
        meta.append({k: v for k, v in case.items()})
    return out, meta


# ----------------------------------------------------------------------------------------------
# Head


class IBOTHead(nn.Module):
    """iBOTHead(in_dim, out_dim, patch_out_dim, norm=None, act='gelu', nlayers=3, hidden_dim,
    bottleneck_dim, norm_last_layer, shared_head)."""

    def __init__(self, in_dim, out_dim, patch_out_dim, hidden_dim, bottleneck_dim, norm_last_layer, shared_head):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False
        if shared_head:
            self.last_layer2 = self.last_layer
        else:
            self.last_layer2 = nn.utils.weight_norm(nn.Linear(bottleneck_dim, patch_out_dim, bias=False))
            self.last_layer2.weight_g.data.fill_(1)
            if norm_last_layer:
                self.last_layer2.weight_g.requires_grad = False

    def forward(self, x):
        if len(x.shape) == 2:
            x = self.mlp(x)
            x = F.normalize(x, dim=-1, p=2)
            return self.last_layer(x)
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        x1 = self.last_layer(x[:, 0])
        x2 = self.last_layer2(x[:, 1:])
        return x1, x2


HEAD_CASES = [
    dict(name="shared", in_dim=12, hidden=20, bottleneck=8, K=16, Kp=16, norm_last_layer=True, shared=True),
    dict(name="separate", in_dim=12, hidden=20, bottleneck=8, K=16, Kp=10, norm_last_layer=False, shared=False),
]


def head_goldens():
    torch.manual_seed(7)
    out = {}
    for case in HEAD_CASES:
        p = case["name"] + "."
        head = IBOTHead(case["in_dim"], case["K"], case["Kp"], case["hidden"], case["bottleneck"],
                        case["norm_last_layer"], case["shared"])
        with torch.no_grad():
            for name, prm in head.named_parameters():
                if name.endswith("weight_g") and not case["norm_last_layer"]:
                    prm.copy_(0.5 + torch.rand(prm.shape))  # trained norms ≠ 1
                elif name.endswith("bias"):
                    prm.copy_(torch.randn(prm.shape) * 0.1)
                elif name.startswith("mlp"):
                    prm.copy_(torch.randn(prm.shape) * 0.3)
        tokens = torch.randn(3, 5, case["in_dim"]).requires_grad_()
        cls, patch = head(tokens)
        r_cls = torch.randn(cls.shape)
        r_patch = torch.randn(patch.shape)
        objective = (cls * r_cls).sum() + (patch * r_patch).sum()
        params = [(n, q) for n, q in head.named_parameters() if q.requires_grad]
        grads = torch.autograd.grad(objective, [tokens] + [q for _, q in params])
        x2 = torch.randn(4, case["in_dim"])
        cls2 = head(x2)
        for name, t in head.state_dict().items():
            if case["shared"] and name.startswith("last_layer2."):
                continue
            out[p + "w." + name] = t.detach().clone()
        out[p + "tokens"] = tokens.detach()
        out[p + "cls"] = cls.detach()
        out[p + "patch"] = patch.detach()
        out[p + "r_cls"] = r_cls
        out[p + "r_patch"] = r_patch
        out[p + "grad.tokens"] = grads[0]
        for (name, _), gr in zip(params, grads[1:]):
            out[p + "grad." + name] = gr
        out[p + "x2"] = x2
        out[p + "cls2"] = cls2.detach()
    return out


# ----------------------------------------------------------------------------------------------
# Masks (ImageFolderMask)


class MaskDrawer:
    def __init__(self, pred_ratio, pred_ratio_var, pred_aspect_ratio=(0.3, 1 / 0.3), pred_shape="block"):
        self.pred_ratio = pred_ratio[0] if isinstance(pred_ratio, list) and len(pred_ratio) == 1 else pred_ratio
        self.pred_ratio_var = pred_ratio_var[0] if isinstance(pred_ratio_var, list) and \
            len(pred_ratio_var) == 1 else pred_ratio_var
        if isinstance(self.pred_ratio, list) and not isinstance(self.pred_ratio_var, list):
            self.pred_ratio_var = [self.pred_ratio_var] * len(self.pred_ratio)
        self.log_aspect_ratio = tuple(map(lambda x: math.log(x), pred_aspect_ratio))
        self.pred_shape = pred_shape

    def get_pred_ratio(self):
        if isinstance(self.pred_ratio, list):
            pred_ratio = []
            for prm, prv in zip(self.pred_ratio, self.pred_ratio_var):
                assert prm >= prv
                pr = random.uniform(prm - prv, prm + prv) if prv > 0 else prm
                pred_ratio.append(pr)
            pred_ratio = random.choice(pred_ratio)
        else:
            assert self.pred_ratio >= self.pred_ratio_var
            pred_ratio = random.uniform(self.pred_ratio - self.pred_ratio_var, self.pred_ratio +
                                        self.pred_ratio_var) if self.pred_ratio_var > 0 else self.pred_ratio
        return pred_ratio

    def draw(self, H, W):
        """One mask and the number of rectangles placed."""
        high = self.get_pred_ratio() * H * W
        blocks = 0
        if self.pred_shape == "block":
            mask = np.zeros((H, W), dtype=bool)
            mask_count = 0
            while mask_count < high:
                max_mask_patches = high - mask_count
                delta = 0
                for attempt in range(10):
                    low = (min(H, W) // 3) ** 2
                    target_area = random.uniform(low, max_mask_patches)
                    aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
                    h = int(round(math.sqrt(target_area * aspect_ratio)))
                    w = int(round(math.sqrt(target_area / aspect_ratio)))
                    if w < W and h < H:
                        top = random.randint(0, H - h)
                        left = random.randint(0, W - w)
                        num_masked = mask[top: top + h, left: left + w].sum()
                        if 0 < h * w - num_masked <= max_mask_patches:
                            for i in range(top, top + h):
                                for j in range(left, left + w):
                                    if mask[i, j] == 0:
                                        mask[i, j] = 1
                                        delta += 1
                            blocks += 1
                    if delta > 0:
                        break
                if delta == 0:
                    break
                else:
                    mask_count += delta
        elif self.pred_shape == "rand":
            mask = np.hstack([
                np.zeros(H * W - int(high)),
                np.ones(int(high)),
            ]).astype(bool)
            np.random.shuffle(mask)
            mask = mask.reshape(H, W)
        else:
            assert False
        return mask, blocks


MASK_SAMPLES = 20000
MASK_CASES = [
    dict(name="block_readme_14", shape="block", ratio=[0.0, 0.3], var=[0.0, 0.2], grid=(14, 14)),
    dict(name="block_readme_6", shape="block", ratio=[0.0, 0.3], var=[0.0, 0.2], grid=(6, 6)),
    dict(name="block_fixed_14", shape="block", ratio=[0.3], var=[0.0], grid=(14, 14)),
    dict(name="block_fixed_6", shape="block", ratio=[0.3], var=[0.0], grid=(6, 6)),
    dict(name="block_var_14", shape="block", ratio=[0.3], var=[0.2], grid=(14, 14)),
    dict(name="block_wide_10x14", shape="block", ratio=[0.45], var=[0.05], grid=(10, 14)),
    dict(name="rand_fixed_14", shape="rand", ratio=[0.3], var=[0.0], grid=(14, 14)),
    dict(name="rand_fixed_6", shape="rand", ratio=[0.3], var=[0.0], grid=(6, 6)),
    dict(name="rand_readme_14", shape="rand", ratio=[0.0, 0.7], var=[0.0, 0.05], grid=(14, 14)),
]


def mask_stats():
    random.seed(0)
    np.random.seed(0)
    out = []
    for case in MASK_CASES:
        H, W = case["grid"]
        drawer = MaskDrawer(list(case["ratio"]), list(case["var"]), pred_shape=case["shape"])
        counts = np.zeros(MASK_SAMPLES, dtype=np.int64)
        blocks = np.zeros(MASK_SAMPLES, dtype=np.int64)
        cell = np.zeros(H * W, dtype=np.int64)
        for s in range(MASK_SAMPLES):
            m, b = drawer.draw(H, W)
            counts[s] = m.sum()
            blocks[s] = b
            cell += m.reshape(-1)
        c = counts.astype(np.float64)
        bl = blocks.astype(np.float64)
        out.append({
            **case,
            "samples": MASK_SAMPLES,
            "count_mean": float(c.mean()),
            "count_var": float(c.var()),
            "count_m4": float(((c - c.mean()) ** 4).mean()),
            "count_hist": np.bincount(counts, minlength=H * W + 1).tolist(),
            "frac_unmasked": float((counts == 0).mean()),
            "blocks_mean": float(bl.mean()),
            "blocks_var": float(bl.var()),
            "blocks_hist": np.bincount(blocks).tolist(),
            "cell_freq": (cell / MASK_SAMPLES).tolist(),
        })
        print(f"{case['name']}: count {c.mean():.3f} ± {c.std():.3f}, unmasked {(counts == 0).mean():.3f}, "
              f"blocks {bl.mean():.3f}")
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        json.dump(schedules(), f)
    tensors, meta = loss_goldens()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "loss_goldens.safetensors"))
    with open(os.path.join(OUT, "loss_cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    save_file({k: v.contiguous() for k, v in head_goldens().items()},
              os.path.join(OUT, "head_goldens.safetensors"))
    with open(os.path.join(OUT, "head_cases.json"), "w") as f:
        json.dump(HEAD_CASES, f, indent=1)
    with open(os.path.join(OUT, "mask_stats.json"), "w") as f:
        json.dump(mask_stats(), f)
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == "__main__":
    main()
