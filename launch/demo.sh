#!/usr/bin/env bash
# `make demo`: build the demo corpus, pretrain a small M2D, export, probe pretrained vs random init,
# and write runs/demo/demo_report.png. Re-running resumes / reuses what is already there.
set -euo pipefail
RUN=${1:-runs/demo}
AVP=${AVP:-.venv/bin/avpretrain}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUN"
if [ ! -f "$RUN/data/build_report.json" ]; then
  $AVP data build demo --out "$RUN/data"
fi
$AVP train --config=configs/demo.py --config.data.dir="$RUN/data" --workdir="$RUN/train"
$AVP export --workdir="$RUN/train" --out="$RUN/export"
$AVP eval linear-probe --model="$RUN/export" --data="$RUN/data" --json-out="$RUN/probe_pretrained.json"
$AVP eval linear-probe --model="$RUN/export" --data="$RUN/data" --random-init --json-out="$RUN/probe_random-init.json"
$AVP report --run-dir="$RUN"
