#!/usr/bin/env python3
"""PyTorch side of `ibot bench backbone`: forward images/s of the same ViT on the same threads.

    /opt/refvenv/bin/python tests/reference/bench_torch.py --arch vit_small --batch 1,8,32 --threads 2

Weights are the DINO-layout random init of backbone_reference.py (speed does not depend on the
values); `--weights FILE.safetensors` loads a checkpoint converted by `ibot convert --backbone-only`.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbone_reference import DinoViT  # noqa: E402

PRESETS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--weights")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: torch.autocast('cpu', torch.bfloat16) (oneDNN, AMX where the CPU has it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dim, depth, heads = PRESETS[args.arch]
    model = DinoViT(args.size, 16, dim, depth, heads).eval()
    if args.weights:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.weights), strict=True)
    print(f"torch {torch.__version__}, {args.arch} at {args.size} px, {args.precision}, {torch.get_num_threads()} threads")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    for b in [int(x) for x in args.batch.split(",")]:
        x = torch.randn(b, 3, args.size, args.size)
        with torch.inference_mode(), autocast:
            model(x)
            start, iters = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds or iters < 2:
                model(x)[:, 0]
                iters += 1
        secs = time.perf_counter() - start
        print(json.dumps({"bench": "backbone-torch", "arch": args.arch, "size": args.size, "batch": b,
                          "iters": iters, "images_per_s": iters * b / secs, "threads": args.threads,
                          "precision": args.precision, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
