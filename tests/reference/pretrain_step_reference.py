#!/usr/bin/env python3
"""End-to-end iBOT training-step golden (run by developers, never by CI).

    git clone https://github.com/bytedance/ibot /path/to/ibot && git -C /path/to/ibot checkout da316d8
    /opt/refvenv/bin/python tests/reference/pretrain_step_reference.py --ibot /path/to/ibot
    # (pip install torch timm safetensors numpy; writes pretrain/tests/fixtures/step_*)

The existing goldens check the parts (loss, head, schedules, masks, AdamW). This one checks their
wiring: it imports the OFFICIAL modules of bytedance/ibot at da316d8 from the given checkout —
`models.vision_transformer.VisionTransformer`, `models.head.iBOTHead`, `utils.MultiCropWrapper`,
`utils.get_params_groups`, `utils.cosine_scheduler`, `utils.clip_gradients`,
`utils.cancel_gradients_last_layer` and `main_ibot.iBOTLoss` — builds student and teacher as
`train_ibot` does (the teacher loads the student's state dict non-strictly), and runs
`main_ibot.train_one_epoch` itself, unchanged, on fixed crops and masks for K = 5 iterations over
three epochs of two iterations (warm-up, the cosine lr / wd / momentum schedules, the per-epoch
teacher temperatures, per-parameter clipping, the last layer frozen in epoch 0, AdamW with its two
groups, the EMA teacher, both loss centres). Nothing of the official code is copied here; only
what a CPU, single process run needs is stubbed: `.cuda()` is the identity, a one-rank gloo group
serves `dist.all_reduce`/`all_gather`, DistributedDataParallel is replaced by a wrapper with the
same `.module` attribute, and the three modules main_ibot imports but this step never uses
(tensorboardX, loader, evaluation.unsupervised.unsup_cls) are empty stand-ins.

Cases: `shared` (README ViT-S head: shared head, trainable g, 2 local crops) and `separate`
(code-default heads: student with its own last_layer2 and frozen g, teacher shared — so the teacher's
last layer starts from the student's last_layer2 — and no local crops). Drop-path is 0 and fp16 is
off, so the computation is deterministic. Weights after every step, the centres, and the loss
terms are written to pretrain/tests/fixtures/step_goldens.safetensors and step_cases.json.
"""
import argparse
import json
import os
import sys
import tempfile
import types
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "pretrain", "tests", "fixtures")

CASES = [
    dict(name="shared", embed_dim=16, depth=2, num_heads=2, patch=4, global_size=16, local_size=8,
         G=2, L=2, B=4, out_dim=32, hidden_dim=32, bottleneck_dim=8, shared_head=True,
         shared_head_teacher=True, norm_last_layer=False, lr=0.05, min_lr=1e-4, warmup_epochs=1,
         weight_decay=0.04, weight_decay_end=0.4, clip_grad=0.3, freeze_last_layer=1,
         momentum_teacher=0.9, warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_teacher_patch_temp=0.04, teacher_patch_temp=0.07, warmup_teacher_temp_epochs=2,
         lambda1=1.0, lambda2=1.0, epochs=3, iters_per_epoch=2, steps=5, seed=0),
    dict(name="separate", embed_dim=16, depth=2, num_heads=2, patch=4, global_size=16, local_size=8,
         G=2, L=0, B=4, out_dim=32, hidden_dim=32, bottleneck_dim=8, shared_head=False,
         shared_head_teacher=True, norm_last_layer=True, lr=0.05, min_lr=1e-4, warmup_epochs=1,
         weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0, freeze_last_layer=1,
         momentum_teacher=0.95, warmup_teacher_temp=0.04, teacher_temp=0.04,
         warmup_teacher_patch_temp=0.04, teacher_patch_temp=0.07, warmup_teacher_temp_epochs=2,
         lambda1=1.0, lambda2=0.5, epochs=3, iters_per_epoch=2, steps=5, seed=1),
]


def import_official(repo):
    """main_ibot, models.vision_transformer, models.head and utils from the checkout."""
    sys.path.insert(0, repo)
    # Imported by main_ibot at module level but not used by train_one_epoch's step.
    tbx = types.ModuleType("tensorboardX")
    tbx.SummaryWriter = object
    sys.modules["tensorboardX"] = tbx
    loader = types.ModuleType("loader")
    loader.ImageFolderMask = object
    sys.modules["loader"] = loader
    for name in ["evaluation", "evaluation.unsupervised"]:
        m = types.ModuleType(name)
        m.__path__ = []
        sys.modules[name] = m
    unsup = types.ModuleType("evaluation.unsupervised.unsup_cls")
    unsup.eval_pred = lambda *a, **k: (0.0, 0.0, 0.0, 0.0)  # epoch-end NMI monitor only
    sys.modules["evaluation.unsupervised.unsup_cls"] = unsup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import main_ibot
        import utils
        from models.head import iBOTHead
        from models.vision_transformer import VisionTransformer
    return main_ibot, utils, iBOTHead, VisionTransformer


class DDPShim(nn.Module):
    """What train_one_epoch reads of DistributedDataParallel: `.module` and forward."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def cpu_single_process():
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(prefix="ibot-step-golden-", delete=False)
        store.close()
        os.unlink(store.name)
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)


def params(module):
    """name → detached copy, for every parameter (shared modules once, as named_parameters)."""
    return {n: p.detach().clone().contiguous() for n, p in module.named_parameters()}


def run_case(c, official):
    main_ibot, utils, iBOTHead, VisionTransformer = official
    torch.manual_seed(c["seed"])
    np.random.seed(c["seed"])
    D, G, L, B = c["embed_dim"], c["G"], c["L"], c["B"]

    def vit(masked, drop_path):
        return VisionTransformer(img_size=[c["global_size"]], patch_size=c["patch"], embed_dim=D,
                                 depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=4,
                                 qkv_bias=True, drop_path_rate=drop_path, return_all_tokens=True,
                                 masked_im_modeling=masked)

    # As train_ibot builds them (§7.4), with drop_path 0 (deterministic).
    student = utils.MultiCropWrapper(vit(True, 0.0), iBOTHead(
        D, c["out_dim"], patch_out_dim=c["out_dim"], norm=None, act="gelu",
        norm_last_layer=c["norm_last_layer"], shared_head=c["shared_head"],
        hidden_dim=c["hidden_dim"], bottleneck_dim=c["bottleneck_dim"]))
    teacher = utils.MultiCropWrapper(vit(False, 0.0), iBOTHead(
        D, c["out_dim"], patch_out_dim=c["out_dim"], norm=None, act="gelu",
        shared_head=c["shared_head_teacher"], hidden_dim=c["hidden_dim"],
        bottleneck_dim=c["bottleneck_dim"]))
    teacher_without_ddp = teacher
    student = DDPShim(student)
    teacher_without_ddp.load_state_dict(student.module.state_dict(), strict=False)
    for p in teacher.parameters():
        p.requires_grad = False

    ibot_loss = main_ibot.iBOTLoss(
        c["out_dim"], c["out_dim"], G, L,
        c["warmup_teacher_temp"], c["teacher_temp"],
        c["warmup_teacher_patch_temp"], c["teacher_patch_temp"],
        c["warmup_teacher_temp_epochs"], c["epochs"],
        lambda1=c["lambda1"], lambda2=c["lambda2"], mim_start_epoch=0)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    ipe, epochs = c["iters_per_epoch"], c["epochs"]
    lr_schedule = utils.cosine_scheduler(c["lr"] * B / 256.0, c["min_lr"], epochs, ipe,
                                         warmup_epochs=c["warmup_epochs"])
    wd_schedule = utils.cosine_scheduler(c["weight_decay"], c["weight_decay_end"], epochs, ipe)
    momentum_schedule = utils.cosine_scheduler(c["momentum_teacher"], 1, epochs, ipe)
    args = argparse.Namespace(global_crops_number=G, use_masked_im_modeling=True,
                              clip_grad=c["clip_grad"], freeze_last_layer=c["freeze_last_layer"],
                              epochs=epochs)

    # Fixed crops and masks: ImageNet-normalised-looking values; masks with empty, partial and
    # full rows so the MIM mean sees unmasked images and the clamp.
    gen = torch.Generator().manual_seed(100 + c["seed"])
    grid = c["global_size"] // c["patch"]
    batches = []
    for k in range(c["steps"]):
        g = [torch.randn(B, 3, c["global_size"], c["global_size"], generator=gen) for _ in range(G)]
        l = [torch.randn(B, 3, c["local_size"], c["local_size"], generator=gen) for _ in range(L)]
        m = []
        for v in range(G):
            ratio = torch.rand(B, 1, 1, generator=gen) * 0.6
            mask = torch.rand(B, grid, grid, generator=gen) < ratio
            mask[(k + v) % B] = False
            if k == 1 and v == 0:
                mask[1] = True
            m.append(mask)
        batches.append((g + l, torch.zeros(B, dtype=torch.long), m))

    out = {}
    record = {"steps": []}
    s_init, t_init = params(student.module), params(teacher_without_ddp)
    for n, t in s_init.items():
        out[f"{c['name']}.init.student.{n}"] = t
    for n, t in t_init.items():
        out[f"{c['name']}.init.teacher.{n}"] = t
    for k, (crops, _, masks) in enumerate(batches):
        out[f"{c['name']}.input.{k}.globals"] = torch.cat(crops[:G]).contiguous()
        if L > 0:
            out[f"{c['name']}.input.{k}.locals"] = torch.cat(crops[G:]).contiguous()
        out[f"{c['name']}.input.{k}.masks"] = torch.cat(masks).flatten(1).float().contiguous()

    # The loss call of each step, recorded without changing it.
    losses = []
    official_forward = ibot_loss.forward

    def recording_forward(*a, **kw):
        result = official_forward(*a, **kw)
        losses.append({k: float(v) for k, v in result.items()})
        return result

    ibot_loss.forward = recording_forward

    done = [0]

    def snapshot():
        k = done[0]
        for n, t in params(student.module).items():
            out[f"{c['name']}.step{k}.student.{n}"] = t
        for n, t in params(teacher_without_ddp).items():
            out[f"{c['name']}.step{k}.teacher.{n}"] = t
        out[f"{c['name']}.step{k}.center"] = ibot_loss.center.detach().clone()
        out[f"{c['name']}.step{k}.center2"] = ibot_loss.center2.detach().clone()
        record["steps"].append(dict(losses[k], lr=float(lr_schedule[k]), wd=float(wd_schedule[k]),
                                    momentum=float(momentum_schedule[k])))
        done[0] += 1

    class EpochLoader:
        """One epoch of the fixed batches; snapshots the weights after each step (when the
        training loop asks for the next batch or finds the epoch over)."""

        def __init__(self, items):
            self.items = items

        def __len__(self):
            return ipe

        def __iter__(self):
            for item in self.items:
                yield item
                snapshot()

    utils.MetricLogger.synchronize_between_processes = lambda self: None
    for epoch in range(epochs):
        items = batches[epoch * ipe:(epoch + 1) * ipe]
        if not items:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_ibot.train_one_epoch(student, teacher, teacher_without_ddp, ibot_loss,
                                      EpochLoader(items), optimizer, lr_schedule, wd_schedule,
                                      momentum_schedule, epoch, None, args)
    assert done[0] == c["steps"], done
    case = dict(c)
    case["steps_record"] = record["steps"]
    case["student_names"] = sorted(s_init)
    case["teacher_names"] = sorted(t_init)
    return out, case


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ibot", required=True, help="checkout of github.com/bytedance/ibot at da316d8")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cpu_single_process()
    official = import_official(os.path.abspath(a.ibot))
    tensors, cases = {}, []
    for c in CASES:
        t, case = run_case(c, official)
        tensors.update(t)
        cases.append(case)
        last = case["steps_record"][-1]
        print(f"{c['name']}: {len(t)} tensors, losses {[round(s['loss'], 5) for s in case['steps_record']]}, last lr {last['lr']:.3g}")
    os.makedirs(a.out, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in tensors.items()},
              os.path.join(a.out, "step_goldens.safetensors"))
    with open(os.path.join(a.out, "step_cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    print("wrote", os.path.join(a.out, "step_goldens.safetensors"))


if __name__ == "__main__":
    main()
