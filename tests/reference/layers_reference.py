#!/usr/bin/env python3
"""Golden fixtures for the `layers` crate (run by developers, never by CI).

    /opt/refvenv/bin/pip install torch numpy safetensors
    /opt/refvenv/bin/python tests/reference/layers_reference.py     # writes layers/tests/goldens/

Every op of layers/src is evaluated with PyTorch itself (F.interpolate, F.adaptive_avg_pool2d,
F.max_pool2d, nn.ConvTranspose2d, nn.Conv2d, nn.BatchNorm2d, F.cross_entropy, ...) or, for the
mmseg/mmdet losses, a line-by-line transcription of mmseg 0.12.0 `models/losses/cross_entropy_loss.py`
+ `utils.py` and mmdet 2.11.0 `models/losses/{smooth_l1_loss,iou_loss}.py` +
`core/bbox/iou_calculators/iou2d_calculator.py` (no code copied).

Inputs are drawn in float32 (so they are exact in the f32 file) and everything is computed in
float64, then stored as float32: the goldens are the exact answers to ~1e-7, not PyTorch's own f32
rounding. Gradients use a fixed random upstream gradient `g` of the output's shape:
loss = (y * g).sum(); backward.

File format
-----------
layers/tests/goldens/layers.safetensors: tensors named `<case>.<name>`, float32 unless noted;
layers/tests/goldens/index.json: {"cases": {<case>: {"op": ..., <params>...,
                                                     "tensors": [<names>]}}}.
Names: `x` (or `logits`, `pred`, ...) inputs, `y` output, `g` upstream gradient, `grad.<name>` the
gradient of input or parameter <name>; parameters and buffers by their PyTorch state-dict names
(`weight`, `conv.weight`, `bn.running_mean`, ...) holding the values *before* the forward, and
`new.<buffer>` after it (BatchNorm in train mode); `labels` / `targets` int64 class indices;
`num_batches_tracked` int64 (0-d tensors are stored with shape [1]).
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "layers", "tests", "goldens")

torch.manual_seed(0)
TENSORS = {}
CASES = {}


def rand(*shape, scale=1.0):
    """f32 draw, returned as float64 (exact)."""
    return (torch.randn(*shape, dtype=torch.float32) * scale).double()


def put(case, name, t):
    t = t.detach()
    if t.dtype.is_floating_point:
        t = t.float()
    if t.dim() == 0:
        t = t.reshape(1)
    TENSORS[f"{case}.{name}"] = t.contiguous().clone()
    CASES[case].setdefault("tensors", []).append(name)


def case(name, op, **params):
    assert name not in CASES
    CASES[name] = {"op": op, **params}
    return name


def run_unary(name, op, fn, x, **params):
    """y = fn(x); dx from a random upstream gradient."""
    case(name, op, **params)
    x = x.clone().requires_grad_(True)
    y = fn(x)
    g = rand(*y.shape)
    (y * g).sum().backward()
    put(name, "x", x)
    put(name, "y", y)
    put(name, "g", g)
    put(name, "grad.x", x.grad)


# ----------------------------------------------------------------------------------- resize.rs
for (h, w), (oh, ow), ac in [((7, 11), (16, 9), False), ((16, 13), (5, 7), False),
                             ((7, 11), (16, 9), True), ((16, 13), (5, 7), True),
                             ((5, 4), (1, 3), False), ((5, 4), (1, 3), True),
                             ((6, 6), (6, 12), False)]:
    run_unary(f"bilinear_{h}x{w}_{oh}x{ow}{'_ac' if ac else ''}", "bilinear",
              lambda x: F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=ac),
              rand(2, 3, h, w), size=[oh, ow], align_corners=ac)

for (h, w), (oh, ow) in [((7, 11), (16, 9)), ((16, 13), (5, 7)), ((4, 5), (8, 10)), ((5, 3), (13, 3))]:
    run_unary(f"nearest_{h}x{w}_{oh}x{ow}", "nearest",
              lambda x: F.interpolate(x, size=(oh, ow), mode="nearest"),
              rand(2, 3, h, w), size=[oh, ow])

# ------------------------------------------------------------------------------------- pool.rs
for s in (1, 2, 3, 6):
    run_unary(f"adaptive_avg_16x13_{s}", "adaptive_avg_pool2d",
              lambda x: F.adaptive_avg_pool2d(x, s), rand(2, 3, 16, 13), size=[s, s])
run_unary("adaptive_avg_5x7_6x9", "adaptive_avg_pool2d",
          lambda x: F.adaptive_avg_pool2d(x, (6, 9)), rand(1, 2, 5, 7), size=[6, 9])
for k, (h, w) in [(2, (7, 11)), (2, (8, 6)), (4, (9, 13))]:
    run_unary(f"max_pool_k{k}_{h}x{w}", "max_pool2d",
              lambda x: F.max_pool2d(x, k, stride=k), rand(2, 3, h, w), kernel=k)
for h, w in [(7, 11), (8, 6), (1, 1)]:
    run_unary(f"max_pool_k1s2_{h}x{w}", "max_pool2d_k1s2",
              lambda x: F.max_pool2d(x, 1, stride=2), rand(2, 3, h, w))


# ----------------------------------------------------------------------------- module helper
def run_module(name, op, module, x, buffers=(), train=True, **params):
    """y = module(x) with its parameters as goldens; dx and d<param>."""
    case(name, op, **params)
    module = module.double()
    module.train(train)
    for pname, p in module.named_parameters():
        put(name, pname, p)
    for bname, b in module.named_buffers():
        put(name, bname, b.clone())
    x = x.clone().requires_grad_(True)
    y = module(x)
    g = rand(*y.shape)
    (y * g).sum().backward()
    put(name, "x", x)
    put(name, "y", y)
    put(name, "g", g)
    put(name, "grad.x", x.grad)
    for pname, p in module.named_parameters():
        put(name, "grad." + pname, p.grad)
    for bname, b in module.named_buffers():
        put(name, "new." + bname, b)
    return module


def randomise(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(rand(*p.shape, scale=scale))
    return module


# ----------------------------------------------------------------------------------- deconv.rs
run_module("deconv_5to3_4x6", "conv_transpose2x2", randomise(nn.ConvTranspose2d(5, 3, 2, stride=2)),
           rand(2, 5, 4, 6), c_in=5, c_out=3, bias=True)
run_module("deconv_4to4_3x5_nobias", "conv_transpose2x2",
           randomise(nn.ConvTranspose2d(4, 4, 2, stride=2, bias=False)), rand(1, 4, 3, 5),
           c_in=4, c_out=4, bias=False)

# ------------------------------------------------------------------------------------- conv.rs
for name, (b, cin, h, w), cout, k, s, p, d, grp, bias in [
    ("conv3x3_p1", (2, 4, 7, 9), 6, 3, 1, 1, 1, 1, True),
    ("conv3x3_s2_p2_d2", (2, 4, 9, 11), 5, 3, 2, 2, 2, 1, False),
    ("conv1x1", (2, 4, 5, 6), 3, 1, 1, 0, 1, 1, True),
    ("conv3x3_g2", (2, 4, 6, 7), 6, 3, 1, 1, 1, 2, True),
    ("conv2x2_s2", (1, 3, 7, 9), 4, 2, 2, 0, 1, 1, True),
]:
    run_module(name, "conv2d",
               randomise(nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=grp, bias=bias)),
               rand(b, cin, h, w), c_in=cin, c_out=cout, kernel=k, stride=s, padding=p, dilation=d,
               groups=grp, bias=bias)


# ------------------------------------------------------------------------------------- norm.rs
def bn_with_stats(c, count):
    bn = randomise(nn.BatchNorm2d(c), scale=1.0)
    with torch.no_grad():
        bn.running_mean.copy_(rand(c, scale=0.5))
        bn.running_var.copy_(rand(c).abs() + 0.5)
        bn.num_batches_tracked.fill_(count)
    return bn


run_module("bn_train", "batch_norm2d", bn_with_stats(5, 7), rand(3, 5, 4, 6, scale=2.0) + 1.0,
           train=True, num_features=5)
run_module("bn_eval", "batch_norm2d", bn_with_stats(5, 7), rand(3, 5, 4, 6, scale=2.0) + 1.0,
           train=False, num_features=5)


# ------------------------------------------------------------------------------ conv_module.rs
class ConvModule(nn.Module):
    """mmcv 1.3 ConvModule, order (conv, norm, act), bias='auto', norm named `bn`, ReLU."""

    def __init__(self, cin, cout, k, padding, norm):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        self.norm = norm

    def forward(self, x):
        x = self.conv(x)
        if self.norm:
            x = self.bn(x)
        return F.relu(x)


m = ConvModule(4, 6, 3, 1, True)
randomise(m.conv, 0.3)
with torch.no_grad():
    m.bn.weight.copy_(rand(6, scale=0.5) + 1.0)
    m.bn.bias.copy_(rand(6, scale=0.5))
run_module("conv_module_bn_relu", "conv_module", m, rand(2, 4, 5, 7), train=True,
           c_in=4, c_out=6, kernel=3, padding=1, norm=True)
run_module("conv_module_relu", "conv_module", randomise(ConvModule(4, 3, 1, 0, False)), rand(2, 4, 5, 7),
           train=True, c_in=4, c_out=3, kernel=1, padding=0, norm=False)


# ----------------------------------------------------------------------------------- losses.rs
def run_loss(name, op, fn, inputs, consts, **params):
    """Scalar or elementwise loss; inputs get gradients (upstream `g` of the output's shape)."""
    case(name, op, **params)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves, **consts)
    g = rand(*y.shape) if y.dim() > 0 else torch.tensor(1.7, dtype=torch.float64)
    (y * g).sum().backward()
    for k, v in leaves.items():
        put(name, k, v)
    for k, v in consts.items():
        put(name, k, v)
    put(name, "y", y)
    put(name, "g", g)
    for k, v in leaves.items():
        put(name, "grad." + k, v.grad)


def mmseg_cross_entropy(logits, labels, ignore_index=255):
    # mmseg 0.12 cross_entropy(): F.cross_entropy(reduction='none', ignore_index) then
    # weight_reduce_loss(weight=None, reduction='mean', avg_factor=None) = loss.mean().
    loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore_index)
    return loss.mean()


def ce_avg_non_ignore(logits, labels, ignore_index=255):
    # mmseg >= 0.24 with avg_non_ignore=True: sum / (numel - n_ignored + f32 eps).
    loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore_index)
    avg_factor = labels.numel() - (labels == ignore_index).sum().item()
    return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)


labels = torch.randint(0, 5, (2, 6, 7))
labels[torch.rand(2, 6, 7) < 0.25] = 255
logits = rand(2, 5, 6, 7, scale=2.0)
run_loss("seg_ce_mmseg012", "seg_cross_entropy", mmseg_cross_entropy, {"logits": logits},
         {"labels": labels}, ignore_index=255, average="all_pixels")
run_loss("seg_ce_avg_non_ignore", "seg_cross_entropy", ce_avg_non_ignore, {"logits": logits},
         {"labels": labels}, ignore_index=255, average="non_ignored")
run_loss("pixel_ce", "pixel_cross_entropy",
         lambda logits, labels: F.cross_entropy(logits, labels, reduction="none", ignore_index=255),
         {"logits": logits}, {"labels": labels}, ignore_index=255)
run_loss("ce", "cross_entropy", lambda logits, targets: F.cross_entropy(logits, targets),
         {"logits": rand(6, 5, scale=2.0)}, {"targets": torch.randint(0, 5, (6,))})
soft = torch.softmax(rand(4, 5), dim=1)
run_loss("soft_ce", "soft_target_cross_entropy",
         lambda logits, targets: torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean(),
         {"logits": rand(4, 5, scale=2.0)}, {"targets": soft})
bce_t = (torch.rand(3, 7) < 0.5).double()
bce_t[0] = torch.rand(7).double()  # soft targets in one row
bce_x = rand(3, 7, scale=4.0)
bce_x[1, 0] = 40.0  # far in the tails: the stable form must not overflow
bce_x[1, 1] = -40.0
run_loss("bce_mean", "bce_with_logits_mean",
         lambda x, t: F.binary_cross_entropy_with_logits(x, t), {"x": bce_x}, {"t": bce_t})
run_loss("bce_none", "bce_with_logits",
         lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"), {"x": bce_x}, {"t": bce_t})


def mmdet_smooth_l1(pred, target, beta):
    diff = torch.abs(pred - target)
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


for beta, tag in [(1.0 / 9.0, "beta_1_9"), (1.0, "beta_1")]:
    run_loss(f"smooth_l1_{tag}", "smooth_l1", lambda pred, target: mmdet_smooth_l1(pred, target, beta),
             {"pred": rand(5, 4, scale=0.5)}, {"target": rand(5, 4, scale=0.5)}, beta=beta)
run_loss("l1", "l1", lambda pred, target: torch.abs(pred - target),
         {"pred": rand(5, 4)}, {"target": rand(5, 4)})


def mmdet_giou(pred, target, eps):
    # bbox_overlaps(mode='giou', is_aligned=True, eps)
    area1 = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area2 = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
    lt = torch.max(pred[..., :2], target[..., :2])
    rb = torch.min(pred[..., 2:], target[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - overlap
    enclosed_lt = torch.min(pred[..., :2], target[..., :2])
    enclosed_rb = torch.max(pred[..., 2:], target[..., 2:])
    eps = union.new_tensor([eps])
    union = torch.max(union, eps)
    ious = overlap / union
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = enclose_wh[..., 0] * enclose_wh[..., 1]
    enclose_area = torch.max(enclose_area, eps)
    return ious - (enclose_area - union) / enclose_area


def boxes(n, scale):
    xy = rand(n, 2, scale=scale)
    wh = rand(n, 2).abs() * scale + 0.5
    return torch.cat([xy, xy + wh], dim=1)


gp, gt = boxes(8, 4.0), boxes(8, 4.0)
gp[0] = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)  # disjoint pair
gt[0] = torch.tensor([5.0, 6.0, 7.5, 9.0], dtype=torch.float64)
gp[1] = torch.tensor([1.0, 1.0, 4.0, 3.0], dtype=torch.float64)  # pred inside target
gt[1] = torch.tensor([0.5, 0.25, 5.0, 4.0], dtype=torch.float64)
run_loss("giou_loss", "giou_loss", lambda pred, target: 1 - mmdet_giou(pred, target, 1e-6),
         {"pred": gp}, {"target": gt}, eps=1e-6)

for dim_name, fn in [("softmax", lambda x: torch.softmax(x, dim=1)),
                     ("log_softmax", lambda x: F.log_softmax(x, dim=1))]:
    run_unary(dim_name, dim_name, fn, rand(2, 5, 3, 4, scale=3.0), dim=1)

os.makedirs(OUT, exist_ok=True)
save_file(TENSORS, os.path.join(OUT, "layers.safetensors"))
with open(os.path.join(OUT, "index.json"), "w") as f:
    json.dump({"source": "tests/reference/layers_reference.py", "torch": torch.__version__,
               "cases": CASES}, f, indent=1, sort_keys=True)
size = os.path.getsize(os.path.join(OUT, "layers.safetensors"))
print(f"{len(CASES)} cases, {len(TENSORS)} tensors, {size / 1024:.1f} KiB -> {OUT}")
