#!/usr/bin/env python3
"""Golden fixtures for tasks/segmentation: mmseg 0.12.0 UPerHead + auxiliary FCNHead on the iBOT
ViT->pyramid adapter, the linear head (FCNHead, num_convs 0, resize_concat), the decode-head loss
and `EncoderDecoder.slide_inference` (run by developers, never by CI).

    /opt/refvenv/bin/pip install torch numpy safetensors
    /opt/refvenv/bin/python tests/reference/segmentation_reference.py      # writes tasks/segmentation/tests/goldens/

    # optional cross-check of this transcription against the real mmseg 0.12.0 + mmcv 1.3.0 code
    # (source trees: `pip download mmsegmentation==0.12.0`, mmcv `git archive v1.3.0 mmcv`; mmcv.ops
    # and cv2 are stubbed, nothing compiled):
    /opt/refvenv/bin/python tests/reference/segmentation_reference.py --check-mmseg MMCV_DIR MMSEG_DIR

Sources transcribed (no code copied): mmseg 0.12.0 `models/decode_heads/{decode_head,uper_head,
psp_head,fcn_head}.py`, `models/segmentors/encoder_decoder.py` (`slide_inference`, `encode_decode`,
`inference`), `models/losses/{cross_entropy_loss,utils,accuracy}.py`, `ops/wrappers.py` (`resize`);
mmcv 1.3.0 `cnn/bricks/conv_module.py` (`ConvModule`: conv -> norm -> act, bias='auto', norm named
`bn`); bytedance/ibot `evaluation/semantic_segmentation/mmcv_custom/register_backbone.py` (fpn1..fpn4).

Conventions of the goldens
--------------------------
* All computation in float64 from float32-exact inputs and weights, stored as float32; labels and
  predictions as uint8 (255 = ignore), windows and num_batches_tracked as int64.
* SyncBN is BatchNorm2d on one device (same keys); BN layers run in **train mode** (batch
  statistics; running stats updated with momentum 0.1 and the unbiased variance). Batch 3: with
  2 samples the PPM's 1x1-pooled BN would see two values per channel, whose normalised output
  (+-1) does not depend on the conv weights, leaving gradients that are pure round-off.
* Dropout2d is disabled for the goldens (`dropout_ratio=0`, so `decode_head.dropout` is None; the
  official configs use 0.1; Dropout2d has no parameters, so the keys are the same).
* Weights are seeded random (conv ~ U(±1/sqrt(fan_in)) as PyTorch's default, BN weight 1 + N(0,0.1²),
  bias N(0,0.1²)); running stats start at PyTorch's defaults (0, 1, num_batches_tracked 0).

Files in tasks/segmentation/tests/goldens/ (index.json describes every file: its config and
every tensor's shape and dtype)
----------------------------------------------------------------------------------------------
uper_p16.safetensors, uper_p8.safetensors -- EncoderDecoder(backbone pyramid + UPerHead +
    auxiliary FCNHead), forward_train on four ViT feature maps (the outputs of blocks out_indices,
    patch tokens as [B, D, h, w], i.e. after the optional final norm), then loss backward:
    state dict before the forward, with mmseg's exact keys, e.g.
        backbone.fpn1.0.weight [D, D, 2, 2], backbone.fpn1.0.bias, backbone.fpn1.1.{weight,bias,
        running_mean,running_var,num_batches_tracked}, backbone.fpn1.3.{weight,bias},
        backbone.fpn2.0.{weight,bias}        (p16; p8 has only backbone.fpn1.0.*)
        decode_head.psp_modules.{0..3}.1.conv.weight, decode_head.psp_modules.{i}.1.bn.*,
        decode_head.bottleneck.{conv.weight,bn.*}, decode_head.lateral_convs.{0..2}.{conv.weight,bn.*},
        decode_head.fpn_convs.{0..2}.{conv.weight,bn.*}, decode_head.fpn_bottleneck.{conv.weight,bn.*},
        decode_head.conv_seg.{weight,bias},
        auxiliary_head.convs.0.{conv.weight,bn.*}, auxiliary_head.conv_seg.{weight,bias}
    inputs.{0..3}          ViT maps [B, D, h, w] (float32)
    labels                 [B, H, W] uint8, 255 = ignore (H, W = image size = patch * grid)
    pyramid.{0..3}         adapter outputs (strides 4, 8, 16, 32)
    debug.decode_head.<module>  outputs of decode-head submodules (ConvModule outputs, i.e. after
                           ReLU): psp_modules.{i} (before the upsampling), bottleneck,
                           lateral_convs.{i} (before the top-down sums), fpn_convs.{i}, fpn_bottleneck
    decode_logits          [B, K, H/4, W/4] (decode_head.forward)
    aux_logits             [B, K, h, w] (auxiliary_head.forward, in_index 2)
    loss_decode, loss_aux  [1]: decode.loss_seg and aux.loss_seg (aux already x 0.4); logits are
                           resized bilinearly (align_corners False) to the label size in the loss;
                           CE with ignore_index 255 averaged over ALL pixels (mmseg 0.12)
    acc_decode, acc_aux    [1]: mmseg 0.12 `accuracy` (%, ignored pixels count in the denominator)
    loss_total             [1]: loss_decode + loss_aux, the tensor that is backpropagated
    grad.<param key>       d loss_total / d parameter, for every parameter key above. Those listed
                           in index.json "zero_grads" are 0 in exact arithmetic (a ConvT bias that
                           reaches a train-mode BN only through bias-free convs: the BN removes any
                           per-channel constant); the stored values are float64 round-off (~1e-17),
                           so compare them with an absolute tolerance
    grad.inputs.{i}, grad.pyramid.{i}   d loss_total / d ViT maps and d adapter outputs
    new.<buffer key>       every BN buffer after the forward (running_mean/var, num_batches_tracked = 1)
linear.safetensors, linear_mixed.safetensors -- the linear head: FCNHead(num_convs=0,
    input_transform='resize_concat', in_index [0,1,2,3], channels = sum(in_channels), dropout 0),
    no adapter (with_fpn=False). Keys decode_head.conv_seg.{weight,bias}; inputs.{i}, labels,
    decode_logits, loss_decode, acc_decode, loss_total (= loss_decode), grad.*. `linear` has four
    equal-size maps (iBOT: the resize is a no-op), `linear_mixed` different sizes (resized to inputs.0's).
loss.safetensors -- BaseDecodeHead.losses alone: logits [B, K, h, w], labels [B, H, W],
    resized_logits, loss (mean over all pixels), loss_avg_non_ignore (sum / (n_valid + f32 eps)),
    acc, grad.logits (of loss).
slide.safetensors, slide_small.safetensors -- EncoderDecoder.slide_inference + inference:
    img [1, 3, H, W]; a stand-in encode_decode(crop) = resize(conv_seg(adaptive_avg_pool2d(crop,
    (ceil(h/4), ceil(w/4)))), crop size, bilinear, align_corners False) with conv_seg.{weight,bias}
    (3 -> K, 1x1); windows [n, 4] int64 (y1, y2, x1, x2 in visiting order), count [1, 1, H, W],
    crop_logits.{j} (encode_decode of window j), logits (summed / count), resized (bilinear to
    ori_shape, align_corners False), probs (softmax over classes), pred [1, H0, W0] uint8 (argmax).
    Config: crop_size, stride, ori_shape. `slide_small` has an image smaller than the crop in one axis.
"""
import argparse
import json
import math
import os
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tasks", "segmentation", "tests", "goldens")
IGNORE = 255
torch.set_default_dtype(torch.float64)


def resize(x, size, align_corners=False):
    """mmseg.ops.resize in size mode (bilinear)."""
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=align_corners)


# ------------------------------------------------------------------------------ mmcv ConvModule
class ConvModule(nn.Module):
    """mmcv 1.3 ConvModule with order (conv, norm, act): conv bias only without a norm
    (bias='auto'), the norm layer registered as `bn` (mmcv infer_abbr of a _BatchNorm), ReLU."""

    def __init__(self, cin, cout, k, padding=0, dilation=1, norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, bias=not norm)
        self.with_norm = norm
        if norm:
            self.bn = nn.BatchNorm2d(cout)  # SyncBN on one device
        self.activate = nn.ReLU()

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        return self.activate(x)


# ------------------------------------------------------------------------------ mmseg 0.12 heads
class BaseDecodeHead(nn.Module):
    def __init__(self, in_channels, channels, num_classes, in_index, input_transform=None,
                 dropout_ratio=0.0, align_corners=False, loss_weight=1.0):
        super().__init__()
        self.input_transform = input_transform
        self.in_index = in_index
        if input_transform == "resize_concat":
            self.in_channels = sum(in_channels)
        else:
            self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.loss_weight = loss_weight
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _transform_inputs(self, inputs):
        if self.input_transform == "resize_concat":
            inputs = [inputs[i] for i in self.in_index]
            ups = [resize(x, inputs[0].shape[2:], self.align_corners) for x in inputs]
            return torch.cat(ups, dim=1)
        if self.input_transform == "multiple_select":
            return [inputs[i] for i in self.in_index]
        return inputs[self.in_index]

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def losses(self, seg_logit, seg_label):
        """seg_label [B, 1, H, W] -> {'loss_seg', 'acc_seg'}."""
        seg_logit = resize(seg_logit, seg_label.shape[2:], self.align_corners)
        seg_label = seg_label.squeeze(1)
        loss = F.cross_entropy(seg_logit, seg_label, reduction="none", ignore_index=IGNORE)
        loss = self.loss_weight * loss.mean()  # weight_reduce_loss(reduction='mean')
        return {"loss_seg": loss, "acc_seg": accuracy(seg_logit, seg_label)}


def accuracy(pred, target):
    """mmseg 0.12 accuracy(topk=1): correct argmax / target.numel() * 100 (255s included)."""
    pred_label = pred.argmax(dim=1)
    return (pred_label == target).double().sum() * (100.0 / target.numel())


class PPM(nn.ModuleList):
    def __init__(self, pool_scales, in_channels, channels, align_corners):
        super().__init__()
        self.align_corners = align_corners
        for s in pool_scales:
            self.append(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)))

    def forward(self, x):
        return [resize(ppm(x), x.shape[2:], self.align_corners) for ppm in self]


class UPerHead(BaseDecodeHead):
    def __init__(self, pool_scales=(1, 2, 3, 6), **kw):
        super().__init__(input_transform="multiple_select", **kw)
        ch = self.channels
        self.psp_modules = PPM(pool_scales, self.in_channels[-1], ch, self.align_corners)
        self.bottleneck = ConvModule(self.in_channels[-1] + len(pool_scales) * ch, ch, 3, padding=1)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for cin in self.in_channels[:-1]:
            self.lateral_convs.append(ConvModule(cin, ch, 1))
            self.fpn_convs.append(ConvModule(ch, ch, 3, padding=1))
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * ch, ch, 3, padding=1)

    def psp_forward(self, inputs):
        x = inputs[-1]
        outs = [x] + self.psp_modules(x)
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs):
        inputs = self._transform_inputs(inputs)
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs))
        n = len(laterals)
        for i in range(n - 1, 0, -1):
            # Out of place (the original `+=` is in place); same values and gradients.
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n - 1)]
        outs.append(laterals[-1])
        for i in range(n - 1, 0, -1):
            outs[i] = resize(outs[i], outs[0].shape[2:], self.align_corners)
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(BaseDecodeHead):
    def __init__(self, num_convs=2, kernel_size=3, concat_input=True, dilation=1, **kw):
        super().__init__(**kw)
        self.concat_input = concat_input
        pad = (kernel_size // 2) * dilation
        if num_convs == 0:
            assert self.in_channels == self.channels
            self.convs = nn.Identity()
        else:
            convs = [ConvModule(self.in_channels, self.channels, kernel_size, padding=pad, dilation=dilation)]
            for _ in range(num_convs - 1):
                convs.append(ConvModule(self.channels, self.channels, kernel_size, padding=pad, dilation=dilation))
            self.convs = nn.Sequential(*convs)
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size,
                                       padding=kernel_size // 2)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


# ------------------------------------------------------------------- iBOT ViT -> pyramid adapter
class Pyramid(nn.Module):
    """The fpn1..fpn4 modules of iBOT's seg/det VisionTransformer wrapper (register_backbone.py),
    applied to the four ViT maps; `None` patch size = with_fpn False (maps returned unchanged)."""

    def __init__(self, dim, patch_size):
        super().__init__()
        self.patch_size = patch_size
        if patch_size == 16:
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim),
                                      nn.GELU(), nn.ConvTranspose2d(dim, dim, 2, stride=2))
            self.fpn2 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2))
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        elif patch_size == 8:
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2))
            self.fpn2 = nn.Identity()
            self.fpn3 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
            self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=4, stride=4))

    def forward(self, feats):
        if self.patch_size is None:
            return list(feats)
        ops = [self.fpn1, self.fpn2, self.fpn3, self.fpn4]
        return [op(f) for op, f in zip(ops, feats)]


class Segmentor(nn.Module):
    """EncoderDecoder minus the ViT blocks: `backbone` holds the adapter only, so state-dict keys
    are backbone.fpn*, decode_head.*, auxiliary_head.* exactly as in mmseg."""

    def __init__(self, backbone, decode_head, auxiliary_head=None):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head

    def forward_train(self, feats, labels):
        pyramid = self.backbone(feats)
        out = {"pyramid": pyramid, "losses": {}}
        out["decode_logits"] = self.decode_head(pyramid)
        out["losses"]["decode"] = self.decode_head.losses(out["decode_logits"], labels.unsqueeze(1))
        if hasattr(self, "auxiliary_head"):
            out["aux_logits"] = self.auxiliary_head(pyramid)
            out["losses"]["aux"] = self.auxiliary_head.losses(out["aux_logits"], labels.unsqueeze(1))
        return out


# ----------------------------------------------------------------------------------- writers
TENSORS, INDEX = {}, {}


def f32_exact(t):
    return t.float().double()


def randn(*shape, scale=1.0):
    return f32_exact(torch.randn(*shape) * scale)


def init_model(model):
    """Seeded weights, f32-exact: convs keep PyTorch's default init (re-rounded), BN affine
    perturbed so that it is not the identity."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".bn." in f".{name}" or name.startswith("backbone.fpn1.1."):
                p.copy_(randn(*p.shape, scale=0.1) + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(f32_exact(p))
    return model


def put(file, name, t):
    t = t.detach()
    if name in ("labels", "pred"):
        t = t.to(torch.uint8)
    if t.dtype.is_floating_point:
        t = t.float()
    if t.dim() == 0:
        t = t.reshape(1)
    TENSORS.setdefault(file, {})[name] = t.contiguous().clone()


def labels_for(b, h, w):
    lab = torch.randint(0, NUM_CLASSES, (b, h, w))
    lab[torch.rand(b, h, w) < 0.2] = IGNORE
    return lab


def capture_debug(model, file):
    """Forward hooks recording decode-head submodule outputs as debug.decode_head.<name>."""
    handles = []
    head = model.decode_head
    names = []
    if isinstance(head, UPerHead):
        names += [f"psp_modules.{i}" for i in range(len(head.psp_modules))]
        names += ["bottleneck", "fpn_bottleneck"]
        names += [f"lateral_convs.{i}" for i in range(len(head.lateral_convs))]
        names += [f"fpn_convs.{i}" for i in range(len(head.fpn_convs))]
    modules = dict(head.named_modules())
    for n in names:
        handles.append(modules[n].register_forward_hook(
            lambda m, i, o, n=n: put(file, f"debug.decode_head.{n}", o)))
    return handles


def run_model(file, model, feats, labels, config):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in state.items():
        put(file, k, v)
    model.train()
    feats = [f.clone().requires_grad_(True) for f in feats]
    handles = capture_debug(model, file)
    out = model.forward_train(feats, labels)
    for h in handles:
        h.remove()
    for p in out["pyramid"]:
        p.retain_grad()
    losses = out["losses"]
    total = sum(v["loss_seg"] for v in losses.values())
    total.backward()
    for i, f in enumerate(feats):
        put(file, f"inputs.{i}", f)
        put(file, f"grad.inputs.{i}", f.grad)
    put(file, "labels", labels)
    if model.backbone.patch_size is not None:
        for i, p in enumerate(out["pyramid"]):
            put(file, f"pyramid.{i}", p)
            put(file, f"grad.pyramid.{i}", p.grad)
    put(file, "decode_logits", out["decode_logits"])
    put(file, "loss_decode", losses["decode"]["loss_seg"])
    put(file, "acc_decode", losses["decode"]["acc_seg"])
    if "aux" in losses:
        put(file, "aux_logits", out["aux_logits"])
        put(file, "loss_aux", losses["aux"]["loss_seg"])
        put(file, "acc_aux", losses["aux"]["acc_seg"])
    put(file, "loss_total", total)
    zero = []
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        put(file, f"grad.{name}", g)
        if g.abs().max().item() < 1e-12 * max(1.0, total.item()):
            zero.append(f"grad.{name}")
    for name, b in model.named_buffers():
        put(file, f"new.{name}", b)
    # A conv bias followed by a train-mode BN (directly, or through a bias-free 1x1 conv) has an
    # exactly zero gradient: the BN's mean subtraction removes any per-channel constant.
    INDEX[file] = {"config": config, "zero_grads": zero}
    return model, feats, out


NUM_CLASSES = 5


def uper_case(file, patch, grid, dim=8, channels=12, aux_channels=6, batch=3):
    torch.manual_seed({16: 1, 8: 2}[patch])
    gh, gw = grid
    model = Segmentor(
        Pyramid(dim, patch),
        UPerHead(pool_scales=(1, 2, 3, 6), in_channels=[dim] * 4, in_index=[0, 1, 2, 3], channels=channels,
                 num_classes=NUM_CLASSES, dropout_ratio=0.0, align_corners=False),
        FCNHead(num_convs=1, kernel_size=3, concat_input=False, in_channels=dim, in_index=2,
                channels=aux_channels, num_classes=NUM_CLASSES, dropout_ratio=0.0, align_corners=False,
                loss_weight=0.4),
    )
    init_model(model)
    feats = [randn(batch, dim, gh, gw) for _ in range(4)]
    labels = labels_for(batch, gh * patch, gw * patch)
    config = {
        "patch_size": patch, "embed_dim": dim, "grid": [gh, gw], "batch": batch,
        "image_size": [gh * patch, gw * patch], "num_classes": NUM_CLASSES, "ignore_index": IGNORE,
        "decode_head": {"type": "UPerHead", "in_channels": [dim] * 4, "in_index": [0, 1, 2, 3],
                        "pool_scales": [1, 2, 3, 6], "channels": channels, "dropout_ratio": 0.0,
                        "official_dropout_ratio": 0.1, "align_corners": False, "norm": "BN (train mode)",
                        "loss_weight": 1.0},
        "auxiliary_head": {"type": "FCNHead", "in_channels": dim, "in_index": 2, "channels": aux_channels,
                           "num_convs": 1, "kernel_size": 3, "concat_input": False, "dropout_ratio": 0.0,
                           "official_dropout_ratio": 0.1, "align_corners": False, "loss_weight": 0.4},
        "bn": {"momentum": 0.1, "eps": 1e-5},
    }
    return run_model(file, model, feats, labels, config)


def linear_case(file, sizes, dim=8, batch=3, patch=16):
    torch.manual_seed(3 if len(set(sizes)) == 1 else 4)
    head = FCNHead(num_convs=0, concat_input=False, in_channels=[dim] * 4, in_index=[0, 1, 2, 3],
                   input_transform="resize_concat", channels=4 * dim, num_classes=NUM_CLASSES,
                   dropout_ratio=0.0, align_corners=False)
    model = init_model(Segmentor(Pyramid(dim, None), head))
    feats = [randn(batch, dim, h, w) for h, w in sizes]
    h0, w0 = sizes[0]
    labels = labels_for(batch, h0 * patch, w0 * patch)
    config = {
        "patch_size": patch, "embed_dim": dim, "map_sizes": [list(s) for s in sizes], "batch": batch,
        "image_size": [h0 * patch, w0 * patch], "num_classes": NUM_CLASSES, "ignore_index": IGNORE,
        "decode_head": {"type": "FCNHead", "num_convs": 0, "input_transform": "resize_concat",
                        "in_channels": [dim] * 4, "in_index": [0, 1, 2, 3], "channels": 4 * dim,
                        "concat_input": False, "dropout_ratio": 0.0, "align_corners": False,
                        "loss_weight": 1.0},
    }
    return run_model(file, model, feats, labels, config)


def loss_case(file):
    torch.manual_seed(5)
    b, k, h, w, H, W = 2, NUM_CLASSES, 7, 9, 23, 30
    logits = randn(b, k, h, w, scale=2.0).requires_grad_(True)
    labels = labels_for(b, H, W)
    head = BaseDecodeHead(in_channels=4, channels=4, num_classes=k, in_index=0)
    out = head.losses(logits, labels.unsqueeze(1))
    out["loss_seg"].backward()
    resized = resize(logits, (H, W))
    ce = F.cross_entropy(resized, labels, reduction="none", ignore_index=IGNORE)
    n_valid = labels.numel() - (labels == IGNORE).sum().item()
    put(file, "logits", logits)
    put(file, "labels", labels)
    put(file, "resized_logits", resized)
    put(file, "loss", out["loss_seg"])
    put(file, "loss_avg_non_ignore", ce.sum() / (n_valid + torch.finfo(torch.float32).eps))
    put(file, "acc", out["acc_seg"])
    put(file, "grad.logits", logits.grad)
    INDEX[file] = {"config": {"num_classes": k, "ignore_index": IGNORE, "align_corners": False,
                              "label_size": [H, W]}}


# ------------------------------------------------------------------------- slide inference
def slide_inference(img, crop_size, stride, num_classes, encode_decode, ori_shape, align_corners=False):
    """EncoderDecoder.slide_inference(rescale=True) of mmseg 0.12, returning its bookkeeping."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop_size
    b, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((b, num_classes, h_img, w_img))
    count = img.new_zeros((b, 1, h_img, w_img))
    windows, crops = [], []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_logit = encode_decode(img[:, :, y1:y2, x1:x2])
            preds += F.pad(crop_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count[:, :, y1:y2, x1:x2] += 1
            windows.append([y1, y2, x1, x2])
            crops.append(crop_logit)
    assert (count == 0).sum() == 0
    logits = preds / count
    resized = resize(logits, ori_shape, align_corners)
    probs = F.softmax(resized, dim=1)  # EncoderDecoder.inference
    return {"windows": torch.tensor(windows, dtype=torch.int64), "count": count, "crops": crops,
            "logits": logits, "resized": resized, "probs": probs, "pred": probs.argmax(dim=1)}


def slide_case(file, img_hw, crop, stride, ori_shape):
    torch.manual_seed(6)
    conv_seg = nn.Conv2d(3, NUM_CLASSES, 1)
    with torch.no_grad():
        conv_seg.weight.copy_(randn(*conv_seg.weight.shape))
        conv_seg.bias.copy_(randn(*conv_seg.bias.shape, scale=0.1))

    def encode_decode(x):
        h, w = x.shape[2:]
        feat = F.adaptive_avg_pool2d(x, (math.ceil(h / 4), math.ceil(w / 4)))
        return resize(conv_seg(feat), (h, w))

    img = randn(1, 3, *img_hw)
    with torch.no_grad():
        out = slide_inference(img, crop, stride, NUM_CLASSES, encode_decode, ori_shape)
    put(file, "img", img)
    put(file, "conv_seg.weight", conv_seg.weight)
    put(file, "conv_seg.bias", conv_seg.bias)
    for k in ["windows", "count", "logits", "resized", "probs", "pred"]:
        put(file, k, out[k])
    for j, c in enumerate(out["crops"]):
        put(file, f"crop_logits.{j}", c)
    INDEX[file] = {"config": {
        "crop_size": list(crop), "stride": list(stride), "img_size": list(img_hw), "ori_shape": list(ori_shape),
        "num_classes": NUM_CLASSES, "align_corners": False,
        "encode_decode": "resize(conv_seg(adaptive_avg_pool2d(crop, (ceil(h/4), ceil(w/4)))), (h, w), "
                         "bilinear, align_corners=False)",
        "grid_formula": "n = max(size - crop + stride - 1, 0) // stride + 1; y2 = min(y1 + crop, size); "
                        "y1 = max(y2 - crop, 0)"}}


# ----------------------------------------------------------------------- real-mmseg cross-check
def check_against_mmseg(mmcv_dir, mmseg_dir, models):
    """Rebuild the heads with the real mmseg 0.12.0 / mmcv 1.3.0 classes, load this script's state
    dicts strictly (so every key name is mmseg's), and compare outputs, losses and gradients."""
    import shutil
    import tempfile
    stubs = tempfile.mkdtemp()
    os.makedirs(os.path.join(stubs, "cv2"))
    with open(os.path.join(stubs, "cv2", "__init__.py"), "w") as f:
        f.write("def __getattr__(name):\n"
                "    if name.startswith('__'):\n        raise AttributeError(name)\n"
                "    return (lambda *a, **k: 0) if name[0].islower() else 0\n")
    sys.path[:0] = [stubs, mmcv_dir, mmseg_dir]
    ops = types.ModuleType("mmcv.ops")  # compiled ops are not needed by these heads

    def ga(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})
    ops.__getattr__ = ga
    sys.modules["mmcv.ops"] = ops
    import mmcv
    from mmseg.models.decode_heads.fcn_head import FCNHead as RealFCN
    from mmseg.models.decode_heads.uper_head import UPerHead as RealUPer
    from mmseg.models.segmentors.encoder_decoder import EncoderDecoder
    shutil.rmtree(stubs)
    print(f"mmcv {mmcv.__version__}, mmseg from {mmseg_dir}")
    bn = dict(type="BN", requires_grad=True)
    worst = 0.0
    for file, (model, feats, ours) in models.items():
        cfg = INDEX[file]["config"]
        dh = cfg["decode_head"]
        if dh["type"] == "UPerHead":
            real_dh = RealUPer(pool_scales=tuple(dh["pool_scales"]), in_channels=dh["in_channels"],
                               in_index=dh["in_index"], channels=dh["channels"], dropout_ratio=0.0,
                               num_classes=cfg["num_classes"], norm_cfg=bn, align_corners=False)
        else:
            real_dh = RealFCN(num_convs=0, concat_input=False, in_channels=dh["in_channels"],
                              in_index=dh["in_index"], input_transform="resize_concat", channels=dh["channels"],
                              dropout_ratio=0.0, num_classes=cfg["num_classes"], norm_cfg=bn, align_corners=False)
        heads = {"decode_head": real_dh}
        if "auxiliary_head" in cfg:
            ah = cfg["auxiliary_head"]
            heads["auxiliary_head"] = RealFCN(
                num_convs=1, kernel_size=3, concat_input=False, in_channels=ah["in_channels"], in_index=2,
                channels=ah["channels"], dropout_ratio=0.0, num_classes=cfg["num_classes"], norm_cfg=bn,
                align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
        tensors = TENSORS[file]
        pyr_names = [f"pyramid.{i}" for i in range(4)] if "pyramid.0" in tensors else [f"inputs.{i}" for i in range(4)]
        pyramid = [tensors[n].double().clone().requires_grad_(True) for n in pyr_names]
        labels = tensors["labels"].long().unsqueeze(1)
        total = 0.0
        for prefix, head in heads.items():
            head.double()
            if prefix == "decode_head" and hasattr(head, "lateral_convs"):
                # mmseg 0.12 adds the top-down path in place (`laterals[i - 1] += ...`) onto ReLU
                # outputs, which current PyTorch refuses to backpropagate through (ReLU saves its
                # result); handing `+=` a copy changes neither values nor gradients.
                for conv in head.lateral_convs:
                    conv.register_forward_hook(lambda m, i, o: o.clone())
            sd = {k[len(prefix) + 1:]: v.double() if v.dtype.is_floating_point else v
                  for k, v in tensors.items() if k.startswith(prefix + ".")}
            head.load_state_dict(sd, strict=True)
            head.train()
            logits = head(pyramid)
            losses = head.losses(logits, labels)
            total = total + losses["loss_seg"]
            tag = "decode" if prefix == "decode_head" else "aux"
            for name, got in [(f"{tag}_logits", logits), (f"loss_{tag}", losses["loss_seg"]),
                              (f"acc_{tag}", losses["acc_seg"])]:
                worst = max(worst, report(file, name, got, tensors[name]))
            for k, b in head.named_buffers():
                worst = max(worst, report(file, f"new.{prefix}.{k}", b, tensors[f"new.{prefix}.{k}"]))
            heads[prefix] = head
        total.backward()
        for prefix, head in heads.items():
            for k, p in head.named_parameters():
                worst = max(worst, report(file, f"grad.{prefix}.{k}", p.grad, tensors[f"grad.{prefix}.{k}"]))
        for n, p in zip(pyr_names, pyramid):
            worst = max(worst, report(file, "grad." + n, p.grad, tensors["grad." + n]))
    # slide_inference through the real method with a stand-in `self`.
    for file in ["slide", "slide_small"]:
        t, cfg = TENSORS[file], INDEX[file]["config"]
        conv = nn.Conv2d(3, cfg["num_classes"], 1)
        with torch.no_grad():
            conv.weight.copy_(t["conv_seg.weight"].double())
            conv.bias.copy_(t["conv_seg.bias"].double())

        def enc(x, img_meta, conv=conv):
            h, w = x.shape[2:]
            return resize(conv(F.adaptive_avg_pool2d(x, (math.ceil(h / 4), math.ceil(w / 4)))), (h, w))
        fake = types.SimpleNamespace(
            test_cfg=types.SimpleNamespace(stride=tuple(cfg["stride"]), crop_size=tuple(cfg["crop_size"])),
            num_classes=cfg["num_classes"], align_corners=False, encode_decode=enc)
        with torch.no_grad():
            got = EncoderDecoder.slide_inference(fake, t["img"].double(), [{"ori_shape": tuple(cfg["ori_shape"]) + (3,)}],
                                                 rescale=True)
        worst = max(worst, report(file, "resized", got, t["resized"]))
    print(f"worst relative difference vs real mmseg 0.12.0: {worst:.2e}")
    assert worst < 1e-6


def report(file, name, got, want):
    got, want = got.detach().double().reshape(-1), want.double().reshape(-1)
    err = ((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()
    if err > 1e-6:
        print(f"  MISMATCH {file}:{name} {err:.2e}")
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-mmseg", nargs=2, metavar=("MMCV_DIR", "MMSEG_DIR"))
    args = ap.parse_args()
    models = {
        "uper_p16": uper_case("uper_p16", 16, (2, 3)),
        "uper_p8": uper_case("uper_p8", 8, (5, 6)),
        "linear": linear_case("linear", [(2, 3)] * 4),
        "linear_mixed": linear_case("linear_mixed", [(3, 4), (2, 3), (2, 2), (1, 2)]),
    }
    loss_case("loss")
    slide_case("slide", (22, 29), (12, 16), (8, 10), (27, 35))
    slide_case("slide_small", (10, 29), (12, 16), (8, 10), (10, 29))

    os.makedirs(OUT, exist_ok=True)
    total = 0
    index = {"source": "tests/reference/segmentation_reference.py", "torch": torch.__version__,
             "mmseg": "0.12.0 (transcribed)", "files": {}}
    for file, tensors in TENSORS.items():
        path = os.path.join(OUT, f"{file}.safetensors")
        save_file(tensors, path)
        os.chmod(path, 0o644)
        total += os.path.getsize(path)
        index["files"][f"{file}.safetensors"] = {
            **INDEX[file],
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                        for k, v in sorted(tensors.items())},
        }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    print(f"{len(TENSORS)} files, {sum(len(t) for t in TENSORS.values())} tensors, {total / 1024:.1f} KiB -> {OUT}")
    if args.check_mmseg:
        check_against_mmseg(*args.check_mmseg, models)


if __name__ == "__main__":
    main()
