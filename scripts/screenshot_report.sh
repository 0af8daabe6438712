#!/usr/bin/env bash
# Screenshot a report.html in headless Chromium: proves the page renders offline.
# Usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]
# CHROMIUM overrides the browser (default: chromium on PATH).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2
  exit 2
fi
html=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1280x2000}
browser=${CHROMIUM:-chromium}
[ -f "$html" ] || { echo "$html: no such file" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --user-data-dir keeps runs independent of any desktop profile; the page loads nothing remote.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --no-first-run --disable-extensions \
  --screenshot="$out" --window-size="${size/x/,}" "file://$html" >/dev/null 2>&1 || true
if [ ! -s "$out" ]; then
  echo "chromium wrote no screenshot to $out" >&2
  exit 1
fi
echo "$out"
