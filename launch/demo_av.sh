#!/usr/bin/env bash
# `make demo-av`: the audiovisual demo corpus → both VQ-VAE tokenizers → a token dataset → VQ-MAE-AV
# pretraining → 5-fold speaker-independent fine-tuning for four conditions (the pretrained model on
# audio+video, on audio only, on video only; the same audio+video architecture from random init)
# → runs/demo_av/demo_av_report.png and, as the last line,
#   demo-av: kfold accuracy av=<f> audio=<f> video=<f> random-init=<f>
# Re-running resumes or reuses what is already there (every stage is resumable).
set -euo pipefail
RUN=${1:-runs/demo_av}
AVP=${AVP:-.venv/bin/avpretrain}
CLIPS=${DEMO_AV_CLIPS:-800}            # 10 speakers × 6 emotions, 2-3 s each
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUN"
stage() { echo "== $(date +%T) $*"; }

stage "build demo_av ($CLIPS clips)"
if [ ! -f "$RUN/data/build_report.json" ]; then
  $AVP data build demo_av --out "$RUN/data" --num-clips "$CLIPS"
fi

stage "tokenizers"
$AVP train --config=configs/vqvae_audio.py:runlocal --config.data.dir="$RUN/data" --workdir="$RUN/vq_audio" \
  --config.total_steps=${DEMO_AV_VQ_AUDIO_STEPS:-500} --config.log_every=100 --config.checkpoint_every=250
$AVP train --config=configs/vqvae_video.py:runlocal --config.data.dir="$RUN/data" --workdir="$RUN/vq_video" \
  --config.total_steps=${DEMO_AV_VQ_VIDEO_STEPS:-400} --config.log_every=100 --config.checkpoint_every=200
$AVP export --workdir="$RUN/vq_audio" --out="$RUN/vq_audio_export"
$AVP export --workdir="$RUN/vq_video" --out="$RUN/vq_video_export"

stage "tokenize"
$AVP data tokenize --audio-vq="$RUN/vq_audio_export" --video-vq="$RUN/vq_video_export" --data="$RUN/data" \
  --out="$RUN/tokens"

stage "pretrain VQ-MAE-AV"
$AVP train --config=configs/vq_mae_av.py:runlocal --config.data.dir="$RUN/tokens" --workdir="$RUN/pretrain" \
  --config.total_steps=${DEMO_AV_PRETRAIN_STEPS:-800} --config.batch_size=16 --config.optim.base_lr=0.016 \
  --config.log_every=25 --config.checkpoint_every=400   # peak lr 0.016 · 16 / 256 = 1e-3, the reference's
$AVP export --workdir="$RUN/pretrain" --out="$RUN/pretrain_export"

# Fine-tuning: the same config for every condition (the runlocal encoder architecture, so that the
# random-init condition is the pretrained architecture), validation every 50 steps on each fold's
# validation speakers, early stopping after 2 evaluations without a better UAR.
FT=(--config.total_steps=${DEMO_AV_FINETUNE_STEPS:-150} --config.batch_size=32 --config.log_every=50
    --config.checkpoint_every=50 --config.eval_every=50 --config.eval.patience=2 --config.data.dir="$RUN/tokens")
for cond in av audio video; do
  stage "5-fold fine-tuning: pretrained, $cond"
  $AVP kfold --config=configs/finetune.py:runlocal,modalities=$cond --folds=5 --by=speaker \
    --workdir="$RUN/kfold_$cond" --config.init.path="$RUN/pretrain_export" "${FT[@]}"
done
stage "5-fold fine-tuning: random init, av"
$AVP kfold --config=configs/finetune.py:runlocal,modalities=av --folds=5 --by=speaker \
  --workdir="$RUN/kfold_random-init" "${FT[@]}"

stage "report"
$AVP report --kind=av --run-dir="$RUN"
