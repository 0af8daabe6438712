"""Golden fine-tuning steps for tasks/finetune: the whole BEiT / DeiT step in PyTorch.

    python3 -m venv /opt/refvenv && /opt/refvenv/bin/pip install torch timm numpy safetensors
    /opt/refvenv/bin/python tests/reference/finetune_reference.py   # writes tasks/finetune/tests/goldens/

A tiny DINO-layout ViT (dim 16, depth 2, 2 heads, patch 4) pretrained at 16 px is fine-tuned at
24 px: its pos_embed is resized 4×4 → 6×6 at load in size mode (bicubic, align_corners=False), as
BEiT's `run_class_finetuning.py` does. Then two optimizer steps on a fixed batch with soft targets
(what Mixup produces), drop path off:

- `full`: CLS after the final norm → Linear head; BEiT `get_parameter_groups` with layer decay
  0.75 (transcribed; no decay for 1-D, .bias, pos_embed, cls_token); torch.optim.AdamW with
  `lr = lr_sched[it] · lr_scale` and the wd schedule on the decaying groups (engine_for_finetuning);
- `semisup`: CLS → head.mlp.0 (Linear 16→2048) → GELU → head.cls_head (2048→5); timm's own
  `param_groups_weight_decay` with the skip list; one lr.

Loss: timm's SoftTargetCrossEntropy. Outputs: step.safetensors (`<mode>.init.<param>`,
`<mode>.after<k>.<param>`, `images`, `targets`) and step.json (losses, lrs, wds, groups).
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from backbone_reference import DinoViT  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "tasks", "finetune", "tests", "goldens")


def beit_groups(model, weight_decay, depth, decay, skip=("pos_embed", "cls_token")):
    values = [decay ** (depth + 1 - i) for i in range(depth + 2)]
    groups = {}
    for name, p in model.named_parameters():
        if len(p.shape) == 1 or name.endswith(".bias") or name in skip:
            g, wd = "no_decay", 0.0
        else:
            g, wd = "decay", weight_decay
        if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
            lid = 0
        elif name.startswith("blocks"):
            lid = int(name.split(".")[1]) + 1
        else:
            lid = depth + 1
        key = f"layer_{lid}_{g}"
        groups.setdefault(key, {"weight_decay": wd, "params": [], "lr_scale": values[lid], "names": []})
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


class Finetuned(nn.Module):
    def __init__(self, vit, head):
        super().__init__()
        self.vit = vit
        self.head = head

    def forward(self, x):
        return self.head(self.vit(x)[:, 0])


class ProjHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, 2048), nn.GELU())
        self.cls_head = nn.Linear(2048, classes)

    def forward(self, x):
        return self.cls_head(self.mlp(x))


def state(model):
    # The Rust model names the backbone with bare keys and the head under head.*.
    return {k.replace("vit.", "", 1): v.detach().clone() for k, v in model.state_dict().items()}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    dim, depth, classes = 16, 2, 5
    pre = DinoViT(img_size=16, patch=4, dim=dim, depth=depth, heads=2)
    sd = pre.state_dict()
    pos = sd["pos_embed"]
    tok = pos[:, 1:].reshape(1, 4, 4, dim).permute(0, 3, 1, 2)
    tok = F.interpolate(tok, size=(6, 6), mode="bicubic", align_corners=False)
    sd["pos_embed"] = torch.cat((pos[:, :1], tok.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)
    images = torch.randn(4, 3, 24, 24)
    t = torch.rand(4, classes)
    targets = t / t.sum(1, keepdim=True)
    tensors = {"images": images.contiguous(), "targets": targets.contiguous(),
               "pretrained_pos_embed": pos.contiguous()}
    meta = {"dim": dim, "depth": depth, "heads": 2, "patch": 4, "pretrain_size": 16, "size": 24,
            "classes": classes}
    for mode in ["full", "semisup"]:
        vit = DinoViT(img_size=24, patch=4, dim=dim, depth=depth, heads=2)
        vit.load_state_dict(sd)
        if mode == "full":
            head = nn.Linear(dim, classes)
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        else:
            head = ProjHead(dim, classes)
            nn.init.trunc_normal_(head.cls_head.weight, std=0.02)
            nn.init.zeros_(head.cls_head.bias)
        model = Finetuned(vit, head)
        # The optimizer sees the model's names without the wrapper prefix.
        named = {k.replace("vit.", "", 1): p for k, p in model.named_parameters()}
        flat = nn.Module()
        for k, p in named.items():
            flat.register_parameter(k.replace(".", "__"), p)
        if mode == "full":
            groups = beit_groups(_Named(named), 0.05, depth, 0.75)
            lrs, wds = [1e-3, 4e-4], [0.05, 0.03]
        else:
            g = param_groups_weight_decay(flat, 0.05, no_weight_decay_list=["pos_embed", "cls_token"])
            groups = [{"weight_decay": x["weight_decay"], "params": x["params"], "lr_scale": 1.0} for x in g]
            lrs, wds = [2e-4, 1e-4], [0.05, 0.05]
        opt = torch.optim.AdamW(groups, lr=lrs[0], betas=(0.9, 0.999), eps=1e-8)
        for k, v in state(model).items():
            tensors[f"{mode}.init.{k}"] = v.contiguous()
        losses = []
        for it in range(2):
            for g in opt.param_groups:
                g["lr"] = lrs[it] * g["lr_scale"]
                if g["weight_decay"] > 0:
                    g["weight_decay"] = wds[it]
            loss = SoftTargetCrossEntropy()(model(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            for k, v in state(model).items():
                tensors[f"{mode}.after{it + 1}.{k}"] = v.contiguous()
        meta[mode] = {"losses": losses, "lrs": lrs, "wds": wds}
    save_file(tensors, os.path.join(OUT, "step.safetensors"))
    with open(os.path.join(OUT, "step.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT)


class _Named:
    """named_parameters() over a dict, for the BEiT group builder."""

    def __init__(self, named):
        self.named = named

    def named_parameters(self):
        return list(self.named.items())


if __name__ == "__main__":
    main()
