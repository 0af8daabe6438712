"""Goldens for the networks of tasks/detection: FPN, RPN head and losses, box heads (Shared2FC,
4conv1fc + BN) with their losses, FCN mask head and loss, and the Cascade R-CNN stage loop (training
losses with refine + gt removal, and the test path with logit and mask averaging), forward and
backward with fixed weights.

    /opt/refvenv/bin/python tests/reference/detection_model_reference.py
writes tasks/detection/tests/goldens/model_*.safetensors: inputs, weights under mmdet 2.11 state-dict
names, outputs and gradients (the case configuration is JSON in the metadata under "meta").

Everything here is a torch transcription, written for this project, of what mmdet 2.11.0 (the fork
iBOT uses: SwinTransformer/Swin-Transformer-Object-Detection c7b20110) computes in
  mmdet/models/necks/fpn.py (FPN, add_extra_convs=False, nearest top-down with size=)
  mmdet/models/dense_heads/{rpn_head,anchor_head}.py (RPNHead, loss_single with num_total_samples)
  mmdet/models/losses/{cross_entropy_loss,smooth_l1_loss,iou_loss,utils}.py
  mmdet/models/roi_heads/bbox_heads/{bbox_head,convfc_bbox_head}.py (Shared2FC, ConvFC 4conv1fc + BN)
  mmdet/models/roi_heads/mask_heads/fcn_mask_head.py (FCNMaskHead, mask_cross_entropy)
  mmdet/models/roi_heads/cascade_roi_head.py (forward_train, simple_test, merge_aug_masks)
The host-side pieces (assigner, first-k sampler, coder, targets, refine, RoI extractor with the real
torchvision roi_align, multiclass NMS, mask targets and paste) are imported from detection_reference.py.
Weights are random (not mmdet's init) so that every path carries a signal.
"""
import json
import pathlib
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import detection_reference as R  # noqa: E402

OUT = R.OUT
torch.manual_seed(0)


def save(name, tensors, meta):
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        if v.dtype == torch.bool:
            v = v.to(torch.uint8)
        elif v.dtype == torch.int64:
            v = v.to(torch.int32)
        out[k] = v
    path = OUT / f"model_{name}.safetensors"
    save_file(out, str(path), metadata={"meta": json.dumps(meta)})
    print(f"model_{name}: {len(out)} tensors, {path.stat().st_size} bytes")


def randomize(module, g, std=0.2):
    for _, p in sorted(module.named_parameters()):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def weights(module, prefix):
    return {f"{prefix}{k}": v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def grads(module, prefix):
    return {f"grad.{prefix}{k}": p.grad for k, p in module.named_parameters()}


class CM(nn.Module):
    """mmcv ConvModule: conv (bias only without norm) → optional BN → optional ReLU."""

    def __init__(self, cin, cout, k, norm=False, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        self.norm, self.act = norm, act

    def forward(self, x):
        x = self.conv(x)
        if self.norm:
            x = self.bn(x)
        return F.relu(x) if self.act else x


# ----------------------------------------------------------------------------------------- FPN
class FPN(nn.Module):
    def __init__(self, in_channels, out_channels, num_outs):
        super().__init__()
        self.lateral_convs = nn.ModuleList([CM(c, out_channels, 1, act=False) for c in in_channels])
        self.fpn_convs = nn.ModuleList([CM(out_channels, out_channels, 3, act=False) for _ in in_channels])
        self.num_outs = num_outs

    def forward(self, inputs):
        laterals = [c(x) for c, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            prev_shape = laterals[i - 1].shape[2:]
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=prev_shape, mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


def gen_fpn():
    g = torch.Generator().manual_seed(11)
    t = {}
    # P5 is 2x3, so the top-down nearest (3 → 5 columns) is not an exact doubling and P6 is 1x2
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3)]
    cin, cout = 6, 8
    fpn = FPN([cin] * 4, cout, 5)
    randomize(fpn, g)
    xs = [torch.randn(2, cin, h, w, generator=g).requires_grad_() for h, w in sizes]
    outs = fpn(xs)
    rs = [torch.randn(o.shape, generator=g) for o in outs]
    loss = sum((o * r).sum() for o, r in zip(outs, rs))
    loss.backward()
    for i, (x, o, r) in enumerate(zip(xs, outs, rs)):
        t[f"in{i}"], t[f"grad.in{i}"] = x, x.grad
    for i, (o, r) in enumerate(zip(outs, rs)):
        t[f"out{i}"], t[f"r{i}"] = o, r
    t.update(weights(fpn, "neck."))
    t.update(grads(fpn, "neck."))
    save("fpn", t, {"in_channels": cin, "out_channels": cout, "num_outs": 5})


# ----------------------------------------------------------------------------------------- RPN
class RPNHead(nn.Module):
    def __init__(self, cin, feat, a):
        super().__init__()
        self.rpn_conv = nn.Conv2d(cin, feat, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat, a, 1)
        self.rpn_reg = nn.Conv2d(feat, 4 * a, 1)

    def forward(self, feats):
        out = []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            out.append((self.rpn_cls(x), self.rpn_reg(x)))
        return out


def weight_reduce(loss, weight, avg_factor):
    return (loss * weight).sum() / avg_factor


def smooth_l1(pred, target, beta):
    diff = torch.abs(pred - target)
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def rpn_loss(outs, labels, label_weights, bbox_targets, bbox_weights, num_total_samples, reg):
    """AnchorHead.loss for the RPN: per level loss_single, summed over levels (as _parse_losses does)."""
    b = labels.shape[0]
    sizes = [c.shape[2] * c.shape[3] * c.shape[1] for c, _ in outs]
    start, lc, lb = 0, 0.0, 0.0
    for (cls, bp), n in zip(outs, sizes):
        lab = labels[:, start:start + n].reshape(-1)
        lw = label_weights[:, start:start + n].reshape(-1)
        bt = bbox_targets[:, start:start + n].reshape(-1, 4)
        bw = bbox_weights[:, start:start + n].reshape(-1, 4)
        start += n
        score = cls.permute(0, 2, 3, 1).reshape(-1, 1)
        # _expand_onehot_labels: label 0 (the one class) → 1, background (1) → 0
        onehot = torch.zeros_like(score)
        onehot[lab == 0, 0] = 1
        l = F.binary_cross_entropy_with_logits(score, onehot, reduction="none")
        lc = lc + weight_reduce(l, lw.view(-1, 1), num_total_samples)
        pred = bp.permute(0, 2, 3, 1).reshape(-1, 4)
        e = smooth_l1(pred, bt, reg[1]) if reg[0] == "smooth_l1" else torch.abs(pred - bt)
        lb = lb + weight_reduce(e, bw, num_total_samples)
    return lc, lb


def gen_rpn():
    g = torch.Generator().manual_seed(12)
    t = {}
    cin, feat, a = 8, 8, 3
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    head = RPNHead(cin, feat, a)
    randomize(head, g)
    xs = [torch.randn(2, cin, h, w, generator=g).requires_grad_() for h, w in sizes]
    outs = head(xs)
    n = sum(h * w * a for h, w in sizes)
    labels = torch.ones(2, n, dtype=torch.long)
    label_weights = torch.zeros(2, n)
    bbox_targets = torch.zeros(2, n, 4)
    bbox_weights = torch.zeros(2, n, 4)
    totals = 0
    for b, (npos, nneg) in enumerate([(7, 40), (0, 25)]):
        perm = torch.randperm(n, generator=g)
        pos, neg = perm[:npos], perm[npos:npos + nneg]
        labels[b, pos] = 0
        label_weights[b, pos] = 1.0
        label_weights[b, neg] = 1.0
        bbox_targets[b, pos] = torch.randn(npos, 4, generator=g) * 0.3
        bbox_weights[b, pos] = 1.0
        totals += max(npos, 1) + max(nneg, 1)
    lc, lb = rpn_loss(outs, labels, label_weights, bbox_targets, bbox_weights, totals, ("smooth_l1", 1.0 / 9.0))
    _, lb_l1 = rpn_loss(outs, labels, label_weights, bbox_targets, bbox_weights, totals, ("l1",))
    (lc + lb).backward()
    for i, x in enumerate(xs):
        t[f"in{i}"], t[f"grad.in{i}"] = x, x.grad
    for i, (c, r) in enumerate(outs):
        t[f"cls{i}"], t[f"reg{i}"] = c, r
    t.update(labels=labels, label_weights=label_weights, bbox_targets=bbox_targets, bbox_weights=bbox_weights)
    t["loss_cls"], t["loss_bbox_smooth_l1"], t["loss_bbox_l1"] = lc, lb, lb_l1
    t.update(weights(head, "rpn_head."))
    t.update(grads(head, "rpn_head."))
    save("rpn", t, {"in_channels": cin, "feat_channels": feat, "num_anchors": a, "num_total_samples": totals,
                    "beta": 1.0 / 9.0})


# ----------------------------------------------------------------------------------------- box heads
class ConvFCBBoxHead(nn.Module):
    def __init__(self, num_convs, num_fcs, cin, conv_out, fc_out, roi, k, agnostic=False):
        super().__init__()
        self.shared_convs = nn.ModuleList(
            [CM(cin if i == 0 else conv_out, conv_out, 3, norm=True) for i in range(num_convs)])
        last = (conv_out if num_convs else cin) * roi * roi
        self.shared_fcs = nn.ModuleList([nn.Linear(last if i == 0 else fc_out, fc_out) for i in range(num_fcs)])
        self.fc_cls = nn.Linear(fc_out, k + 1)
        self.fc_reg = nn.Linear(fc_out, 4 if agnostic else 4 * k)

    def forward(self, x):
        for c in self.shared_convs:
            x = c(x)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


def bbox_loss(cls, reg, rois, labels, label_weights, bbox_targets, bbox_weights, k, loss, stds):
    """BBoxHead.loss (class-specific): CE / max(#weights > 0, 1), loss_bbox on positives / #RoIs."""
    avg = max(float((label_weights > 0).sum()), 1.0)
    loss_cls = weight_reduce(F.cross_entropy(cls, labels, reduction="none"), label_weights, avg)
    pos = (labels >= 0) & (labels < k)
    if not pos.any():
        return loss_cls, reg[pos].sum()
    pred = reg
    if loss[0] == "giou":
        pred = R.delta2bbox(rois[:, 1:], reg, (0.0,) * 4, stds, max_shape=None)
    pos_pred = pred.view(pred.size(0), -1, 4)[pos, labels[pos]]
    n = bbox_targets.size(0)
    if loss[0] == "giou":
        gious = R.bbox_overlaps(pos_pred, bbox_targets[pos], mode="giou", is_aligned=True, eps=1e-6)
        w = bbox_weights[pos].mean(-1)
        return loss_cls, loss[1] * weight_reduce(1 - gious, w, n)
    e = torch.abs(pos_pred - bbox_targets[pos])
    return loss_cls, loss[1] * weight_reduce(e, bbox_weights[pos], n)


def gen_box_head():
    g = torch.Generator().manual_seed(13)
    t, meta = {}, {}
    k, cin, roi, r = 3, 8, 7, 10
    feats = torch.randn(r, cin, roi, roi, generator=g)
    t["feats"] = feats
    rois = R.rand_boxes(r, 64, 64, min_size=6, max_size=30, g=g)
    t["rois"] = torch.cat([torch.zeros(r, 1), rois], 1)
    labels = torch.tensor([2, 0, 1, 2, 3, 3, 3, 3, 3, 3])
    t["labels"] = labels
    pos = labels < k
    # GIoU targets: gt boxes around the positive RoIs; L1 targets: deltas
    gt = rois + torch.randn(r, 4, generator=g) * 3
    gt = torch.stack([torch.min(gt[:, 0], gt[:, 2] - 2), torch.min(gt[:, 1], gt[:, 3] - 2), gt[:, 2], gt[:, 3]], 1)
    t["gt_boxes"] = torch.where(pos[:, None], gt, torch.zeros_like(gt))
    t["deltas"] = torch.where(pos[:, None], torch.randn(r, 4, generator=g) * 0.5, torch.zeros(r, 4))
    bw = pos[:, None].float().expand(r, 4).contiguous()
    lw = torch.ones(r)
    cases = {
        "shared2fc": dict(convs=0, fcs=2, loss=("l1", 1.0), target="deltas", stds=(0.1, 0.1, 0.2, 0.2)),
        "conv4fc1": dict(convs=4, fcs=1, loss=("giou", 10.0), target="gt_boxes", stds=(0.05, 0.05, 0.1, 0.1)),
    }
    for name, c in cases.items():
        head = ConvFCBBoxHead(c["convs"], c["fcs"], cin, 8, 16, roi, k)
        randomize(head, g)
        with torch.no_grad():  # keep the deltas moderate so the decoded boxes stay boxes
            head.fc_reg.weight.mul_(0.25)
        x = feats.clone().requires_grad_()
        head.train()
        cls, reg = head(x)
        lc, lb = bbox_loss(cls, reg, t["rois"], labels, lw, t[c["target"]], bw, k, c["loss"], c["stds"])
        (lc + lb).backward()
        p = f"{name}."
        t[p + "cls"], t[p + "reg"], t[p + "loss_cls"], t[p + "loss_bbox"] = cls, reg, lc, lb
        t[p + "grad.feats"] = x.grad
        t.update(weights(head, p))
        t.update(grads(head, p))
        meta[name] = dict(convs=c["convs"], fcs=c["fcs"], loss=c["loss"][0], weight=c["loss"][1], stds=c["stds"])
    meta.update(classes=k, in_channels=cin, conv_channels=8, fc_channels=16, roi=roi)
    save("box_head", t, meta)


# ----------------------------------------------------------------------------------------- mask head
class FCNMaskHead(nn.Module):
    def __init__(self, num_convs, cin, ch, k):
        super().__init__()
        self.convs = nn.ModuleList([CM(cin if i == 0 else ch, ch, 3) for i in range(num_convs)])
        self.upsample = nn.ConvTranspose2d(ch, ch, 2, stride=2)
        self.conv_logits = nn.Conv2d(ch, k, 1)

    def forward(self, x):
        for c in self.convs:
            x = c(x)
        return self.conv_logits(F.relu(self.upsample(x)))


def mask_loss(pred, targets, labels):
    if pred.size(0) == 0:
        return pred.sum()
    inds = torch.arange(pred.size(0))
    return F.binary_cross_entropy_with_logits(pred[inds, labels], targets, reduction="mean")


def gen_mask_head():
    g = torch.Generator().manual_seed(14)
    t = {}
    k, cin, ch, p = 3, 8, 8, 4
    head = FCNMaskHead(2, cin, ch, k)
    randomize(head, g)
    x = torch.randn(p, cin, 14, 14, generator=g).requires_grad_()
    labels = torch.tensor([1, 0, 2, 1])
    targets = (torch.rand(p, 28, 28, generator=g) > 0.6).float()
    pred = head(x)
    loss = mask_loss(pred, targets, labels)
    loss.backward()
    t.update(feats=x, labels=labels, targets=targets, pred=pred, loss=loss)
    t["grad.feats"] = x.grad
    t.update(weights(head, "mask_head."))
    t.update(grads(head, "mask_head."))
    save("mask_head", t, {"classes": k, "in_channels": cin, "channels": ch, "num_convs": 2})


# ----------------------------------------------------------------------------------------- cascade
def bbox2roi(boxes):
    return torch.cat([torch.cat([b.new_full((b.size(0), 1), i), b], 1) for i, b in enumerate(boxes)], 0)


def ellipse_mask(h, w, box):
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).to(torch.uint8)


def gen_cascade():
    g = torch.Generator().manual_seed(15)
    t, meta = {}, {}
    k, c, stages = 3, 8, 3
    strides, finest = [4, 8, 16, 32], 14.0
    thrs, lws = [0.5, 0.6, 0.7], [1.0, 0.5, 0.25]
    num, pos_fraction = 16, 0.25
    img_shapes = [(60, 64), (64, 56)]
    pad = (64, 64)
    feats = [torch.randn(2, c, pad[0] // s, pad[1] // s, generator=g).requires_grad_() for s in strides]
    box_heads = [ConvFCBBoxHead(4, 1, c, 8, 16, 7, k) for _ in range(stages)]
    mask_heads = [FCNMaskHead(1, c, 8, k) for _ in range(stages)]
    for i in range(stages):
        randomize(box_heads[i], g)
        randomize(mask_heads[i], g)
        with torch.no_grad():
            box_heads[i].fc_reg.weight.mul_(0.25)
    gts, gt_labels, gt_masks, proposals = [], [], [], []
    for j, (h, w) in enumerate(img_shapes):
        gb = R.rand_boxes(3, h, w, min_size=10, max_size=36, g=g)
        gb[:, 0::2] = gb[:, 0::2].clamp(0, w)
        gb[:, 1::2] = gb[:, 1::2].clamp(0, h)
        gts.append(gb)
        gt_labels.append(torch.tensor([0, 2, 1]) if j == 0 else torch.tensor([1, 1, 0]))
        gt_masks.append(torch.stack([ellipse_mask(pad[0], pad[1], b) for b in gb]))
        # proposals: jittered copies of the gts (positives at every stage) and random boxes
        jit = gb.repeat(4, 1) + torch.randn(12, 4, generator=g) * torch.tensor([1.5, 1.5, 1.5, 1.5]) * \
            torch.arange(1, 5).repeat_interleave(3)[:, None]
        props = torch.cat([jit, R.rand_boxes(12, h, w, min_size=4, max_size=40, g=g)])
        props = torch.stack([props[:, 0].clamp(0, w - 2), props[:, 1].clamp(0, h - 2), props[:, 2], props[:, 3]], 1)
        props[:, 2] = torch.max(props[:, 2], props[:, 0] + 2).clamp(max=w)
        props[:, 3] = torch.max(props[:, 3], props[:, 1] + 2).clamp(max=h)
        proposals.append(props)
        t[f"img{j}.gts"], t[f"img{j}.labels"], t[f"img{j}.masks"] = gb, gt_labels[-1], gt_masks[-1]
        t[f"img{j}.proposals"] = props
    # ---- training (CascadeRoIHead.forward_train with first-k sampling)
    losses = {}
    proposal_list = proposals
    for i in range(stages):
        srs = []
        for j in range(2):
            a = R.MaxIoUAssigner(**R.rcnn_assigner_cfg(thrs[i])).assign(proposal_list[j], gts[j], None, gt_labels[j])
            srs.append(R.FirstKSampler(num, pos_fraction, -1, True).sample(a, proposal_list[j], gts[j], gt_labels[j]))
        rois = bbox2roi([torch.cat([s["pos_bboxes"], s["neg_bboxes"]]) for s in srs])
        bf, _ = R.single_roi_extractor(feats, rois, 7, strides, finest)
        box_heads[i].train()
        cls, reg = box_heads[i](bf)
        tg = [R.bbox_head_targets(s, k, True, R.STAGE_STDS[i]) for s in srs]
        labels, lw, bt, bw = (torch.cat([x[n] for x in tg]) for n in range(4))
        lc, lb = bbox_loss(cls, reg, rois, labels, lw, bt, bw, k, ("giou", 10.0), R.STAGE_STDS[i])
        losses[f"s{i}.loss_cls"], losses[f"s{i}.loss_bbox"] = lc * lws[i], lb * lws[i]
        pos_rois = bbox2roi([s["pos_bboxes"] for s in srs])
        mf, _ = R.single_roi_extractor(feats, pos_rois, 14, strides, finest)
        mp = mask_heads[i](mf)
        mt = torch.cat([R.mask_target_single(s["pos_bboxes"], s["pos_assigned_gt_inds"], gt_masks[j], 28)[0]
                        for j, s in enumerate(srs)]).float()
        pl = torch.cat([s["pos_gt_labels"] for s in srs])
        losses[f"s{i}.loss_mask"] = mask_loss(mp, mt, pl) * lws[i]
        meta[f"s{i}.num_pos"] = [int(s["pos_bboxes"].size(0)) for s in srs]
        meta[f"s{i}.num_rois"] = int(rois.size(0))
        if i < stages - 1:
            pos_is_gts = [s["pos_is_gt"] for s in srs]
            with torch.no_grad():
                roi_labels = torch.where(labels == k, cls[:, :-1].argmax(1), labels)
                proposal_list = R.refine_bboxes(rois, roi_labels, reg.detach(), pos_is_gts, img_shapes,
                                                R.STAGE_STDS[i])
            for j in range(2):
                t[f"s{i + 1}.img{j}.proposals"] = proposal_list[j]
    total = sum(losses.values())
    total.backward()
    for name, v in losses.items():
        t[name] = v
    for i, f in enumerate(feats):
        t[f"feat{i}"], t[f"grad.feat{i}"] = f, f.grad
    for i in range(stages):
        t.update(weights(box_heads[i], f"roi_head.bbox_head.{i}."))
        t.update(grads(box_heads[i], f"roi_head.bbox_head.{i}."))
        t.update(weights(mask_heads[i], f"roi_head.mask_head.{i}."))
        t.update(grads(mask_heads[i], f"roi_head.mask_head.{i}."))
    # ---- test (CascadeRoIHead.simple_test, rescale=True), BN on the running statistics
    ori_shapes = [(30, 32), (32, 28)]
    sfs = [(2.0, 2.0, 2.0, 2.0), (2.0, 2.0, 2.0, 2.0)]
    with torch.no_grad():
        for h in box_heads:
            h.eval()
        rois = bbox2roi(proposals)
        n_per = [p.size(0) for p in proposals]
        ms_scores = []
        for i in range(stages):
            bf, _ = R.single_roi_extractor(feats, rois, 7, strides, finest)
            cls, reg = box_heads[i](bf)
            rois_s, cls_s, reg_s = rois.split(n_per), cls.split(n_per), reg.split(n_per)
            ms_scores.append(cls_s)
            if i < stages - 1:
                new = []
                for j in range(2):
                    lab = cls_s[j][:, :-1].argmax(dim=1)
                    b = R.regress_by_class(rois_s[j][:, 1:], lab, reg_s[j], img_shapes[j], R.STAGE_STDS[i])
                    new.append(torch.cat([rois_s[j][:, [0]], b], 1))
                rois = torch.cat(new)
        for j in range(2):
            score = sum(s[j] for s in ms_scores) / float(len(ms_scores))
            dets, labels = R.bbox_head_get_bboxes(rois_s[j], score, reg_s[j], img_shapes[j], sfs[j],
                                                  R.STAGE_STDS[2], rescale=True)
            t[f"test.img{j}.dets"], t[f"test.img{j}.labels"] = dets, labels
            _b = dets[:, :4] * torch.tensor(sfs[j])
            mrois = bbox2roi([_b])
            mf, _ = R.single_roi_extractor([f[j:j + 1] for f in feats], mrois, 14, strides, finest)
            aug = [mask_heads[i](mf).sigmoid().numpy() for i in range(stages)]
            merged = torch.from_numpy(np.mean(np.array(aug), axis=0))  # merge_aug_masks
            probs = merged[torch.arange(dets.size(0)), labels][:, None]
            boxes = _b / torch.tensor(sfs[j])
            pasted = R.do_paste_mask(probs, boxes, ori_shapes[j][0], ori_shapes[j][1])
            t[f"test.img{j}.masks"] = pasted >= 0.5
    meta.update(classes=k, channels=c, strides=strides, finest_scale=finest, iou_thrs=thrs, loss_weights=lws,
                num_samples=num, pos_fraction=pos_fraction, img_shapes=img_shapes, pad_shape=pad,
                ori_shapes=ori_shapes, scale_factors=sfs, stage_stds=R.STAGE_STDS, conv_channels=8,
                fc_channels=16, mask_channels=8, mask_convs=1)
    save("cascade", t, meta)


if __name__ == "__main__":
    print("torch", torch.__version__)
    gen_fpn()
    gen_rpn()
    gen_box_head()
    gen_mask_head()
    gen_cascade()
    total = sum(p.stat().st_size for p in OUT.glob("*.safetensors"))
    print(f"all goldens of the crate: {total} bytes")
