"""Golden values for pretrain's AdamW: PyTorch AdamW with iBOT's two parameter groups, per-step
lr / weight-decay schedules, per-parameter gradient clipping (utils.clip_gradients) and the frozen
last layer (grad set to None in epoch 0, utils.cancel_gradients_last_layer).

    /opt/refvenv/bin/python tests/reference/optim_reference.py
writes train/tests/goldens/optim.json
"""
import json
import pathlib

import torch

torch.manual_seed(0)
shapes = {"blocks.0.attn.qkv.weight": (6, 4), "blocks.0.attn.qkv.bias": (6,),
          "norm.weight": (4,), "head.last_layer.weight_v": (5, 4), "cls_token": (1, 1, 4)}
params = {n: torch.nn.Parameter(torch.randn(*s, dtype=torch.float64)) for n, s in shapes.items()}
initial = {n: p.detach().clone() for n, p in params.items()}
decay = [p for n, p in params.items() if p.ndim >= 2 and not n.endswith(".bias")]
no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and not n.endswith(".bias"))]
opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1.0)

steps = []
lrs = [1e-2, 5e-3, 2e-2, 1e-2]
wds = [0.04, 0.1, 0.2, 0.4]
clip = 3.0
for i, (lr, wd) in enumerate(zip(lrs, wds)):
    grads = {n: torch.randn(*s, dtype=torch.float64) * (5.0 if i % 2 == 0 else 0.5) for n, s in shapes.items()}
    for n, p in params.items():
        p.grad = grads[n].clone()
    for p in params.values():  # utils.clip_gradients
        norm = p.grad.data.norm(2)
        c = clip / (norm + 1e-6)
        if c < 1:
            p.grad.data.mul_(c)
    frozen = i < 2  # freeze_last_layer: the first two steps are "epoch 0"
    if frozen:
        for n, p in params.items():
            if "last_layer" in n:
                p.grad = None
    for j, g in enumerate(opt.param_groups):
        g["lr"] = lr
        if j == 0:
            g["weight_decay"] = wd
    opt.step()
    steps.append({"lr": lr, "wd": wd, "frozen": frozen,
                  "grads": {n: grads[n].flatten().tolist() for n in shapes},
                  "after": {n: p.detach().flatten().tolist() for n, p in params.items()}})

out = {"clip": clip, "shapes": {n: list(s) for n, s in shapes.items()},
       "initial": {n: t.flatten().tolist() for n, t in initial.items()}, "steps": steps}
path = pathlib.Path(__file__).resolve().parents[2] / "train/tests/goldens/optim.json"
path.write_text(json.dumps(out))
print("wrote", path)
