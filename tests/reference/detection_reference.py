"""Goldens for tasks/detection (host-side mmdet 2.11 two-stage machinery) and layers/src/roi_align.rs.

    /opt/refvenv/bin/pip install torch torchvision numpy safetensors
    /opt/refvenv/bin/python tests/reference/detection_reference.py
writes tasks/detection/tests/goldens/*.safetensors (one file per Rust module; the case configuration
is JSON in the safetensors metadata under "meta").

Everything below is a transcription, written for this project, of what mmdet 2.11.0 (the fork iBOT
uses: SwinTransformer/Swin-Transformer-Object-Detection c7b20110) and mmcv 1.3.9 compute:
  mmdet/core/anchor/anchor_generator.py, mmdet/core/anchor/utils.py (anchor_inside_flags)
  mmdet/core/bbox/coder/delta_xywh_bbox_coder.py, iou_calculators/iou2d_calculator.py
  mmdet/core/bbox/assigners/max_iou_assigner.py, samplers/{base,random}_sampler.py
  mmdet/models/dense_heads/{rpn_head,anchor_head}.py, roi_heads/bbox_heads/bbox_head.py,
  roi_heads/cascade_roi_head.py, roi_heads/mask_heads/fcn_mask_head.py, core/mask/{mask_target,structures}.py,
  core/post_processing/bbox_nms.py, roi_extractors/single_level_roi_extractor.py
  mmcv/ops/nms.py (batched_nms)
The NMS kernel and RoIAlign are the REAL torchvision ops (torchvision.ops.nms, roi_align(aligned=True,
sampling_ratio=0), forward and backward), which follow the same (Detectron2) maths as mmcv's CPU kernels;
mmcv 1.3.9's own CPU nms suppresses at IoU >= thr and its CUDA nms at inter > thr * union: the Rust code
follows torchvision (IoU > thr, compared in double).
RandomSampler draws with torch.randperm in mmdet; parity is impossible, so these goldens use the
deterministic "first-k" mode (gallery[:k]) that the Rust sampler also offers.
"""
import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision.ops import nms as tv_nms
from torchvision.ops import roi_align as tv_roi_align

OUT = pathlib.Path(__file__).resolve().parents[2] / "tasks" / "detection" / "tests" / "goldens"
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
np.random.seed(0)
f32 = torch.float32


def save(name, tensors, meta):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        if v.dtype == torch.bool:
            tensors[k] = v.to(torch.uint8)
        elif v.dtype in (torch.int64, torch.int16):
            assert v.numel() == 0 or (v.abs().max() < 2**31), k
            tensors[k] = v.to(torch.int32)  # indices and labels are small: half the bytes
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata={"meta": json.dumps(meta)})
    print(f"{name}: {len(tensors)} tensors, {(OUT / f'{name}.safetensors').stat().st_size} bytes")


def rand_boxes(n, h, w, min_size=1.0, max_size=None, g=None):
    max_size = max_size or min(h, w) / 2
    cx = torch.rand(n, generator=g) * w
    cy = torch.rand(n, generator=g) * h
    bw = min_size + torch.rand(n, generator=g) * (max_size - min_size)
    bh = min_size + torch.rand(n, generator=g) * (max_size - min_size)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).to(f32)


# ----------------------------------------------------------------------------------------- structures
def bbox_overlaps(b1, b2, mode="iou", is_aligned=False, eps=1e-6):
    rows, cols = b1.size(0), b2.size(0)
    if rows * cols == 0:
        return b1.new_zeros((rows,) if is_aligned else (rows, cols))
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    if is_aligned:
        lt = torch.max(b1[:, :2], b2[:, :2])
        rb = torch.min(b1[:, 2:], b2[:, 2:])
        wh = (rb - lt).clamp(min=0)
        overlap = wh[:, 0] * wh[:, 1]
        union = area1 + area2 - overlap if mode in ("iou", "giou") else area1
        if mode == "giou":
            elt = torch.min(b1[:, :2], b2[:, :2])
            erb = torch.max(b1[:, 2:], b2[:, 2:])
    else:
        lt = torch.max(b1[:, None, :2], b2[None, :, :2])
        rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1[:, None] + area2[None, :] - overlap if mode in ("iou", "giou") else area1[:, None]
        if mode == "giou":
            elt = torch.min(b1[:, None, :2], b2[None, :, :2])
            erb = torch.max(b1[:, None, 2:], b2[None, :, 2:])
    eps_t = union.new_tensor([eps])
    union = torch.max(union, eps_t)
    ious = overlap / union
    if mode in ("iou", "iof"):
        return ious
    ewh = (erb - elt).clamp(min=0)
    earea = torch.max(ewh[..., 0] * ewh[..., 1], eps_t)
    return ious - (earea - union) / earea


def gen_structures():
    g = torch.Generator().manual_seed(1)
    a = rand_boxes(37, 100, 120, g=g)
    b = rand_boxes(23, 100, 120, g=g)
    b[3] = a[5]  # identical pair
    b[4] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # zero width
    a[0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # zero area
    aa = rand_boxes(23, 100, 120, g=g)
    t, meta = {"a": a, "b": b, "aa": aa}, {}
    for mode in ("iou", "iof", "giou"):
        t[f"pair.{mode}"] = bbox_overlaps(a, b, mode)
        t[f"aligned.{mode}"] = bbox_overlaps(aa, b, mode, is_aligned=True)
    save("structures", t, meta)


# ----------------------------------------------------------------------------------------- anchors
class AnchorGen:
    def __init__(self, strides, ratios, scales, base_sizes=None, center_offset=0.0, scale_major=True):
        self.strides = [(s, s) for s in strides]
        self.base_sizes = list(base_sizes) if base_sizes is not None else list(strides)
        self.scales = torch.Tensor(scales)
        self.ratios = torch.Tensor(ratios)
        self.center_offset = center_offset
        self.scale_major = scale_major
        self.base_anchors = [self.base_single(bs) for bs in self.base_sizes]

    def base_single(self, base_size):
        w = h = base_size
        xc, yc = self.center_offset * w, self.center_offset * h
        h_ratios = torch.sqrt(self.ratios)
        w_ratios = 1 / h_ratios
        if self.scale_major:
            ws = (w * w_ratios[:, None] * self.scales[None, :]).view(-1)
            hs = (h * h_ratios[:, None] * self.scales[None, :]).view(-1)
        else:
            ws = (w * self.scales[:, None] * w_ratios[None, :]).view(-1)
            hs = (h * self.scales[:, None] * h_ratios[None, :]).view(-1)
        return torch.stack([xc - 0.5 * ws, yc - 0.5 * hs, xc + 0.5 * ws, yc + 0.5 * hs], -1)

    @staticmethod
    def meshgrid(x, y):
        return x.repeat(y.shape[0]), y.view(-1, 1).repeat(1, x.shape[0]).view(-1)

    def grid(self, featmap_sizes):
        out = []
        for base, (fh, fw), st in zip(self.base_anchors, featmap_sizes, self.strides):
            sx = torch.arange(0, fw) * st[0]
            sy = torch.arange(0, fh) * st[1]
            xx, yy = self.meshgrid(sx, sy)
            shifts = torch.stack([xx, yy, xx, yy], -1).type_as(base)
            out.append((base[None] + shifts[:, None]).view(-1, 4))
        return out

    def valid_flags(self, featmap_sizes, pad_shape):
        out = []
        for i, (fh, fw) in enumerate(featmap_sizes):
            st = self.strides[i]
            h, w = pad_shape
            vh = min(int(np.ceil(h / st[1])), fh)
            vw = min(int(np.ceil(w / st[0])), fw)
            vx = torch.zeros(fw, dtype=torch.bool)
            vy = torch.zeros(fh, dtype=torch.bool)
            vx[:vw] = 1
            vy[:vh] = 1
            xx, yy = self.meshgrid(vx, vy)
            v = xx & yy
            n = self.base_anchors[i].size(0)
            out.append(v[:, None].expand(v.size(0), n).contiguous().view(-1))
        return out


def anchor_inside_flags(anchors, valid, img_shape, allowed_border=0):
    h, w = img_shape
    if allowed_border >= 0:
        return valid & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border) & \
            (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border)
    return valid


RPN_GEN = AnchorGen([4, 8, 16, 32, 64], [0.5, 1.0, 2.0], [8])


def featmap_sizes_for(batch_pad):
    # FPN levels of a batch padded to a multiple of 32: P2..P5 = pad/stride, P6 = ceil(P5 / 2)
    h, w = batch_pad
    sizes = [(h // s, w // s) for s in (4, 8, 16, 32)]
    sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


def gen_anchors():
    t, meta = {}, {"cases": []}
    for i, b in enumerate(RPN_GEN.base_anchors):
        t[f"base.{i}"] = b
    # a second generator: demo-like scales, scale_major False, center offset 0.5, two scales
    gen2 = AnchorGen([8, 16], [0.5, 1.0, 2.0], [2, 3], center_offset=0.5, scale_major=False)
    for i, b in enumerate(gen2.base_anchors):
        t[f"gen2.base.{i}"] = b
    t["gen2.grid.0"] = gen2.grid([(3, 5), (2, 3)])[0]
    t["gen2.grid.1"] = gen2.grid([(3, 5), (2, 3)])[1]
    cases = [
        # (batch pad, [(pad_shape, img_shape) per image])
        ((96, 128), [((96, 128), (90, 120)), ((64, 96), (60, 93))]),
        ((64, 96), [((64, 96), (64, 90)), ((64, 64), (50, 64))]),
    ]
    for c, (batch_pad, imgs) in enumerate(cases):
        fs = featmap_sizes_for(batch_pad)
        grid = RPN_GEN.grid(fs)
        for l, a in enumerate(grid):
            t[f"c{c}.anchors.{l}"] = a
        ims = []
        for j, (pad, img) in enumerate(imgs):
            vf = RPN_GEN.valid_flags(fs, pad)
            for l, v in enumerate(vf):
                t[f"c{c}.img{j}.valid.{l}"] = v
            t[f"c{c}.img{j}.inside"] = anchor_inside_flags(torch.cat(grid), torch.cat(vf), img, 0)
            ims.append({"pad_shape": list(pad), "img_shape": list(img)})
        meta["cases"].append({"featmap_sizes": [list(s) for s in fs], "images": ims})
    meta["gen2"] = {"strides": [8, 16], "ratios": [0.5, 1.0, 2.0], "scales": [2, 3], "center_offset": 0.5,
                    "scale_major": False, "featmap_sizes": [[3, 5], [2, 3]]}
    save("anchors", t, meta)


# ----------------------------------------------------------------------------------------- box coder
def bbox2delta(p, g, means=(0.0,) * 4, stds=(1.0,) * 4):
    p, g = p.float(), g.float()
    px = (p[..., 0] + p[..., 2]) * 0.5
    py = (p[..., 1] + p[..., 3]) * 0.5
    pw = p[..., 2] - p[..., 0]
    ph = p[..., 3] - p[..., 1]
    gx = (g[..., 0] + g[..., 2]) * 0.5
    gy = (g[..., 1] + g[..., 3]) * 0.5
    gw = g[..., 2] - g[..., 0]
    gh = g[..., 3] - g[..., 1]
    d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], -1)
    return d.sub_(d.new_tensor(means).unsqueeze(0)).div_(d.new_tensor(stds).unsqueeze(0))


def delta2bbox(rois, deltas, means=(0.0,) * 4, stds=(1.0,) * 4, max_shape=None, wh_ratio_clip=16 / 1000,
               clip_border=True):
    k = deltas.size(-1) // 4
    means = deltas.new_tensor(means).view(1, -1).repeat(1, k)
    stds = deltas.new_tensor(stds).view(1, -1).repeat(1, k)
    dd = deltas * stds + means
    dx, dy, dw, dh = dd[..., 0::4], dd[..., 1::4], dd[..., 2::4], dd[..., 3::4]
    mr = np.abs(np.log(wh_ratio_clip))
    dw = dw.clamp(min=-mr, max=mr)
    dh = dh.clamp(min=-mr, max=mr)
    x1, y1, x2, y2 = rois[..., 0], rois[..., 1], rois[..., 2], rois[..., 3]
    px = ((x1 + x2) * 0.5).unsqueeze(-1).expand_as(dx)
    py = ((y1 + y2) * 0.5).unsqueeze(-1).expand_as(dy)
    pw = (x2 - x1).unsqueeze(-1).expand_as(dw)
    ph = (y2 - y1).unsqueeze(-1).expand_as(dh)
    gw = pw * dw.exp()
    gh = ph * dh.exp()
    gx = px + pw * dx
    gy = py + ph * dy
    b = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], -1).view(deltas.size())
    if clip_border and max_shape is not None:
        ms = x1.new_tensor(max_shape)[..., :2].type_as(x1)
        min_xy = x1.new_tensor(0)
        max_xy = torch.cat([ms] * (deltas.size(-1) // 2), -1).flip(-1).unsqueeze(-2)
        b = torch.where(b < min_xy, min_xy, b)
        b = torch.where(b > max_xy, max_xy, b)
    return b


STAGE_STDS = [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]


def gen_box_coder():
    g = torch.Generator().manual_seed(2)
    t, meta = {}, {}
    p = rand_boxes(50, 80, 100, min_size=2, g=g)
    gt = rand_boxes(50, 80, 100, min_size=2, g=g)
    t["enc.p"], t["enc.gt"] = p, gt
    t["enc.rpn"] = bbox2delta(p, gt)
    t["enc.stage0"] = bbox2delta(p, gt, (0.0,) * 4, STAGE_STDS[0])
    t["enc.means"] = bbox2delta(p, gt, (0.1, -0.2, 0.05, 0.0), (0.5, 0.5, 1.0, 2.0))
    rois = rand_boxes(60, 80, 100, min_size=0.5, g=g)
    deltas = torch.randn(60, 4, generator=g) * 1.5
    deltas[:5, 2:] = torch.tensor([[6.0, -7.0], [-9.0, 5.0], [4.2, 4.1], [-4.2, -4.0], [30.0, 0.0]])
    t["dec.rois"], t["dec.deltas"] = rois, deltas
    t["dec.noclip"] = delta2bbox(rois, deltas)
    t["dec.clip"] = delta2bbox(rois, deltas, max_shape=(70, 90, 3))
    t["dec.stage2.clip"] = delta2bbox(rois, deltas, (0.0,) * 4, STAGE_STDS[2], max_shape=(70, 90))
    mdel = torch.randn(60, 4 * 5, generator=g)
    t["dec.multi.deltas"] = mdel
    t["dec.multi"] = delta2bbox(rois, mdel, (0.0,) * 4, STAGE_STDS[1], max_shape=(70, 90))
    t["rt.stage1"] = delta2bbox(p, bbox2delta(p, gt, (0.0,) * 4, STAGE_STDS[1]), (0.0,) * 4, STAGE_STDS[1])
    meta["dec.clip.max_shape"] = [70, 90]
    save("box_coder", t, meta)


# ----------------------------------------------------------------------------------------- assigner
class MaxIoUAssigner:
    def __init__(self, pos_iou_thr, neg_iou_thr, min_pos_iou=0.0, gt_max_assign_all=True, ignore_iof_thr=-1,
                 ignore_wrt_candidates=True, match_low_quality=True):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def assign(self, bboxes, gt_bboxes, gt_bboxes_ignore=None, gt_labels=None):
        overlaps = bbox_overlaps(gt_bboxes, bboxes)
        if (self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0
                and bboxes.numel() > 0):
            if self.ignore_wrt_candidates:
                io = bbox_overlaps(bboxes, gt_bboxes_ignore, mode="iof")
                imax, _ = io.max(dim=1)
            else:
                io = bbox_overlaps(gt_bboxes_ignore, bboxes, mode="iof")
                imax, _ = io.max(dim=0)
            overlaps[:, imax > self.ignore_iof_thr] = -1
        return self.assign_wrt_overlaps(overlaps, gt_labels)

    def assign_wrt_overlaps(self, overlaps, gt_labels=None):
        num_gts, num_bboxes = overlaps.size(0), overlaps.size(1)
        gt_inds = overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
        if num_gts == 0 or num_bboxes == 0:
            max_ov = overlaps.new_zeros((num_bboxes,))
            if num_gts == 0:
                gt_inds[:] = 0
            labels = None if gt_labels is None else overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
            return gt_inds, max_ov, labels
        max_ov, argmax = overlaps.max(dim=0)
        gt_max, gt_argmax = overlaps.max(dim=1)
        if isinstance(self.neg_iou_thr, float):
            gt_inds[(max_ov >= 0) & (max_ov < self.neg_iou_thr)] = 0
        else:
            gt_inds[(max_ov >= self.neg_iou_thr[0]) & (max_ov < self.neg_iou_thr[1])] = 0
        pos = max_ov >= self.pos_iou_thr
        gt_inds[pos] = argmax[pos] + 1
        if self.match_low_quality:
            for i in range(num_gts):
                if gt_max[i] >= self.min_pos_iou:
                    if self.gt_max_assign_all:
                        gt_inds[overlaps[i, :] == gt_max[i]] = i + 1
                    else:
                        gt_inds[gt_argmax[i]] = i + 1
        labels = None
        if gt_labels is not None:
            labels = gt_inds.new_full((num_bboxes,), -1)
            pi = torch.nonzero(gt_inds > 0, as_tuple=False).squeeze()
            if pi.numel() > 0:
                labels[pi] = gt_labels[gt_inds[pi] - 1]
        return gt_inds, max_ov, labels


RPN_ASSIGNER = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1)


def rcnn_assigner_cfg(thr):
    return dict(pos_iou_thr=thr, neg_iou_thr=thr, min_pos_iou=thr, match_low_quality=False, ignore_iof_thr=-1)


def gen_assigner():
    g = torch.Generator().manual_seed(3)
    t, meta = {}, {"cases": []}

    def case(name, cfg, bkey, gkey, lkey=None, ikey=None):
        # inputs are stored once under their own names; the case names them in the metadata
        bboxes, gts = t[bkey], t[gkey]
        labels = t[lkey] if lkey else None
        ignore = t[ikey] if ikey else None
        a = MaxIoUAssigner(**cfg)
        gi, mo, lab = a.assign(bboxes, gts, ignore, labels)
        t[f"{name}.gt_inds"], t[f"{name}.max_overlaps"] = gi, mo
        if labels is not None:
            t[f"{name}.assigned_labels"] = lab
        c = dict(cfg)
        c.update(name=name, bboxes=bkey, gts=gkey, labels=lkey, ignore=ikey)
        c["neg_iou_thr"] = list(cfg["neg_iou_thr"]) if isinstance(cfg["neg_iou_thr"], tuple) else cfg["neg_iou_thr"]
        meta["cases"].append(c)

    # RPN-style on anchors with low-quality matches (a small gt has no anchor above 0.7)
    fs = featmap_sizes_for((64, 96))
    t["anchors"] = torch.cat(RPN_GEN.grid(fs))
    t["anchor_gts"] = torch.tensor([[10.0, 12.0, 40.0, 44.0], [50.0, 5.0, 58.0, 13.0], [60.0, 20.0, 95.0, 62.0],
                                    [3.0, 40.0, 20.0, 47.0]])
    t["anchor_labels"] = torch.tensor([3, 1, 0, 7])
    case("rpn", RPN_ASSIGNER, "anchors", "anchor_gts")
    case("rpn_labels", RPN_ASSIGNER, "anchors", "anchor_gts", "anchor_labels")
    case("rpn_argmax", dict(RPN_ASSIGNER, gt_max_assign_all=False), "anchors", "anchor_gts")
    # ties: duplicated proposals, a gt matched equally by several boxes, two identical gts
    props = rand_boxes(40, 64, 96, min_size=4, g=g)
    props[10] = props[11] = props[12] = torch.tensor([20.0, 20.0, 36.0, 36.0])
    props[13] = torch.tensor([21.0, 20.0, 37.0, 36.0])
    t["props"] = props
    t["tg"] = torch.tensor([[20.0, 20.0, 36.0, 36.0], [20.0, 20.0, 36.0, 36.0], [0.0, 0.0, 30.0, 10.0],
                            [5.0, 30.0, 60.0, 60.0]])
    t["tg_labels"] = torch.tensor([2, 5, 1, 0])
    for thr in (0.5, 0.6, 0.7):
        case(f"rcnn{int(thr * 10)}", rcnn_assigner_cfg(thr), "props", "tg", "tg_labels")
    case("ties_lq", dict(RPN_ASSIGNER), "props", "tg", "tg_labels")
    case("ties_lq_argmax", dict(RPN_ASSIGNER, gt_max_assign_all=False), "props", "tg")
    # min_pos_iou 0 with low-quality: a gt with no overlap grabs every zero-IoU box
    t["far_gts"] = torch.cat([t["tg"][:1], torch.tensor([[200.0, 200.0, 210.0, 210.0]])])
    case("minpos0", dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, match_low_quality=True), "props",
         "far_gts")
    # tuple negative range
    case("negrange", dict(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.4), min_pos_iou=0.5, match_low_quality=False),
         "props", "tg")
    # empty gt, empty boxes
    t["no_boxes"], t["no_labels"] = torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long)
    case("empty_gt", rcnn_assigner_cfg(0.5), "props", "no_boxes", "no_labels")
    case("empty_boxes", rcnn_assigner_cfg(0.5), "no_boxes", "tg", "tg_labels")
    # ignore regions (iof of candidates within crowd boxes)
    t["ign"] = torch.tensor([[40.0, 0.0, 96.0, 30.0]])
    case("ignore", dict(rcnn_assigner_cfg(0.5), ignore_iof_thr=0.5), "props", "tg", "tg_labels", "ign")
    case("ignore_wrt_gt", dict(rcnn_assigner_cfg(0.5), ignore_iof_thr=0.5, ignore_wrt_candidates=False), "props",
         "tg", None, "ign")
    save("assigner", t, meta)


# ----------------------------------------------------------------------------------------- sampler (first-k)
class FirstKSampler:
    """RandomSampler with random_choice(gallery, k) = gallery[:k] (the deterministic goldens mode)."""

    def __init__(self, num, pos_fraction, neg_pos_ub=-1, add_gt_as_proposals=True):
        self.num, self.pos_fraction, self.neg_pos_ub, self.add_gt = num, pos_fraction, neg_pos_ub, add_gt_as_proposals

    def sample(self, assign, bboxes, gt_bboxes, gt_labels=None):
        gt_inds, max_ov, labels = assign
        bboxes = bboxes[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.uint8)
        if self.add_gt and len(gt_bboxes) > 0:
            bboxes = torch.cat([gt_bboxes, bboxes], 0)
            gt_inds = torch.cat([torch.arange(1, len(gt_labels) + 1), gt_inds])
            max_ov = torch.cat([max_ov.new_ones(len(gt_labels)), max_ov])
            if labels is not None:
                labels = torch.cat([gt_labels, labels])
            gt_flags = torch.cat([bboxes.new_ones(gt_bboxes.shape[0], dtype=torch.uint8), gt_flags])
        n_pos = int(self.num * self.pos_fraction)
        pos = torch.nonzero(gt_inds > 0, as_tuple=False).view(-1)[:n_pos].unique()
        n_neg = self.num - pos.numel()
        if self.neg_pos_ub >= 0:
            ub = int(self.neg_pos_ub * max(1, pos.numel()))
            n_neg = min(n_neg, ub)
        neg = torch.nonzero(gt_inds == 0, as_tuple=False).view(-1)[:n_neg].unique()
        res = dict(pos_inds=pos, neg_inds=neg, bboxes=bboxes, pos_bboxes=bboxes[pos], neg_bboxes=bboxes[neg],
                   pos_is_gt=gt_flags[pos], pos_assigned_gt_inds=gt_inds[pos] - 1, gt_inds=gt_inds)
        res["pos_gt_bboxes"] = gt_bboxes[res["pos_assigned_gt_inds"], :] if gt_bboxes.numel() > 0 else \
            gt_bboxes.new_zeros((0, 4))
        res["pos_gt_labels"] = labels[pos] if labels is not None else None
        return res


# ----------------------------------------------------------------------------------------- nms
def mmcv_batched_nms(boxes, scores, idxs, iou_threshold, class_agnostic=False, split_thr=10000, max_num=-1):
    """mmcv 1.3.9 batched_nms with nms_op = torchvision nms (offset 0)."""

    def nms_op(b, s, max_num):
        keep = tv_nms(b, s, iou_threshold)
        if max_num > 0:
            keep = keep[:max_num]
        return torch.cat([b[keep], s[keep, None]], 1), keep

    if class_agnostic:
        bfn = boxes
    else:
        mc = boxes.max()
        offsets = idxs.to(boxes) * (mc + torch.tensor(1).to(boxes))
        bfn = boxes + offsets[:, None]
    if bfn.shape[0] < split_thr:
        dets, keep = nms_op(bfn, scores, max_num)  # max_num is still in nms_cfg_ here
        boxes = boxes[keep]
        scores = dets[:, 4]
    else:
        total = scores.new_zeros(scores.size(), dtype=torch.bool)
        after = scores.new_zeros(scores.size())
        for i in torch.unique(idxs):
            mask = (idxs == i).nonzero(as_tuple=False).view(-1)
            dets, keep = nms_op(bfn[mask], scores[mask], -1)  # mmcv pops max_num before the loop
            total[mask[keep]] = True
            after[mask[keep]] = dets[:, -1]
        keep = total.nonzero(as_tuple=False).view(-1)
        scores, inds = after[keep].sort(descending=True, stable=True)
        keep = keep[inds]
        boxes = boxes[keep]
        if max_num > 0:
            keep, boxes, scores = keep[:max_num], boxes[:max_num], scores[:max_num]
    return torch.cat([boxes, scores[:, None]], -1), keep


def gen_nms():
    g = torch.Generator().manual_seed(4)
    t, meta = {}, {"cases": []}
    n = 1200
    boxes = rand_boxes(n, 200, 300, min_size=2, max_size=40, g=g)
    scores = (torch.randint(0, 60, (n,), generator=g).float() / 59).to(f32)  # many exact ties
    boxes[100] = boxes[101]  # identical boxes with tied scores
    scores[100] = scores[101]
    t["boxes"], t["scores"] = boxes, scores
    for thr in (0.3, 0.5, 0.7):
        keep = tv_nms(boxes, scores, thr)
        t[f"nms.{int(thr * 10)}"] = keep
    # stable tie order: torchvision's CPU sort is stable (ties kept in index order)
    order = torch.sort(scores, descending=True, stable=True)[1]
    kept = tv_nms(boxes, scores, 0.5)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(n)
    assert bool((pos[kept][1:] > pos[kept][:-1]).all()), "torchvision nms order is not the stable sort"
    idxs = torch.randint(0, 7, (n,), generator=g)
    t["idxs"] = idxs
    for name, kw in {"bnms": {}, "bnms_split": {"split_thr": 500}, "bnms_agn": {"class_agnostic": True},
                     "bnms_max": {"max_num": 50}, "bnms_split_max": {"split_thr": 500, "max_num": 50}}.items():
        dets, keep = mmcv_batched_nms(boxes, scores, idxs, 0.5, **kw)
        # dets = [boxes[keep], scores[keep]] here (no score rewriting): only keep is stored
        assert torch.equal(dets, torch.cat([boxes[keep], scores[keep, None]], 1))
        t[f"{name}.keep"] = keep
        meta["cases"].append(dict(kw, name=name, iou_threshold=0.5))
    # cross-check against torchvision's own batched_nms (same kept set)
    tv_keep = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    _, mm_keep = mmcv_batched_nms(boxes, scores, idxs, 0.5)
    meta["tv_batched_nms_same_set"] = bool(set(tv_keep.tolist()) == set(mm_keep.tolist()))
    # negative coordinates: max_coordinate below zero changes the offset
    nb = rand_boxes(40, 20, 20, min_size=1, max_size=6, g=g) - 30.0
    ns = torch.rand(40, generator=g)
    ni = torch.randint(0, 3, (40,), generator=g)
    t["neg.boxes"], t["neg.scores"], t["neg.idxs"] = nb, ns, ni
    dets, keep = mmcv_batched_nms(nb, ns, ni, 0.5)
    t["neg.dets"], t["neg.keep"] = dets, keep
    save("nms", t, meta)


# ----------------------------------------------------------------------------------------- proposals
def rpn_get_bboxes_single(cls_scores, bbox_preds, mlvl_anchors, img_shape, nms_pre, max_per_img, iou_thr,
                          min_bbox_size):
    """RPNHead._get_bboxes (mmdet 2.11, batch of one, sigmoid classifier)."""
    level_ids, mscores, mpreds, manchors = [], [], [], []
    for idx in range(len(cls_scores)):
        s = cls_scores[idx][None].permute(0, 2, 3, 1).reshape(1, -1).sigmoid()
        p = bbox_preds[idx][None].permute(0, 2, 3, 1).reshape(1, -1, 4)
        a = mlvl_anchors[idx].expand_as(p)
        if nms_pre > 0 and s.shape[-1] > nms_pre:
            ranked, rank_inds = s.sort(descending=True, stable=True)
            topk = rank_inds[:, :nms_pre]
            s = ranked[:, :nms_pre]
            bi = torch.arange(1).view(-1, 1).expand_as(topk)
            p = p[bi, topk, :]
            a = a[bi, topk, :]
        mscores.append(s)
        mpreds.append(p)
        manchors.append(a)
        level_ids.append(s.new_full((1, s.size(1)), idx, dtype=torch.long))
    scores = torch.cat(mscores, 1)[0]
    props = delta2bbox(torch.cat(manchors, 1), torch.cat(mpreds, 1), max_shape=[img_shape])[0]
    ids = torch.cat(level_ids, 1)[0]
    if min_bbox_size > 0:
        w = props[:, 2] - props[:, 0]
        h = props[:, 3] - props[:, 1]
        valid = torch.nonzero((w >= min_bbox_size) & (h >= min_bbox_size), as_tuple=False).squeeze()
        if valid.sum().item() != len(props):
            props, scores, ids = props[valid, :], scores[valid], ids[valid]
    dets, _ = mmcv_batched_nms(props, scores, ids, iou_thr)
    return dets[:max_per_img]


def gen_proposals():
    g = torch.Generator().manual_seed(5)
    t, meta = {}, {"cases": []}
    fs = featmap_sizes_for((128, 160))
    anchors = RPN_GEN.grid(fs)
    for l, (h, w) in enumerate(fs):
        t[f"scores.{l}"] = torch.randn(3, h, w, generator=g) * 2
        d = torch.randn(12, h, w, generator=g) * 0.3
        d[2::4][:, :1, :2] = 6.0  # a few clamped dw
        t[f"deltas.{l}"] = d
    cases = [("a", dict(nms_pre=500, max_per_img=300, iou_thr=0.7, min_bbox_size=0.0), (120, 150)),
             ("b", dict(nms_pre=1000, max_per_img=400, iou_thr=0.7, min_bbox_size=0.0), (128, 160)),
             ("c", dict(nms_pre=200, max_per_img=150, iou_thr=0.5, min_bbox_size=12.0), (120, 150))]
    for name, cfg, img in cases:
        dets = rpn_get_bboxes_single([t[f"scores.{l}"] for l in range(5)], [t[f"deltas.{l}"] for l in range(5)],
                                     anchors, img, **cfg)
        t[f"{name}.dets"] = dets
        meta["cases"].append(dict(cfg, name=name, img_shape=list(img)))
    meta["featmap_sizes"] = [list(s) for s in fs]
    save("proposals", t, meta)


# ----------------------------------------------------------------------------------------- targets
def unmap(data, count, inds, fill=0):
    if data.dim() == 1:
        ret = data.new_full((count,), fill)
        ret[inds.type(torch.bool)] = data
    else:
        ret = data.new_full((count,) + data.size()[1:], fill)
        ret[inds.type(torch.bool), :] = data
    return ret


def rpn_targets_single(flat_anchors, valid, gt_bboxes, img_shape):
    inside = anchor_inside_flags(flat_anchors, valid, img_shape, 0)
    anchors = flat_anchors[inside, :]
    assign = MaxIoUAssigner(**RPN_ASSIGNER).assign(anchors, gt_bboxes, None, None)
    sr = FirstKSampler(256, 0.5, -1, False).sample(assign, anchors, gt_bboxes)
    n = anchors.shape[0]
    bt = torch.zeros_like(anchors)
    bw = torch.zeros_like(anchors)
    labels = anchors.new_full((n,), 1, dtype=torch.long)  # num_classes = 1 for RPN
    lw = anchors.new_zeros(n, dtype=torch.float)
    pos, neg = sr["pos_inds"], sr["neg_inds"]
    if len(pos) > 0:
        bt[pos, :] = bbox2delta(sr["pos_bboxes"], sr["pos_gt_bboxes"])
        bw[pos, :] = 1.0
        labels[pos] = 0
        lw[pos] = 1.0
    if len(neg) > 0:
        lw[neg] = 1.0
    total = flat_anchors.size(0)
    return (unmap(labels, total, inside, 1), unmap(lw, total, inside), unmap(bt, total, inside),
            unmap(bw, total, inside), pos.numel(), neg.numel(), inside)


def bbox_head_targets(sr, num_classes, reg_decoded_bbox, stds):
    num_pos, num_neg = sr["pos_bboxes"].size(0), sr["neg_bboxes"].size(0)
    ns = num_pos + num_neg
    labels = sr["pos_bboxes"].new_full((ns,), num_classes, dtype=torch.long)
    lw = sr["pos_bboxes"].new_zeros(ns)
    bt = sr["pos_bboxes"].new_zeros(ns, 4)
    bw = sr["pos_bboxes"].new_zeros(ns, 4)
    if num_pos > 0:
        labels[:num_pos] = sr["pos_gt_labels"]
        lw[:num_pos] = 1.0
        bt[:num_pos, :] = sr["pos_gt_bboxes"] if reg_decoded_bbox else \
            bbox2delta(sr["pos_bboxes"], sr["pos_gt_bboxes"], (0.0,) * 4, stds)
        bw[:num_pos, :] = 1
    if num_neg > 0:
        lw[-num_neg:] = 1.0
    return labels, lw, bt, bw


def regress_by_class(rois, label, bbox_pred, img_shape, stds):
    label = label * 4
    inds = torch.stack((label, label + 1, label + 2, label + 3), 1)
    bbox_pred = torch.gather(bbox_pred, 1, inds)
    return delta2bbox(rois, bbox_pred, (0.0,) * 4, stds, max_shape=img_shape)


def refine_bboxes(rois, labels, bbox_preds, pos_is_gts, img_shapes, stds):
    out = []
    for i in range(len(img_shapes)):
        inds = torch.nonzero(rois[:, 0] == i, as_tuple=False).squeeze(dim=1)
        b = regress_by_class(rois[inds, 1:], labels[inds], bbox_preds[inds], img_shapes[i], stds)
        keep = pos_is_gts[i].new_ones(inds.numel())
        keep[:len(pos_is_gts[i])] = 1 - pos_is_gts[i]
        out.append(b[keep.type(torch.bool)])
    return out


def gen_targets():
    g = torch.Generator().manual_seed(6)
    t, meta = {}, {}
    # RPN targets: one batch of two images (padded 64x96)
    fs = featmap_sizes_for((64, 96))
    grid = torch.cat(RPN_GEN.grid(fs))
    imgs = [((64, 96), (60, 90)), ((64, 64), (60, 63))]
    gts = [torch.tensor([[10.0, 12.0, 40.0, 44.0], [50.0, 5.0, 58.0, 13.0], [60.0, 20.0, 88.0, 60.0],
                         [3.0, 40.0, 20.0, 47.0], [30.0, 30.0, 70.0, 58.0]]),
           torch.tensor([[5.0, 5.0, 50.0, 30.0], [40.0, 35.0, 62.0, 58.0]])]
    num_pos = num_neg = 0
    meta["rpn"] = {"featmap_sizes": [list(s) for s in fs], "images": []}
    for j, ((pad, img), gt) in enumerate(zip(imgs, gts)):
        valid = torch.cat(RPN_GEN.valid_flags(fs, pad))
        lab, lw, bt, bw, npos, nneg, inside = rpn_targets_single(grid, valid, gt, img)
        t[f"rpn{j}.gts"] = gt
        t[f"rpn{j}.labels"], t[f"rpn{j}.label_weights"] = lab, lw
        assert bool(((bw == 0) | (bw == 1)).all())
        t[f"rpn{j}.bbox_targets"], t[f"rpn{j}.bbox_weights"] = bt, bw.to(torch.uint8)  # 0/1, stored as u8
        meta["rpn"]["images"].append({"pad_shape": list(pad), "img_shape": list(img), "num_pos": npos,
                                      "num_neg": nneg})
        num_pos += max(npos, 1)
        num_neg += max(nneg, 1)
    meta["rpn"]["num_total_samples"] = num_pos + num_neg

    # RoI targets + refine for a stage, two images, add gt as proposals, 512/0.25 (first-k)
    num_classes = 3
    img_shapes = [(90, 120), (70, 100)]
    gts = [torch.tensor([[10.0, 12.0, 40.0, 44.0], [50.0, 5.0, 58.0, 13.0], [60.0, 20.0, 110.0, 80.0]]),
           torch.tensor([[5.0, 5.0, 50.0, 30.0], [40.0, 35.0, 90.0, 58.0]])]
    glabels = [torch.tensor([2, 0, 1]), torch.tensor([1, 1])]
    srs = []
    meta["roi"] = {"num_classes": num_classes, "img_shapes": [list(s) for s in img_shapes], "images": []}
    for j in range(2):
        h, w = img_shapes[j]
        # proposals: jittered copies of the gts (positives) plus random boxes (negatives)
        jit = gts[j].repeat(40, 1) + torch.randn(40 * len(gts[j]), 4, generator=g) * 4
        props = torch.cat([jit, rand_boxes(700, h, w, min_size=3, g=g)])
        props = torch.cat([torch.min(props[:, :2], props[:, 2:]), torch.max(props[:, :2], props[:, 2:]) + 0.5], 1)
        assign = MaxIoUAssigner(**rcnn_assigner_cfg(0.5)).assign(props, gts[j], None, glabels[j])
        sampler = FirstKSampler(256 if j == 0 else 64, 0.25, -1, True)
        sr = sampler.sample(assign, props, gts[j], glabels[j])
        srs.append(sr)
        t[f"roi{j}.props"], t[f"roi{j}.gts"], t[f"roi{j}.gt_labels"] = props, gts[j], glabels[j]
        t[f"roi{j}.pos_inds"], t[f"roi{j}.neg_inds"] = sr["pos_inds"], sr["neg_inds"]
        t[f"roi{j}.pos_is_gt"] = sr["pos_is_gt"]
        t[f"roi{j}.pos_assigned_gt_inds"] = sr["pos_assigned_gt_inds"]
        for dec in (True, False):
            lab, lw, bt, bw = bbox_head_targets(sr, num_classes, dec, STAGE_STDS[0])
            k = "dec" if dec else "enc"
            t[f"roi{j}.{k}.labels"], t[f"roi{j}.{k}.label_weights"] = lab, lw
            t[f"roi{j}.{k}.bbox_targets"], t[f"roi{j}.{k}.bbox_weights"] = bt, bw.to(torch.uint8)
        meta["roi"]["images"].append({"num": sampler.num})
    # refine: rois = bbox2roi(sampled boxes), labels from the targets with negatives -> argmax fg logits
    rois = torch.cat([torch.cat([torch.full((sr["pos_bboxes"].size(0) + sr["neg_bboxes"].size(0), 1), float(j)),
                                 torch.cat([sr["pos_bboxes"], sr["neg_bboxes"]])], 1) for j, sr in enumerate(srs)])
    labels = torch.cat([bbox_head_targets(sr, num_classes, True, STAGE_STDS[0])[0] for sr in srs])
    cls_score = torch.randn(rois.size(0), num_classes + 1, generator=g)
    cls_score[0, 1] = cls_score[0, 2] = 10.0  # argmax tie (first wins), irrelevant if roi 0 positive
    negs = torch.nonzero(labels == num_classes).view(-1)
    cls_score[negs[0], :2] = 9.0  # a tie on a negative
    bbox_pred = torch.randn(rois.size(0), 4 * num_classes, generator=g)
    roi_labels = torch.where(labels == num_classes, cls_score[:, :-1].argmax(1), labels)
    refined = refine_bboxes(rois, roi_labels, bbox_pred, [sr["pos_is_gt"] for sr in srs], img_shapes, STAGE_STDS[0])
    t["refine.rois"], t["refine.cls_score"], t["refine.bbox_pred"] = rois, cls_score, bbox_pred
    t["refine.roi_labels"] = roi_labels
    for j, r in enumerate(refined):
        t[f"refine.out{j}"] = r
    save("targets", t, meta)


# ----------------------------------------------------------------------------------------- postprocess
def multiclass_nms(multi_bboxes, multi_scores, score_thr, iou_thr, max_num=-1):
    num_classes = multi_scores.size(1) - 1
    if multi_bboxes.shape[1] > 4:
        bboxes = multi_bboxes.view(multi_scores.size(0), -1, 4)
    else:
        bboxes = multi_bboxes[:, None].expand(multi_scores.size(0), num_classes, 4)
    scores = multi_scores[:, :-1]
    labels = torch.arange(num_classes, dtype=torch.long).view(1, -1).expand_as(scores)
    bboxes, scores, labels = bboxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    inds = (scores > score_thr).nonzero(as_tuple=False).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    if bboxes.numel() == 0:
        return bboxes.new_zeros((0, 5)), labels
    dets, keep = mmcv_batched_nms(bboxes, scores, labels, iou_thr)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return dets, labels[keep]


def bbox_head_get_bboxes(rois, cls_score, bbox_pred, img_shape, scale_factor, stds, rescale=True):
    scores = F.softmax(cls_score, dim=-1)
    bboxes = delta2bbox(rois[:, 1:], bbox_pred, (0.0,) * 4, stds, max_shape=img_shape)
    if rescale and bboxes.size(0) > 0:
        sf = bboxes.new_tensor(scale_factor)
        bboxes = (bboxes.view(bboxes.size(0), -1, 4) / sf).view(bboxes.size()[0], -1)
    return multiclass_nms(bboxes, scores, 0.05, 0.5, 100)


def do_paste_mask(masks, boxes, img_h, img_w):
    """_do_paste_mask with skip_empty=False (the GPU path that official testing takes)."""
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    n = masks.shape[0]
    img_y = torch.arange(0, img_h, dtype=torch.float32) + 0.5
    img_x = torch.arange(0, img_w, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    img_x[torch.isinf(img_x)] = 0
    img_y[torch.isinf(img_y)] = 0
    gx = img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks.to(torch.float32), grid, align_corners=False)[:, 0]


def mask_target_single(pos_proposals, pos_assigned_gt_inds, gt_masks, mask_size):
    maxh, maxw = gt_masks.shape[1:]
    p = pos_proposals.clone().numpy()
    p[:, [0, 2]] = np.clip(p[:, [0, 2]], 0, maxw)
    p[:, [1, 3]] = np.clip(p[:, [1, 3]], 0, maxh)
    p = torch.from_numpy(p)
    rois = torch.cat([torch.arange(p.shape[0]).to(p.dtype)[:, None], p], 1)
    m = gt_masks.index_select(0, pos_assigned_gt_inds).to(rois.dtype)
    targets = tv_roi_align(m[:, None], rois, (mask_size, mask_size), 1.0, 0, True).squeeze(1)
    return targets >= 0.5, targets


def gen_postprocess():
    g = torch.Generator().manual_seed(7)
    t, meta = {}, {}
    # cascade test: 3 stages' logits averaged, softmax, last-stage class-specific decode, rescale, NMS
    C, N = 5, 300
    img_shape, sf = (120, 160), (1.6, 1.5, 1.6, 1.5)
    rois = torch.cat([torch.zeros(N, 1), rand_boxes(N, 120, 160, min_size=4, max_size=60, g=g)], 1)
    logits = [torch.randn(N, C + 1, generator=g) * 2 for _ in range(3)]
    avg = sum(logits) / 3.0
    bbox_pred = torch.randn(N, 4 * C, generator=g)
    dets, labels = bbox_head_get_bboxes(rois, avg, bbox_pred, img_shape, sf, STAGE_STDS[2])
    t["cas.rois"], t["cas.bbox_pred"] = rois, bbox_pred
    for i, lg in enumerate(logits):
        t[f"cas.logits{i}"] = lg
    t["cas.dets"], t["cas.labels"] = dets, labels
    meta["cas"] = {"num_classes": C, "img_shape": list(img_shape), "scale_factor": list(sf)}
    # raw multiclass_nms with tied scores and class-agnostic boxes
    mb = rand_boxes(80, 50, 50, min_size=4, max_size=20, g=g)
    ms = torch.randint(0, 10, (80, 4), generator=g).float() / 10
    dets, labels = multiclass_nms(mb, ms, 0.05, 0.5, 40)
    t["mc.boxes"], t["mc.scores"], t["mc.dets"], t["mc.labels"] = mb, ms, dets, labels
    mb2 = torch.cat([mb, mb + 1.0, mb * 1.1], 1)
    dets, labels = multiclass_nms(mb2, ms, 0.25, 0.3, -1)
    t["mc2.boxes"], t["mc2.dets"], t["mc2.labels"] = mb2, dets, labels
    # mask paste (masks of the final boxes, rescaled boxes as get_seg_masks sees them)
    ori_h, ori_w = 40, 56
    pb = rand_boxes(12, ori_h, ori_w, min_size=1, max_size=40, g=g)
    pb[0] = torch.tensor([-5.0, -3.0, 20.0, 15.0])  # partly outside
    pb[1] = torch.tensor([40.0, 30.0, 65.0, 50.0])  # partly outside
    pb[2] = torch.tensor([10.2, 10.7, 10.9, 11.1])  # tiny
    pb[3] = torch.tensor([5.0, 5.0, 5.0, 20.0])  # zero width -> inf handling
    pb[4] = torch.tensor([-1.0, 0.0, 56.0, 40.0])  # whole image (box wider than 56 px)
    pm = torch.rand(12, 1, 28, 28, generator=g)
    pm[5] = 0.5  # exact threshold
    t["paste.boxes"], t["paste.masks"] = pb, pm[:, 0]
    prob = do_paste_mask(pm, pb, ori_h, ori_w)
    t["paste.prob"], t["paste.bin"] = prob[:5], prob >= 0.5  # probabilities of the first five masks only
    meta["paste"] = {"img_h": ori_h, "img_w": ori_w, "threshold": 0.5}
    # mask targets: GT bitmaps (padded image size), positive proposals, some outside the image
    mh, mw = 64, 80
    yy, xx = torch.meshgrid(torch.arange(mh, dtype=f32), torch.arange(mw, dtype=f32), indexing="ij")
    ellipses = [(20, 30, 12, 18), (45, 55, 10, 20), (30, 10, 25, 8)]
    gm = torch.stack([(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).to(torch.uint8)
                      for cy, cx, ry, rx in ellipses])
    gm[0, 5:15, 40:60] = 1
    props = rand_boxes(20, mh, mw, min_size=2, max_size=50, g=g)
    props[0] = torch.tensor([-10.0, -5.0, 30.0, 40.0])
    props[1] = torch.tensor([60.0, 50.0, 100.0, 90.0])
    props[2] = torch.tensor([12.0, 10.0, 40.0, 38.0])  # 28 px: samples on exact pixel centres
    props[3] = torch.tensor([20.0, 20.0, 20.5, 20.25])  # tiny
    gti = torch.randint(0, 3, (20,), generator=g)
    binm, _ = mask_target_single(props, gti, gm, 28)
    t["mt.gt_masks"], t["mt.props"], t["mt.gt_inds"] = gm, props, gti
    t["mt.targets"] = binm
    meta["mt"] = {"mask_size": 28}
    save("postprocess", t, meta)


# ----------------------------------------------------------------------------------------- roi_align
def map_roi_levels(rois, num_levels, finest_scale):
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    lv = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return lv.clamp(min=0, max=num_levels - 1).long()


def single_roi_extractor(feats, rois, out_size, strides, finest_scale):
    n = len(feats)
    out = feats[0].new_zeros(rois.size(0), feats[0].size(1), out_size, out_size)
    lv = map_roi_levels(rois, n, finest_scale)
    for i in range(n):
        inds = (lv == i).nonzero(as_tuple=False).squeeze(1)
        if inds.numel() > 0:
            out[inds] = tv_roi_align(feats[i], rois[inds], (out_size, out_size), 1.0 / strides[i], 0, True)
        else:
            out = out + feats[i].sum() * 0.0
    return out, lv


def gen_roi_align():
    g = torch.Generator().manual_seed(8)
    t, meta = {}, {}
    # level mapping (official finest_scale 56), with boundary scales
    lr = torch.cat([torch.zeros(300, 1), rand_boxes(300, 800, 1200, min_size=1, max_size=700, g=g)], 1)
    for k, s in enumerate([56.0, 112.0, 224.0, 448.0, 111.99, 0.0, 900.0]):
        lr[k, 1:] = torch.tensor([10.0, 10.0, 10.0 + s, 10.0 + s])
    t["lvl.rois"], t["lvl.levels"] = lr, map_roi_levels(lr, 4, 56.0)
    # multi-level extractor, two images of 128x160 (strides 4..32), C = 3, demo finest scale 14
    strides = [4, 8, 16, 32]
    C, B = 3, 2
    feats = [torch.randn(B, C, 128 // s, 160 // s, generator=g).requires_grad_() for s in strides]
    rois = []
    for b in range(B):
        r = rand_boxes(24, 128, 160, min_size=0.2, max_size=150, g=g)
        rois.append(torch.cat([torch.full((24, 1), float(b)), r], 1))
    rois = torch.cat(rois)
    rois[0, 1:] = torch.tensor([-20.0, -10.0, 30.0, 25.0])  # partly outside (top-left)
    rois[1, 1:] = torch.tensor([140.0, 100.0, 190.0, 150.0])  # partly outside (bottom-right)
    rois[2, 1:] = torch.tensor([50.0, 60.0, 50.4, 60.3])  # tiny
    rois[3, 1:] = torch.tensor([20.0, 20.0, 20.0, 20.0])  # zero size
    rois[4, 1:] = torch.tensor([-300.0, -300.0, -200.0, -250.0])  # entirely outside
    rois[5, 1:] = torch.tensor([0.0, 0.0, 160.0, 128.0])  # whole image
    rois[30, 1:] = torch.tensor([-3.0, 100.0, 70.0, 131.0])
    t["ex.rois"] = rois
    for l, f in enumerate(feats):
        t[f"ex.feat.{l}"] = f.detach()
    for out_size, n in ((7, rois.size(0)), (14, 10)):
        r = rois[:n]
        out, lv = single_roi_extractor(feats, r, out_size, strides, 14.0)
        gout = torch.randn(out.shape, generator=g)
        grads = torch.autograd.grad((out * gout).sum(), feats)
        t[f"ex{out_size}.out"], t[f"ex{out_size}.gout"] = out.detach(), gout
        for l, gr in enumerate(grads):
            t[f"ex{out_size}.grad.{l}"] = gr
        t[f"ex{out_size}.levels"] = lv
    # single level, sampling_ratio 2 and aligned False variants (host kernel generality)
    f0 = feats[1].detach()
    t["sr2.out"] = tv_roi_align(f0, rois, (5, 4), 1.0 / 8, 2, True)
    t["unaligned.out"] = tv_roi_align(f0, rois, (3, 3), 1.0 / 8, 0, False)
    meta["ex"] = {"strides": strides, "finest_scale": 14.0, "channels": C, "batch": B}
    save("roi_align", t, meta)


if __name__ == "__main__":
    print("torch", torch.__version__, "torchvision", torchvision.__version__)
    gen_structures()
    gen_anchors()
    gen_box_coder()
    gen_assigner()
    gen_nms()
    gen_proposals()
    gen_targets()
    gen_postprocess()
    gen_roi_align()
    total = sum(p.stat().st_size for p in OUT.glob("*.safetensors"))
    print(f"total {total} bytes")
