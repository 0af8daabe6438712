#!/usr/bin/env python3
"""Time COCO evaluation in pycocotools, faster-coco-eval, hotcoco (Python) and `ibot metrics coco`
on the same files, and check that all of them report the same 12 stats.

The files come from the Rust benchmark, which also times our in-process evaluation:
  target/release/ibot bench coco --out-dir /tmp/coco_bench        # writes gt.json, dt_bbox.json, dt_segm.json

Setup (any recent Python 3):
  python3 -m venv /opt/metricsvenv
  /opt/metricsvenv/bin/pip install numpy pycocotools faster-coco-eval hotcoco
Run:
  /opt/metricsvenv/bin/python tests/reference/bench_coco.py /tmp/coco_bench --ibot target/release/ibot

Each tool runs in a fresh subprocess. "eval_s" is load ground truth + load detections + evaluate +
accumulate + summarize (JSON parsing included); "process_s" is the whole subprocess wall time
(interpreter start and imports included). Tools: pycocotools (pure Python + numpy), faster-coco-eval
(C++), hotcoco (Rust, via PyO3), ibot (this repository's binary: `ibot metrics coco --json`).
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time

TOOLS = ["pycocotools", "faster-coco-eval", "hotcoco", "ibot"]


def evaluate(tool, gt_path, dt_path, iou_type):
    """Runs inside the worker subprocess; returns (seconds, stats)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if tool == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            start = time.perf_counter()
            gt = COCO(gt_path)
            dt = gt.loadRes(dt_path)
            ev = COCOeval(gt, dt, iou_type)
        elif tool == "faster-coco-eval":
            from faster_coco_eval import COCO, COCOeval_faster

            start = time.perf_counter()
            gt = COCO(gt_path)
            dt = gt.loadRes(dt_path)
            ev = COCOeval_faster(gt, dt, iou_type)
        elif tool == "hotcoco":
            from hotcoco import COCO, COCOeval

            start = time.perf_counter()
            gt = COCO(gt_path)
            dt = gt.loadRes(dt_path)
            ev = COCOeval(gt, dt, iou_type)
        else:
            raise ValueError(tool)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        seconds = time.perf_counter() - start
    return seconds, [float(s) for s in ev.stats]


def worker(args):
    seconds, stats = evaluate(args.tool, args.gt, args.dt, args.iou_type)
    print(json.dumps({"eval_s": seconds, "stats": stats}))


def run_tool(tool, gt, dt, iou_type, ibot):
    start = time.perf_counter()
    if tool == "ibot":
        cmd = [ibot, "metrics", "coco", "--gt", gt, "--dt", dt, "--iou-type", iou_type, "--json"]
    else:
        cmd = [sys.executable, __file__, "--worker", "--tool", tool, "--gt", gt, "--dt", dt, "--iou-type", iou_type]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    process_s = time.perf_counter() - start
    result = json.loads(out)
    return {"eval_s": result.get("eval_s", process_s), "process_s": process_s, "stats": result["stats"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case_dir", nargs="?", help="directory holding gt.json, dt_bbox.json, dt_segm.json")
    p.add_argument("--ibot", help="path of the ibot binary (omit to skip it)")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--iou-types", default="bbox,segm")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tool", help=argparse.SUPPRESS)
    p.add_argument("--gt", help=argparse.SUPPRESS)
    p.add_argument("--dt", help=argparse.SUPPRESS)
    p.add_argument("--iou-type", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if not args.case_dir:
        p.error("case_dir is required")
    gt = os.path.join(args.case_dir, "gt.json")
    report = {"case_dir": args.case_dir, "results": {}}
    for iou_type in args.iou_types.split(","):
        dt = os.path.join(args.case_dir, f"dt_{iou_type}.json")
        rows = {}
        for tool in args.tools.split(","):
            if tool == "ibot" and not args.ibot:
                continue
            rows[tool] = run_tool(tool, gt, dt, iou_type, args.ibot)
            r = rows[tool]
            print(f"{iou_type:5} {tool:17} eval {r['eval_s']:8.2f} s   process {r['process_s']:8.2f} s", file=sys.stderr, flush=True)
        reference = rows.get("pycocotools", next(iter(rows.values())))["stats"]
        for tool, r in rows.items():
            r["stats_identical_to_first"] = r["stats"] == reference
            r["max_abs_diff"] = max(abs(a - b) for a, b in zip(r["stats"], reference))
        report["results"][iou_type] = rows
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
