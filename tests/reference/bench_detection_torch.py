"""PyTorch counterpart of the detection demo recipe (configs/detection/demo.toml) for timing only:
the demo ViT (dim 96, depth 4, 3 heads, patch 8, exact GELU, drop path 0.1) on 64-px images, iBOT's
patch-8 pyramid (ConvT / identity / max-pool 2 / max-pool 4), FPN 64 (P6 by stride-2 subsampling),
RPN (anchor scale 2, targets and proposals as mmdet 2.11 computes them: the transcriptions in
detection_reference.py on torch tensors, torchvision nms / roi_align), Mask R-CNN heads (Shared2FC
256, mask head 2 × 32), mmdet's losses; AdamW. Weights are random: this measures speed, not accuracy.

    /opt/refvenv/bin/python tests/reference/bench_detection_torch.py --threads 2 --batch-size 4 \
        --steps 20 --eval-images 80 --data /tmp/demo-det/data/coco

prints JSON: training seconds per step (data excluded: the batches are prepared before timing) and
inference images per second (model + post-processing, masks pasted and RLE-encoded).
"""
import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_util
from torchvision.ops import nms as tv_nms

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import detection_reference as R  # noqa: E402

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


# ----------------------------------------------------------------------------------------- backbone
class Block(nn.Module):
    def __init__(self, d, heads, dp):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.heads, self.dp = heads, dp

    def drop_path(self, x):
        if not self.training or self.dp == 0:
            return x
        keep = 1 - self.dp
        m = x.new_empty(x.shape[0], 1, 1).bernoulli_(keep)
        return x * m / keep

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        y = (a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop_path(self.proj(y))
        return x + self.drop_path(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class Backbone(nn.Module):
    def __init__(self, d=96, depth=4, heads=3, patch=8, grid=8, dp=0.1):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, dp * i / (depth - 1)) for i in range(depth)])
        self.fpn1 = nn.ConvTranspose2d(d, d, 2, 2)
        self.grid = grid

    def forward(self, x):
        b, _, h, w = x.shape
        t = self.patch_embed(x)
        gh, gw = t.shape[2:]
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], 1)
        pos = self.pos_embed
        if (gh, gw) != (self.grid, self.grid):
            p = pos[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            p = F.interpolate(p, scale_factor=((gh + 0.1) / self.grid, (gw + 0.1) / self.grid), mode="bicubic")
            pos = torch.cat([pos[:, :1], p.flatten(2).transpose(1, 2)], 1)
        t = t + pos
        maps = []
        for blk in self.blocks:
            t = blk(t)
            maps.append(t[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw))
        return [self.fpn1(maps[0]), maps[1], F.max_pool2d(maps[2], 2), F.max_pool2d(maps[3], 4)]


class FPN(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(cin, c, 1) for _ in range(4)])
        self.out = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(4)])

    def forward(self, xs):
        lat = [l(x) for l, x in zip(self.lateral, xs)]
        for i in range(3, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [o(l) for o, l in zip(self.out, lat)]
        return outs + [F.max_pool2d(outs[-1], 1, stride=2)]


class Detector(nn.Module):
    def __init__(self, k=8, c=64):
        super().__init__()
        self.backbone = Backbone()
        self.neck = FPN(96, c)
        self.rpn_conv = nn.Conv2d(c, c, 3, padding=1)
        self.rpn_cls = nn.Conv2d(c, 3, 1)
        self.rpn_reg = nn.Conv2d(c, 12, 1)
        self.fc1 = nn.Linear(c * 49, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc_cls = nn.Linear(256, k + 1)
        self.fc_reg = nn.Linear(256, 4 * k)
        self.mconvs = nn.ModuleList([nn.Conv2d(c, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)])
        self.up = nn.ConvTranspose2d(32, 32, 2, 2)
        self.logits = nn.Conv2d(32, k, 1)
        self.k = k
        self.anchors = R.AnchorGen([4, 8, 16, 32, 64], [0.5, 1.0, 2.0], [2.0])

    def box_head(self, f):
        x = F.relu(self.fc2(F.relu(self.fc1(f.flatten(1)))))
        return self.fc_cls(x), self.fc_reg(x)

    def mask_head(self, f):
        for c in self.mconvs:
            f = F.relu(c(f))
        return self.logits(F.relu(self.up(f)))

    def rpn(self, feats):
        out = []
        for x in feats:
            h = F.relu(self.rpn_conv(x))
            out.append((self.rpn_cls(h), self.rpn_reg(h)))
        return out

    def proposals(self, rpn_out, b, img_shape, nms_pre, max_per_img):
        scores, boxes, ids = [], [], []
        grid = self.anchors.grid([c.shape[2:] for c, _ in rpn_out])
        for lvl, ((cls, reg), anchors) in enumerate(zip(rpn_out, grid)):
            s = cls[b].detach().permute(1, 2, 0).reshape(-1).sigmoid()
            d = reg[b].detach().permute(1, 2, 0).reshape(-1, 4)
            if s.numel() > nms_pre:
                s, idx = s.sort(descending=True)
                s, idx = s[:nms_pre], idx[:nms_pre]
                d, anchors = d[idx], anchors[idx]
            boxes.append(R.delta2bbox(anchors, d, max_shape=img_shape))
            scores.append(s)
            ids.append(torch.full_like(s, lvl, dtype=torch.long))
        boxes, scores, ids = torch.cat(boxes), torch.cat(scores), torch.cat(ids)
        off = ids.to(boxes) * (boxes.max() + 1)
        keep = tv_nms(boxes + off[:, None], scores, 0.7)[:max_per_img]
        return boxes[keep]


def random_sample(gt_inds, num, pos_fraction):
    pos = torch.nonzero(gt_inds > 0).view(-1)
    pos = pos[torch.randperm(pos.numel())[:int(num * pos_fraction)]].sort()[0]
    neg = torch.nonzero(gt_inds == 0).view(-1)
    neg = neg[torch.randperm(neg.numel())[:num - pos.numel()]].sort()[0]
    return pos, neg


def train_step(model, opt, imgs, targets):
    """One mmdet forward_train + backward + AdamW step (batch padded to 64x64, img_shape 64x64)."""
    b = imgs.shape[0]
    feats = model.neck(model.backbone(imgs))
    rpn_out = model.rpn(feats)
    sizes = [c.shape[2:] for c, _ in rpn_out]
    anchors = torch.cat(model.anchors.grid(sizes))
    img_shape = (imgs.shape[2], imgs.shape[3])
    cls_all = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1) for c, _ in rpn_out], 1)
    reg_all = torch.cat([r.permute(0, 2, 3, 1).reshape(b, -1, 4) for _, r in rpn_out], 1)
    assigner = R.MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
    lc, lr, total = 0, 0, 0
    for j, (gt, _, _) in enumerate(targets):
        gi, _, _ = assigner.assign(anchors, gt)
        pos, neg = random_sample(gi, 256, 0.5)
        total += max(pos.numel(), 1) + max(neg.numel(), 1)
        tgt = torch.zeros(anchors.shape[0])
        tgt[pos] = 1
        sel = torch.cat([pos, neg])
        lc = lc + F.binary_cross_entropy_with_logits(cls_all[j, sel], tgt[sel], reduction="sum")
        if pos.numel():
            d = R.bbox2delta(anchors[pos], gt[gi[pos] - 1])
            lr = lr + (reg_all[j, pos] - d).abs().sum()
    losses = {"loss_rpn_cls": lc / total, "loss_rpn_bbox": lr / total}
    rcnn = R.MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True)
    rois, labels, bt, pos_rois, pos_labels, mtargets = [], [], [], [], [], []
    for j, (gt, gl, gm) in enumerate(targets):
        props = model.proposals(rpn_out, j, img_shape, 2000, 300)
        cand = torch.cat([gt, props])
        gi, _, _ = rcnn.assign(props, gt, None, gl)
        gi = torch.cat([torch.arange(1, gt.shape[0] + 1), gi])
        pos, neg = random_sample(gi, 64, 0.25)
        sel = torch.cat([pos, neg])
        rois.append(torch.cat([torch.full((sel.numel(), 1), float(j)), cand[sel]], 1))
        lab = torch.full((sel.numel(),), model.k, dtype=torch.long)
        lab[:pos.numel()] = gl[gi[pos] - 1]
        labels.append(lab)
        t = torch.zeros(sel.numel(), 4)
        t[:pos.numel()] = R.bbox2delta(cand[pos], gt[gi[pos] - 1], (0.0,) * 4, (0.1, 0.1, 0.2, 0.2))
        bt.append(t)
        pos_rois.append(torch.cat([torch.full((pos.numel(), 1), float(j)), cand[pos]], 1))
        pos_labels.append(gl[gi[pos] - 1])
        mtargets.append(R.mask_target_single(cand[pos], gi[pos] - 1, gm, 28)[0].float())
    rois, labels, bt = torch.cat(rois), torch.cat(labels), torch.cat(bt)
    bf, _ = R.single_roi_extractor(feats[:4], rois, 7, [4, 8, 16, 32], 14.0)
    cls, reg = model.box_head(bf)
    losses["loss_cls"] = F.cross_entropy(cls, labels)
    p = labels < model.k
    losses["loss_bbox"] = (reg.view(reg.shape[0], -1, 4)[p, labels[p]] - bt[p]).abs().sum() / rois.shape[0]
    pr = torch.cat(pos_rois)
    mf, _ = R.single_roi_extractor(feats[:4], pr, 14, [4, 8, 16, 32], 14.0)
    mp = model.mask_head(mf)
    pl = torch.cat(pos_labels)
    losses["loss_mask"] = F.binary_cross_entropy_with_logits(mp[torch.arange(pl.numel()), pl], torch.cat(mtargets))
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)


@torch.no_grad()
def predict(model, imgs, scale=1.0):
    b = imgs.shape[0]
    feats = model.neck(model.backbone(imgs))
    rpn_out = model.rpn(feats)
    img_shape = (imgs.shape[2], imgs.shape[3])
    props = [model.proposals(rpn_out, j, img_shape, 1000, 100) for j in range(b)]
    rois = torch.cat([torch.cat([torch.full((p.shape[0], 1), float(j)), p], 1) for j, p in enumerate(props)])
    bf, _ = R.single_roi_extractor(feats[:4], rois, 7, [4, 8, 16, 32], 14.0)
    cls, reg = model.box_head(bf)
    n = [p.shape[0] for p in props]
    out = []
    for j, (r, c, d) in enumerate(zip(rois.split(n), cls.split(n), reg.split(n))):
        dets, labels = R.bbox_head_get_bboxes(r, c, d, img_shape, (1.0,) * 4, (0.1, 0.1, 0.2, 0.2))
        if dets.shape[0] == 0:
            out.append([])
            continue
        mr = torch.cat([torch.zeros(dets.shape[0], 1), dets[:, :4]], 1)  # features of image j only
        mf, _ = R.single_roi_extractor([f[j:j + 1] for f in feats[:4]], mr, 14, [4, 8, 16, 32], 14.0)
        m = model.mask_head(mf).sigmoid()[torch.arange(dets.shape[0]), labels][:, None]
        pasted = R.do_paste_mask(m, dets[:, :4], img_shape[0], img_shape[1]) >= 0.5
        rles = [mask_util.encode(np.asfortranarray(x.numpy().astype(np.uint8))) for x in pasted]
        out.append(list(zip(dets.tolist(), labels.tolist(), rles)))
    return out


def load_images(root, split, n):
    ann = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    by_img = {}
    for a in ann["annotations"]:
        if not a["iscrowd"]:
            by_img.setdefault(a["image_id"], []).append(a)
    cats = {c["id"]: i for i, c in enumerate(ann["categories"])}
    out = []
    for im in ann["images"]:
        if im["id"] not in by_img:
            continue
        img = torch.from_numpy(np.array(Image.open(root / split / im["file_name"]).convert("RGB"))).permute(2, 0, 1)
        x = (img.float() - MEAN) / STD
        anns = by_img[im["id"]]
        gt = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                           for a in anns], dtype=torch.float32)
        gl = torch.tensor([cats[a["category_id"]] for a in anns])
        h, w = im["height"], im["width"]
        masks = []
        for a in anns:
            s = a["segmentation"]
            rle = mask_util.merge(mask_util.frPyObjects(s, h, w)) if isinstance(s, list) else (
                mask_util.frPyObjects(s, h, w) if isinstance(s["counts"], list) else s)
            masks.append(torch.from_numpy(mask_util.decode(rle)))
        out.append((x, (gt, gl, torch.stack(masks))))
        if len(out) == n:
            break
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--eval-images", type=int, default=80)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--data", default="/tmp/demo-det/data/coco")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    root = pathlib.Path(a.data)
    model = Detector()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)
    train = load_images(root, "train", a.batch_size * (a.steps + a.warmup))
    batches = [train[i:i + a.batch_size] for i in range(0, len(train), a.batch_size)]
    model.train()
    times, losses = [], []
    for i, bt in enumerate(batches):
        imgs = torch.stack([x for x, _ in bt])
        t0 = time.perf_counter()
        losses.append(train_step(model, opt, imgs, [t for _, t in bt]))
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    model.eval()
    val = load_images(root, "val", a.eval_images)
    t0 = time.perf_counter()
    ndet = 0
    for i in range(0, len(val), a.eval_batch):
        imgs = torch.stack([x for x, _ in val[i:i + a.eval_batch]])
        ndet += sum(len(o) for o in predict(model, imgs))
    te = time.perf_counter() - t0
    print(json.dumps({
        "torch": torch.__version__, "threads": a.threads, "batch_size": a.batch_size,
        "train_seconds_per_step": sum(times) / len(times), "train_steps_timed": len(times),
        "first_loss": losses[0], "last_loss": losses[-1],
        "eval_images": len(val), "eval_images_per_s": len(val) / te, "detections": ndet,
    }, indent=1))


if __name__ == "__main__":
    main()
