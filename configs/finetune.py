"""Supervised fine-tuning of a pretrained encoder (``method="classifier"``, ``avpretrain/models/classifier.py``).

The encoder's architecture is taken from ``--config.init.path`` (a VQ-MAE-AV export or training
workdir; its weights are loaded into the encoder); without one, from ``config.encoder`` below
(random init: the VQ-MAE-AV architecture of ``configs/vq_mae_av.py``, or of its ``runlocal``
form with ``:runlocal``). The head is trained at the full learning rate, the encoder at
``optim.lr_mult.encoder`` × it (0 freezes it). The classes come from the dataset's label names.

Validation every ``eval_every`` steps on the validation split selects the best step and stops early
after ``eval.patience`` evaluations without improvement (``avpretrain/validation.py``)::

  avpretrain train --config=configs/finetune.py --config.init.path=$VQ_MAE_AV_EXPORT \\
      --config.data.dir=$TOKENS --workdir=$RUN
  avpretrain export --workdir=$RUN --out=$MODEL          # the selected step
  avpretrain eval classify --model=$MODEL --data=$TOKENS --split=test

Speaker-independent k-fold (each fold a run of this config in ``$W/fold-<i>``)::

  avpretrain kfold --config=configs/finetune.py --folds=5 --by=speaker --workdir=$W \\
      --config.init.path=$VQ_MAE_AV_EXPORT --config.data.dir=$TOKENS

Dimensional emotion (arousal / valence / dominance of an emotion corpus, CCC loss, validation on
the mean CCC) over an M2D export::

  avpretrain train --config=configs/finetune.py:modalities=audio,task=regress \
      --config.init.path=$M2D_EXPORT --config.data.dir=$EMOTION_CORPUS --workdir=$RUN
  avpretrain export --workdir=$RUN --out=$MODEL
  avpretrain eval regress --model=$MODEL --data=$EMOTION_CORPUS --split=test

Audio-text fusion (``text=1``): the head also reads a sentence embedding of each clip's transcript,
stored beside the dataset once (a dataset without transcripts: ``--asr-model`` there, or
``--config.data.asr_model=DIR`` here, transcribes the audio with a local speech recogniser; without
one, every clip must have a transcript and training refuses to start otherwise)::

  avpretrain data embed-captions --data $EMOTION_CORPUS --field transcript [--asr-model $ASR_DIR]
  avpretrain train --config=configs/finetune.py:modalities=audio,task=regress,text=1 \
      --config.init.path=$M2D_EXPORT --config.data.dir=$EMOTION_CORPUS --workdir=$RUN

Config arguments: ``modalities=av|audio|video`` (the inputs; the encoder keeps its own),
``head=attention|query``, ``task=classify|regress``, ``text`` (audio-text fusion), ``runlocal`` (a
tiny run and the runlocal encoder).
"""
import ml_collections

from avpretrain.config import parse_arg
from configs import vq_mae_av
from configs.common import base_config

MODALITIES = {"av": ("video", "audio"), "audio": ("audio",), "video": ("video",)}


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, modalities="av", head="attention", task="classify", text=False)
    if arg.task not in ("classify", "regress"):
        raise ValueError(f"configs/finetune.py: unknown task {arg.task!r}; choose classify or regress")
    if arg.modalities not in MODALITIES:
        raise ValueError(f"configs/finetune.py: unknown modalities {arg.modalities!r}; choose one of {sorted(MODALITIES)}")
    c = base_config()
    c.method = "classifier"
    c.total_steps = 3000
    c.batch_size = 64
    c.log_every = 50
    c.checkpoint_every = 250
    c.keep_checkpoints = 1
    c.eval_every = 250
    c.eval.metric = "uar"
    c.eval.patience = 6

    # The encoder: filled from init.path when given; else this architecture, randomly initialised.
    c.encoder = ml_collections.ConfigDict()
    c.encoder.method = "vq_mae_av"
    c.encoder.model = vq_mae_av.get_config("runlocal" if arg.runlocal else None).model
    c.encoder.norm_stats = ()            # the encoder's log-mel (mean, std), from init.path (M2D); () none / default

    c.model = ml_collections.ConfigDict()
    c.model.modalities = MODALITIES[arg.modalities]
    c.model.num_classes = 0              # 0: the dataset's number of classes (filled in at train time)
    c.model.class_names = ()             # filled in at train time
    c.model.head = arg.head              # attention | query
    c.model.num_heads = 4
    c.model.num_queries = 4              # query head
    c.model.head_depth = 1               # query head: transformer blocks over [queries; tokens]
    c.model.mlp_ratio = 2.0
    c.model.dropout = 0.1                # on the head's input features
    c.model.label_smoothing = 0.1
    c.model.focal_gamma = 0.0            # > 0: focal loss (1 − p)^γ · CE
    # task=regress: predict an emotion corpus's ratings (data_pipelines/emotion.py) instead of its label
    c.model.task = arg.task              # classify | regress
    c.model.dimensions = ("arousal", "valence", "dominance")   # regress: the rating fields predicted
    c.model.regression_loss = "ccc"      # regress: ccc (1 − mean CCC) | ccc+mse
    c.model.target_mean = ()             # regress: the head's initial bias; filled in at train time (training means)
    if arg.task == "regress":
        c.eval.metric = "ccc"            # mean CCC over the dimensions on the validation split
    # text=1: audio-text fusion, the transcript's sentence embedding beside the pooled audio features
    c.model.text_fusion = arg.text
    c.model.text_dim = 0                 # filled in at train time (the stored embeddings' width)
    c.model.text_dropout = 0.5           # text=1: share of training examples whose text is zeroed (modality dropout)
    c.data.asr_model = ""                # text=1: a local ASR model directory that transcribes clips without transcript
    if arg.text:
        c.data.text_field = "transcript"

    c.init.params = ()                   # (): the whole encoder of init.path
    c.optim.base_lr = 4e-3               # per 256: the head's peak lr = 4e-3 · 64 / 256 = 1e-3
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.05
    c.optim.warmup_fraction = 0.05
    c.optim.grad_clip = 1.0
    c.optim.lr_mult.encoder = 0.5        # the encoder at half the head's lr; 0 freezes it

    if arg.runlocal:
        c.total_steps = 40
        c.batch_size = 8
        c.log_every = 10
        c.checkpoint_every = 20
        c.eval_every = 20
        c.eval.patience = 0
        c.model.num_heads = 2
    return c
