#!/usr/bin/env bash
# `make demo-clap`: the captioned demo corpus → caption embeddings → M2D-CLAP (stage 1) → M2D2
# (stage 2, initialised from stage 1) → zero-shot and retrieval of both on the held-out test clips.
# Re-running resumes / reuses what is already there.
set -euo pipefail
RUN=${1:-runs/demo_clap}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO"
mkdir -p "$RUN"
if [ ! -f "$RUN/data/build_report.json" ]; then
  $AVP data build demo --out "$RUN/data"
fi
$AVP data embed-captions --data "$RUN/data"
$AVP train --config=configs/demo_clap.py:stage=1 --config.data.dir="$RUN/data" --workdir="$RUN/stage1"
$AVP train --config=configs/demo_clap.py:stage=2 --config.data.dir="$RUN/data" \
  --config.init.path="$RUN/stage1" --workdir="$RUN/stage2"
for stage in stage1 stage2; do
  $AVP export --workdir="$RUN/$stage" --out="$RUN/$stage/export"
  $AVP eval zero-shot --model="$RUN/$stage/export" --data="$RUN/data" --json-out="$RUN/$stage/zero_shot.json"
  $AVP eval retrieval --model="$RUN/$stage/export" --data="$RUN/data" --json-out="$RUN/$stage/retrieval.json"
done
$AVP report --run-dir="$RUN" --kind=clap
