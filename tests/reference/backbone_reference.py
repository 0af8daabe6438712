#!/usr/bin/env python3
"""Golden fixtures for the backbone crate (run by developers, never by CI).

    python3 -m venv /opt/refvenv && /opt/refvenv/bin/pip install torch timm numpy pillow safetensors
    /opt/refvenv/bin/python tests/reference/backbone_reference.py            # writes backbone/tests/fixtures/
    /opt/refvenv/bin/python tests/reference/backbone_reference.py --presets  # + vit_small/vit_base vs timm at 224

The ViT below follows DINO's `vision_transformer.py` (the layout iBOT inherits): pre-norm blocks,
qkv bias, LayerNorm eps 1e-6, exact GELU, CLS token, learned position embedding interpolated with
bicubic *scale factor* (n + 0.1)/sqrt(N). Weights are seeded random; inputs are a closed-form
pattern that the Rust tests recompute exactly (no input tensors are committed).
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "backbone", "tests", "fixtures")


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)), attn


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, return_attention=False):
        y, attn = self.attn(self.norm1(x))
        if return_attention:
            return attn
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    def __init__(self, img_size, patch, dim, depth, heads, mlp_ratio=4.0):
        super().__init__()
        self.patch = patch
        self.patch_embed = PatchEmbed(patch, dim)
        n = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.normal_(m.bias, std=0.02)  # non-zero biases so a dropped bias shows up
            elif isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, mean=1.0, std=0.1)
                nn.init.normal_(m.bias, std=0.05)

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        class_pos = self.pos_embed[:, 0]
        patch_pos = self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch + 0.1
        h0 = h // self.patch + 0.1
        s = int(math.sqrt(N))
        patch_pos = F.interpolate(
            patch_pos.reshape(1, s, s, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / s, h0 / s),
            mode="bicubic",
        )
        assert int(w0) == patch_pos.shape[-2] and int(h0) == patch_pos.shape[-1]
        patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)

    def prepare_tokens(self, x):
        b, _, w, h = x.shape
        t = self.patch_embed(x)
        t = torch.cat((self.cls_token.expand(b, -1, -1), t), dim=1)
        return t + self.interpolate_pos_encoding(t, w, h)

    def forward(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def get_intermediate_layers(self, x, n):
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out

    def get_last_selfattention(self, x):
        x = self.prepare_tokens(x)
        for i, blk in enumerate(self.blocks):
            if i < len(self.blocks) - 1:
                x = blk(x)
            else:
                return blk(x, return_attention=True)


def pattern(b, h, w):
    """Closed-form input, exact in f32: ((31h + 17w + 7c + 13b) mod 97)/48.5 − 1."""
    bb, cc, hh, ww = np.meshgrid(np.arange(b), np.arange(3), np.arange(h), np.arange(w), indexing="ij")
    return torch.from_numpy((((31 * hh + 17 * ww + 7 * cc + 13 * bb) % 97) / 48.5 - 1.0).astype(np.float32))


def tiny_head(dim):
    """A small iBOT-shaped head (hidden 24, bottleneck 8, 16 prototypes, shared last layer)."""
    torch.manual_seed(7)
    head = {
        "mlp.0.weight": torch.randn(24, dim) * 0.02, "mlp.0.bias": torch.zeros(24),
        "mlp.2.weight": torch.randn(24, 24) * 0.02, "mlp.2.bias": torch.zeros(24),
        "mlp.4.weight": torch.randn(8, 24) * 0.02, "mlp.4.bias": torch.zeros(8),
        "last_layer.weight_g": torch.ones(16, 1), "last_layer.weight_v": torch.randn(16, 8),
    }
    # Shared head: last_layer2 IS last_layer (same tensors), as state_dict() emits it.
    head["last_layer2.weight_g"] = head["last_layer.weight_g"]
    head["last_layer2.weight_v"] = head["last_layer.weight_v"]
    return head


def as_strided_views(sd, names):
    """Re-store some tensors as non-contiguous views (every other row of a bigger storage, and a
    transpose), the way torch.save writes views of live tensors."""
    out = dict(sd)
    for i, name in enumerate(names):
        t = sd[name]
        if i % 2 == 0:
            big = torch.zeros((t.shape[0] * 2,) + tuple(t.shape[1:]))
            big[1::2] = t
            out[name] = big[1::2]
        else:
            out[name] = t.t().contiguous().t()
        assert not out[name].is_contiguous() and torch.equal(out[name], t)
    return out


def run_model(model, tag, sizes, goldens):
    model.eval()
    with torch.no_grad():
        for (h, w) in sizes:
            x = pattern(2, h, w)
            goldens[f"{tag}.tokens.{h}x{w}"] = model(x).contiguous()
        h, w = sizes[-1]
        x = pattern(2, h, w)
        inter = model.get_intermediate_layers(x, 4)
        goldens[f"{tag}.inter4.{h}x{w}"] = torch.stack(inter).contiguous()
        goldens[f"{tag}.attn.{h}x{w}"] = model.get_last_selfattention(x).contiguous()
        n0 = int(math.sqrt(model.pos_embed.shape[1] - 1))
        t = model.patch_embed(x)
        t = torch.cat((model.cls_token.expand(2, -1, -1), t), dim=1)
        goldens[f"{tag}.pos.{h}x{w}"] = model.interpolate_pos_encoding(t, h, w)[0].contiguous()



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", action="store_true", help="also compare vit_small/vit_base with timm at 224")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    goldens = {}

    # Patch 16: a full iBOT training checkpoint (teacher/student/optimizer/args/ibot_loss).
    torch.manual_seed(0)
    m16 = DinoViT(img_size=224, patch=16, dim=24, depth=4, heads=2)
    sd = {k: v.detach().clone() for k, v in m16.state_dict().items()}
    strided = as_strided_views(sd, ["blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "patch_embed.proj.weight"])
    head = tiny_head(24)
    teacher = {f"backbone.{k}": v for k, v in strided.items()}
    teacher.update({f"head.{k}": v for k, v in head.items()})
    # The student shares the teacher's storages (as at epoch 0 after the copy) to keep the file small.
    student = {f"module.backbone.{k}": v for k, v in strided.items()}
    student["module.backbone.masked_embed"] = torch.zeros(1, 24)
    student.update({f"module.head.{k}": v for k, v in head.items()})
    ns = argparse.Namespace(arch="vit_custom", patch_size=16, out_dim=16)
    ckpt = {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                      "param_groups": [{"lr": 0.1, "weight_decay": 0.04, "params": [0]}]},
        "epoch": 3,
        "args": ns,
        "ibot_loss": {"center": torch.zeros(1, 16), "center2": torch.zeros(1, 1, 16)},
    }
    torch.save(ckpt, os.path.join(OUT, "vit_p16_full.pth"))
    run_model(m16, "p16", [(224, 224), (96, 96), (160, 96)], goldens)

    # Patch 8: a bare timm-layout state dict, as safetensors and as a `{"state_dict": …}` .pth.
    torch.manual_seed(1)
    m8 = DinoViT(img_size=112, patch=8, dim=16, depth=4, heads=2)
    sd8 = {k: v.detach().clone().contiguous() for k, v in m8.state_dict().items()}
    save_file(sd8, os.path.join(OUT, "vit_p8.safetensors"))
    torch.save({"state_dict": sd8}, os.path.join(OUT, "vit_p8_state_dict.pth"))
    run_model(m8, "p8", [(112, 112), (80, 48)], goldens)

    extract_goldens(m16, goldens)
    save_file({k: v.contiguous() for k, v in goldens.items()}, os.path.join(OUT, "goldens.safetensors"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(goldens)} goldens; fixtures total {total / 1024:.0f} KiB in {OUT}")

    if args.presets:
        compare_presets()


def extract_goldens(model, goldens):
    """`ibot extract` parity: PNGs of odd sizes through torchvision's eval transform
    (Resize(64, bicubic) → CenterCrop(48) → ToTensor → Normalize), then CLS of the last 2 blocks
    + mean patch token of the last block."""
    from PIL import Image
    from torchvision import transforms as T

    img_dir = os.path.join(OUT, "images")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(50, 70), (90, 61), (64, 64)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 7 % 256)], axis=-1)
        noise = rng.integers(0, 40, size=(h, w, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(os.path.join(img_dir, f"img{i}.png"))
    tf = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(48), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([tf(Image.open(os.path.join(img_dir, f"img{i}.png")).convert("RGB")) for i in range(3)])
    with torch.no_grad():
        inter = model.get_intermediate_layers(x, 2)
        cls = torch.cat([t[:, 0] for t in inter], dim=-1)
        avg = inter[-1][:, 1:].mean(dim=1)
        goldens["extract.cls2_avg"] = torch.cat([cls, avg], dim=-1).contiguous()


def compare_presets():
    """Our DINO transcription vs timm on the real presets at 224 (timm is only a cross-check; the
    Rust parity tests use the fixtures above)."""
    import timm

    for name, dim, heads in [("vit_small_patch16_224", 384, 6), ("vit_base_patch16_224", 768, 12)]:
        torch.manual_seed(0)
        ours = DinoViT(224, 16, dim, 12, heads).eval()
        ref = timm.create_model(name, pretrained=False, num_classes=0, global_pool="token").eval()
        missing = ref.load_state_dict(ours.state_dict(), strict=False)
        assert not missing.missing_keys, missing
        x = pattern(2, 224, 224)
        with torch.no_grad():
            a = ours(x)[:, 0]
            b = ref(x)
        rel = ((a - b).abs().max() / b.abs().max()).item()
        print(f"{name}: max relative difference DINO transcription vs timm (CLS, 224 px) = {rel:.2e}")
        path = os.path.join("/tmp", f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, path)
        save_file({"cls": a.contiguous()}, path.replace(".safetensors", ".cls.safetensors"))
        print(f"  weights → {path} (for `cargo test --release -p backbone -- --ignored presets`)")


if __name__ == "__main__":
    sys.exit(main())
