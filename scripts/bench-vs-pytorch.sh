#!/usr/bin/env bash
# One round of the README's Speed table: each PyTorch reference script, then the matching
# `ibot bench … --torch-json`, back to back. Run it on a machine with nothing else running, twice.
#   scripts/bench-vs-pytorch.sh OUT_DIR [COCO_DIR]    (COCO_DIR: `ibot demo`'s data/coco, optional)
# PYTHON (default: python3) needs torch (tests/reference/README_metrics.md); IBOT defaults to the
# release binary. Each JSON lands in OUT_DIR; the load average is logged after every pair.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/bench-vs-pytorch.sh OUT_DIR [COCO_DIR]}
COCO=${2:-}
PY=${PYTHON:-python3}
IBOT=${IBOT:-target/release/ibot}
mkdir -p "$OUT"
log() { echo "$1: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log"; }
log start
$PY tests/reference/bench_torch.py --batch 8,32 > "$OUT/t_fwd.json"
$IBOT bench backbone --batch 8 --batch 32 --no-breakdown --torch-json "$OUT/t_fwd.json" > "$OUT/o_fwd.json"
log forward
$PY tests/reference/bench_pretrain_torch.py --threads 2 --batch-size 2 --steps 2 > "$OUT/t_pre.json"
$IBOT bench pretrain --batch-size 2 --steps 2 --device cpu --torch-json "$OUT/t_pre.json" > "$OUT/o_pre.json"
log pretrain
$PY tests/reference/bench_finetune_torch.py --threads 2 --batch-size 8 --steps 3 > "$OUT/t_ft.json"
$IBOT bench finetune --batch-size 8 --steps 3 --device cpu --torch-json "$OUT/t_ft.json" > "$OUT/o_ft.json"
log finetune
$PY tests/reference/bench_torch.py --batch 8,32 --precision bf16 > "$OUT/t_fwd16.json"
$IBOT bench backbone --batch 8 --batch 32 --no-breakdown --precision bf16 --torch-json "$OUT/t_fwd16.json" > "$OUT/o_fwd16.json"
log "forward bf16"
$PY tests/reference/bench_pretrain_torch.py --threads 2 --batch-size 2 --steps 2 --precision bf16 > "$OUT/t_pre16.json"
$IBOT bench pretrain --batch-size 2 --steps 2 --device cpu --precision bf16 --torch-json "$OUT/t_pre16.json" > "$OUT/o_pre16.json"
log "pretrain bf16"
$PY tests/reference/bench_segmentation_torch.py > "$OUT/t_seg.json"
$IBOT bench segment --torch-json "$OUT/t_seg.json" > "$OUT/o_seg.json"
log segment
if [ -n "$COCO" ]; then
    $PY tests/reference/bench_detection_torch.py --data "$COCO" > "$OUT/t_det.json"
    $IBOT bench detect --data "$COCO" --torch-json "$OUT/t_det.json" > "$OUT/o_det.json"
    log detect
fi
