#!/usr/bin/env bash
# `make demo-emotion`: the speech-emotion recipe of de Oliveira et al. on the embedded demo corpus.
# demo_emotion (studio: espeak-ng speech, arousal/valence/dominance + transcripts) → a teacher M2D
# pretrained on its unlabeled training audio (or DEMO_EMOTION_TEACHER=<an export> to reuse one) →
# the layer analysis of the teacher → a student distilled from the layers it picks (~20 % of the
# parameters) → A/V/D fine-tuning of the teacher, the student, and the student + the transcripts'
# sentence embeddings → runs/demo_emotion/demo_emotion_report.png and, as the last line,
#   demo-emotion: ccc valence teacher=<f> student=<f> student+text=<f> arousal teacher=<f> student=<f> student+text=<f>
# Re-running resumes or reuses what is already there (every stage is resumable).
set -euo pipefail
RUN=${1:-runs/demo_emotion}
AVP=${AVP:-.venv/bin/avpretrain}
CLIPS=${DEMO_EMOTION_CLIPS:-600}       # 6 speakers (4 train, 1 validation, 1 test) × 6 emotions
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUN"
stage() { echo "== $(date +%T) $*"; }

stage "build demo_emotion ($CLIPS clips) and embed its transcripts"
if [ ! -f "$RUN/data/build_report.json" ]; then
  $AVP data build demo_emotion --corpus studio --num-clips "$CLIPS" --out "$RUN/data"
fi
$AVP data embed-captions --data "$RUN/data" --field transcript

TEACHER=${DEMO_EMOTION_TEACHER:-}
if [ -z "$TEACHER" ]; then
  stage "pretrain the teacher (M2D, small-data recipe) on the training audio, labels unused"
  $AVP train --config=configs/m2d.py:size=tiny,small_data --config.data.dir="$RUN/data" --workdir="$RUN/teacher" \
    --config.total_steps=${DEMO_EMOTION_TEACHER_STEPS:-1500} --config.log_every=100 --config.checkpoint_every=500
  $AVP export --workdir="$RUN/teacher" --out="$RUN/teacher_export"
  TEACHER="$RUN/teacher_export"
fi

stage "layer analysis of the teacher"
$AVP eval layers --model="$TEACHER" --data="$RUN/data" --task regress --out "$RUN/layers_teacher"

stage "distil the student from the layers the analysis picked, on the same unlabeled audio"
$AVP train --config=configs/distill.py --config.teacher.path="$TEACHER" --config.data.dir="$RUN/data" \
  --config.distill.layers_from="$RUN/layers_teacher.json" --workdir="$RUN/student" \
  --config.total_steps=${DEMO_EMOTION_DISTILL_STEPS:-1500} --config.batch_size=32 --config.optim.base_lr=4e-3 \
  --config.log_every=100 --config.checkpoint_every=500
$AVP export --workdir="$RUN/student" --out="$RUN/student_export"

# A/V/D fine-tuning: the same config for all three (CCC loss, the encoder at half the head's lr),
# validation every 50 steps on the validation speaker, early stop after 4 evaluations without gain.
FT=(--config.data.dir="$RUN/data" --config.total_steps=${DEMO_EMOTION_FINETUNE_STEPS:-600} --config.batch_size=32
    --config.log_every=50 --config.checkpoint_every=50 --config.eval_every=50 --config.eval.patience=4)
finetune() {  # name, config arguments, encoder
  stage "fine-tune A/V/D: $1"
  $AVP train --config=configs/finetune.py:modalities=audio,task=regress$2 --config.init.path="$3" \
    --workdir="$RUN/ft_$1" "${FT[@]}"
  $AVP export --workdir="$RUN/ft_$1" --out="$RUN/ft_$1_export"
  $AVP eval regress --model="$RUN/ft_$1_export" --data="$RUN/data" --split test --json-out="$RUN/regress_$1.json"
}
finetune teacher "" "$TEACHER"
finetune student "" "$RUN/student_export"
finetune student+text ",text=1" "$RUN/student_export"

stage "report"
$AVP report --kind=emotion --run-dir="$RUN"
