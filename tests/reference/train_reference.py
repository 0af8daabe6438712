"""Goldens for the `train` crate: parameter groups, schedules and classification losses.

    python3 -m venv /opt/refvenv && /opt/refvenv/bin/pip install torch timm numpy
    /opt/refvenv/bin/python tests/reference/train_reference.py     # writes train/tests/goldens/

References (real code where it installs, faithful transcriptions where it does not):
- groups.json: BEiT `optim_factory.get_parameter_groups` + `LayerDecayValueAssigner` as iBOT's
  `evaluation/classification_layer_decay/run_class_finetuning.py` builds them (transcribed from
  bytedance/ibot da316d8; the function is pure Python), iBOT's det/seg mmcv_custom
  `LayerDecayOptimizerConstructor.add_params` (transcribed; mmcv 1.3 does not install here), and
  timm's own `param_groups_weight_decay` (the installed timm).
- schedules.json: BEiT `utils.cosine_scheduler` (transcribed, numpy), timm's own
  `CosineLRScheduler` driven as the DeiT-style loop drives it (`step(epoch)` after each epoch), and
  mmcv 1.3 `PolyLrUpdaterHook` / `StepLrUpdaterHook` with linear warm-up (transcribed).
- losses.json: timm's own `SoftTargetCrossEntropy` and `LabelSmoothingCrossEntropy` and torch's
  `cross_entropy`, values and gradients.
"""
import json
import math
import pathlib

import numpy as np
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.optim import param_groups_weight_decay

OUT = pathlib.Path(__file__).resolve().parents[2] / "train/tests/goldens"


def vit_params(depth=4, dim=16, prefix=""):
    p = [("cls_token", [1, 1, dim]), ("pos_embed", [1, 17, dim]), ("patch_embed.proj.weight", [dim, 3, 4, 4]),
         ("patch_embed.proj.bias", [dim])]
    for i in range(depth):
        b = f"blocks.{i}."
        p += [(b + "norm1.weight", [dim]), (b + "norm1.bias", [dim]), (b + "attn.qkv.weight", [3 * dim, dim]),
              (b + "attn.qkv.bias", [3 * dim]), (b + "attn.proj.weight", [dim, dim]), (b + "attn.proj.bias", [dim]),
              (b + "norm2.weight", [dim]), (b + "norm2.bias", [dim]), (b + "mlp.fc1.weight", [4 * dim, dim]),
              (b + "mlp.fc1.bias", [4 * dim]), (b + "mlp.fc2.weight", [dim, 4 * dim]), (b + "mlp.fc2.bias", [dim])]
    p += [("norm.weight", [dim]), ("norm.bias", [dim])]
    return [(prefix + n, s) for n, s in p]


# --- BEiT (transcription of optim_factory.py) ------------------------------------------------------
def beit_layer_id(name, num_max_layer):
    if name in ("cls_token", "mask_token", "pos_embed"):
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("rel_pos_bias"):
        return num_max_layer - 1
    elif name.startswith("blocks"):
        return int(name.split('.')[1]) + 1
    return num_max_layer - 1


def beit_groups(params, weight_decay, skip_list, depth, decay):
    values = [decay ** (depth + 1 - i) for i in range(depth + 2)]
    out = []
    for name, shape in params:
        if len(shape) == 1 or name.endswith(".bias") or name in skip_list:
            wd = 0.0
        else:
            wd = weight_decay
        lid = beit_layer_id(name, len(values))
        out.append({"name": name, "lr_scale": values[lid], "weight_decay": wd})
    return out


# --- mmcv_custom LayerDecayOptimizerConstructor (transcription) -------------------------------------
def mmcv_layer_id(name, num_max_layer):
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    elif name.startswith("backbone.patch_embed"):
        return 0
    elif name.startswith("backbone.blocks"):
        return int(name.split('.')[2]) + 1
    return num_max_layer - 1


def mmcv_groups(params, weight_decay, num_layers, rate):
    n = num_layers + 2
    out = []
    for name, shape in params:
        if len(shape) == 1 or name.endswith(".bias") or name in ('pos_embed', 'cls_token'):
            wd = 0.0
        else:
            wd = weight_decay
        lid = mmcv_layer_id(name, n)
        out.append({"name": name, "lr_scale": rate ** (n - lid - 1), "weight_decay": wd})
    return out


def timm_groups(params, weight_decay, skip):
    """timm's own param_groups_weight_decay on a module with these parameters."""
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, shape in params:
                self.register_parameter(name.replace(".", "__"), torch.nn.Parameter(torch.zeros(shape)))
    m = M()
    # timm matches names; rebuild the dotted names through a name map.
    groups = param_groups_weight_decay(m, weight_decay, no_weight_decay_list=[s.replace(".", "__") for s in skip])
    by_id = {id(p): n.replace("__", ".") for n, p in m.named_parameters()}
    wd_of = {}
    for g in groups:
        for p in g["params"]:
            wd_of[by_id[id(p)]] = g["weight_decay"]
    return [{"name": n, "lr_scale": 1.0, "weight_decay": wd_of[n]} for n, _ in params]


def groups():
    depth = 4
    cls = vit_params(depth) + [("head.weight", [10, 16]), ("head.bias", [10])]
    semi = vit_params(depth) + [("head.mlp.0.weight", [2048, 16]), ("head.mlp.0.bias", [2048]),
                                ("head.cls_head.weight", [10, 2048]), ("head.cls_head.bias", [10])]
    dense = vit_params(depth, prefix="backbone.") + [
        ("backbone.fpn1.0.weight", [16, 16, 2, 2]), ("backbone.fpn1.0.bias", [16]),
        ("backbone.fpn1.1.weight", [16]), ("backbone.fpn1.1.bias", [16]),
        ("backbone.fpn1.3.weight", [16, 16, 2, 2]), ("backbone.fpn1.3.bias", [16]),
        ("backbone.fpn2.0.weight", [16, 16, 2, 2]), ("backbone.fpn2.0.bias", [16]),
        ("neck.lateral_convs.0.conv.weight", [8, 16, 1, 1]), ("neck.lateral_convs.0.conv.bias", [8]),
        ("decode_head.conv_seg.weight", [5, 8, 1, 1]), ("decode_head.conv_seg.bias", [5]),
        ("decode_head.bottleneck.bn.weight", [8]),
    ]
    skip = ["pos_embed", "cls_token"]
    return {
        "beit": [
            {"params": cls, "depth": depth, "decay": 0.75, "weight_decay": 0.05, "groups": beit_groups(cls, 0.05, skip, depth, 0.75)},
            {"params": cls, "depth": depth, "decay": 0.65, "weight_decay": 0.05, "groups": beit_groups(cls, 0.05, skip, depth, 0.65)},
        ],
        "mmcv": [
            {"params": dense, "num_layers": depth, "rate": 0.65, "weight_decay": 0.05, "groups": mmcv_groups(dense, 0.05, depth, 0.65)},
            {"params": dense, "num_layers": depth, "rate": 0.9, "weight_decay": 0.05, "groups": mmcv_groups(dense, 0.05, depth, 0.9)},
        ],
        "timm": [
            {"params": semi, "weight_decay": 0.05, "skip": skip, "groups": timm_groups(semi, 0.05, skip)},
        ],
    }


# --- schedules -----------------------------------------------------------------------------------
def beit_cosine(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0, warmup_steps=-1):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array([final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / (len(iters)))) for i in iters])
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def timm_epochs(base, lr_min, epochs, warmup, warmup_lr):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base)
    sched = CosineLRScheduler(opt, t_initial=epochs, lr_min=lr_min, warmup_lr_init=warmup_lr, warmup_t=warmup,
                              cycle_limit=1, t_in_epochs=True)
    out = []
    for epoch in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        sched.step(epoch)
    return out


def mmcv_warmup(regular, cur_iter, warmup_iters, ratio):
    k = (1 - cur_iter / warmup_iters) * (1 - ratio)
    return regular * (1 - k)


def mmcv_poly(base, min_lr, power, max_iters, warmup_iters, ratio):
    out = []
    for it in range(max_iters):
        coeff = (1 - it / max_iters) ** power
        regular = (base - min_lr) * coeff + min_lr
        out.append(regular if warmup_iters == 0 or it >= warmup_iters else mmcv_warmup(regular, it, warmup_iters, ratio))
    return out


def mmcv_step(base, gamma, steps, epochs, ipe, warmup_iters, ratio):
    out = []
    for epoch in range(epochs):
        exp = len(steps)
        for i, s in enumerate(steps):
            if epoch < s:
                exp = i
                break
        regular = base * gamma ** exp
        for j in range(ipe):
            it = epoch * ipe + j
            # before_train_iter (by_epoch): > warmup: keep; == warmup: regular; < warmup: warm-up lr
            out.append(regular if warmup_iters == 0 or it >= warmup_iters else mmcv_warmup(regular, it, warmup_iters, ratio))
    return out


def schedules():
    return {
        "beit_cosine": [
            {"base": 4e-3, "final": 1e-6, "epochs": 7, "iters": 5, "warmup": 2, "start": 0.0,
             "values": beit_cosine(4e-3, 1e-6, 7, 5, 2).tolist()},
            {"base": 1e-3, "final": 1e-6, "epochs": 3, "iters": 11, "warmup": 0, "start": 0.0,
             "values": beit_cosine(1e-3, 1e-6, 3, 11, 0).tolist()},
        ],
        "timm_epochs": [
            {"base": b, "min": m, "epochs": e, "warmup": w, "warmup_lr": wl, "values": timm_epochs(b, m, e, w, wl)}
            for (b, m, e, w, wl) in [(5e-4, 1e-5, 12, 5, 1e-6), (5e-6 * 1024 / 512, 1e-5, 9, 5, 1e-6), (1e-3, 1e-5, 6, 0, 1e-6)]
        ],
        "mmcv_poly": [
            {"base": b, "min": m, "power": p, "max_iters": n, "warmup_iters": w, "ratio": r, "values": mmcv_poly(b, m, p, n, w, r)}
            for (b, m, p, n, w, r) in [(8e-5, 0.0, 1.0, 40, 15, 1e-6), (3e-4, 1e-6, 0.9, 25, 0, 1e-6)]
        ],
        "mmcv_step": [
            {"base": b, "gamma": g, "steps": s, "epochs": e, "iters": i, "warmup_iters": w, "ratio": r,
             "values": mmcv_step(b, g, s, e, i, w, r)}
            for (b, g, s, e, i, w, r) in [(1e-4, 0.1, [8, 11], 12, 7, 50, 0.001), (2e-4, 0.1, [2], 4, 3, 0, 0.001)]
        ],
        "versions": {"timm": timm.__version__, "numpy": np.__version__},
    }


def losses():
    g = torch.Generator().manual_seed(0)
    out = {}
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    t = torch.rand(6, 5, generator=g, dtype=torch.float64)
    t = t / t.sum(1, keepdim=True)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    xs = x.clone().requires_grad_(True)
    loss = SoftTargetCrossEntropy()(xs, t)
    loss.backward()
    out["soft_target"] = {"logits": x.tolist(), "targets": t.tolist(), "loss": loss.item(), "grad": xs.grad.tolist()}
    for eps in [0.0, 0.1]:
        xs = x.clone().requires_grad_(True)
        loss = LabelSmoothingCrossEntropy(smoothing=eps)(xs, labels) if eps > 0 else torch.nn.functional.cross_entropy(xs, labels)
        loss.backward()
        out[f"label_smoothing_{eps}"] = {"logits": x.tolist(), "labels": labels.tolist(), "smoothing": eps,
                                         "loss": loss.item(), "grad": xs.grad.tolist()}
    return out


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fn in [("groups", groups), ("schedules", schedules), ("losses", losses)]:
        (OUT / f"{name}.json").write_text(json.dumps(fn()) + "\n")
        print("wrote", OUT / f"{name}.json")
