#!/usr/bin/env bash
# `make demo-emotion-xcorpus`: the two multi-corpus emotion recipes on three corpora of demo_emotion
# that differ in speakers, languages, sentences, label sets and channel (studio / phone / room):
#   1. a plain encoder: M2D pretrained on studio's unlabeled audio (or DEMO_XCORPUS_ENCODER=<an export>);
#   2. pre-finetuning (Chen & Yu): one encoder per non-empty subset of {studio, phone} (`avpretrain sweep`);
#   3. the few-shot protocol on room, built in ESD's layout (every speaker in train / validation / test),
#      for the plain encoder and the pre-finetuned ones;
#   4. Emo-DNA studio → room (room's labels unread) against the source-only baseline, both from the plain
#      encoder, scored on room's test split (UAR, WAR);
# → runs/demo_emotion_xcorpus/demo_emotion_xcorpus_report.png and, as the last line,
#   demo-emotion-xcorpus: few-shot macro-f1 k8 plain=<f> prefinetuned=<f> emo-dna uar source-only=<f> adapted=<f>
# ("prefinetuned" is the encoder pre-finetuned on both corpora, chosen before any result; the report
# shows every subset). Re-running resumes or reuses what is already there.
set -euo pipefail
RUN=${1:-runs/demo_emotion_xcorpus}
AVP=${AVP:-.venv/bin/avpretrain}
CLIPS=${DEMO_XCORPUS_CLIPS:-600}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUN"
stage() { echo "== $(date +%T) $*"; }

build() {  # corpus, split-by
  if [ ! -f "$RUN/$1/build_report.json" ]; then
    stage "build demo_emotion $1 ($CLIPS clips, splits by $2)"
    $AVP data build demo_emotion --corpus "$1" --split-by "$2" --num-clips "$CLIPS" --out "$RUN/$1"
  fi
}
build studio speaker
build phone speaker
build room clip

ENCODER=${DEMO_XCORPUS_ENCODER:-}
if [ -z "$ENCODER" ]; then
  stage "pretrain the plain encoder (M2D, small-data recipe) on studio's unlabeled training audio"
  $AVP train --config=configs/m2d.py:size=tiny,small_data --config.data.dir="$RUN/studio" --workdir="$RUN/plain" \
    --config.total_steps=${DEMO_XCORPUS_PRETRAIN_STEPS:-1500} --config.log_every=100 --config.checkpoint_every=500
  $AVP export --workdir="$RUN/plain" --out="$RUN/plain_export"
  ENCODER="$RUN/plain_export"
fi

stage "pre-finetune one encoder per non-empty subset of {studio, phone}"
PF=(--config.init.path="$ENCODER" --config.data.dirs="$RUN/studio,$RUN/phone"
    --config.total_steps=${DEMO_XCORPUS_PREFINETUNE_STEPS:-600} --config.log_every=50 --config.checkpoint_every=100)
$AVP sweep --config=configs/prefinetune.py "${PF[@]}" --workdir="$RUN/prefinetune" --run
MODELS="$ENCODER"
for w in "$RUN"/prefinetune/*_use=*; do
  [ -d "$w/checkpoints" ] || continue
  $AVP export --workdir="$w" --out="${w}_export" >/dev/null
  MODELS="$MODELS,${w}_export"
done

stage "few-shot protocol on room (per speaker and emotion, one-vs-rest, k in 2 4 8 16, 5 trials)"
$AVP eval few-shot --model="$MODELS" --data="$RUN/room" --shots 2,4,8,16 --trials 5 \
  --json-out="$RUN/few_shot.json" --png="$RUN/few_shot.png"

stage "Emo-DNA studio → room vs the source-only baseline (the classes both have)"
DNA=(--config.init.path="$ENCODER" --config.data.dir="$RUN/studio" --config.data.classes=neutral,happy,sad,angry,fearful
     --config.total_steps=${DEMO_XCORPUS_DNA_STEPS:-400} --config.batch_size=32 --config.log_every=25
     --config.checkpoint_every=100 --config.eval_every=100)
$AVP train --config=configs/emo_dna.py:baseline "${DNA[@]}" --workdir="$RUN/source_only"
$AVP train --config=configs/emo_dna.py "${DNA[@]}" --config.data.target_dir="$RUN/room" --workdir="$RUN/adapted"
for m in source_only adapted; do
  $AVP export --workdir="$RUN/$m" --out="$RUN/${m}_export" >/dev/null
  $AVP eval classify --model="$RUN/${m}_export" --data="$RUN/room" --split test --json-out="$RUN/classify_$m.json" \
    --png="$RUN/confusion_$m.png" | tail -1
done

stage "report"
$AVP report --kind=emotion-xcorpus --run-dir="$RUN"
