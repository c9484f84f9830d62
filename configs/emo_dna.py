"""Emo-DNA unsupervised cross-corpus adaptation (Ye et al., ACM MM 2023; ``method="emo_dna"``,
``avpretrain/models/emo_dna.py``): a labelled source corpus, an unlabelled target corpus, an
exported M2D-family encoder as the backbone::

  avpretrain train --config=configs/emo_dna.py --config.init.path=$ENCODER \\
      --config.data.dir=$SOURCE --config.data.target_dir=$TARGET --workdir=$RUN
  avpretrain train --config=configs/emo_dna.py:baseline --config.init.path=$ENCODER \\
      --config.data.dir=$SOURCE --workdir=$RUN_BASELINE          # the source-only baseline
  avpretrain export --workdir=$RUN --out=$MODEL
  avpretrain eval classify --model=$MODEL --data=$TARGET --split=test     # UAR and WAR (accuracy) on the target

The target's labels are never read in training. Validation (best step, early stop) is on the
source's validation split. ``--config.eval.dir=$TARGET`` validates on a labelled held-out split of
the target instead (``eval.split``, e.g. validation): the run then selects with target labels, and
says so in its log and ``selected.json``; it is no longer unsupervised adaptation.

The classes of source and target must match by name (IEMOCAP → MSP-Podcast: neutral, happy, sad,
angry …); ``--config.data.classes=neutral,happy,sad,angry`` adapts on a shared subset: source clips
of other classes are left out of training and validation, target clips of other classes out of
evaluation (the unlabelled target stream is read whole: its labels are unknown to the method).

Config arguments: ``baseline`` (source only, cross-entropy), ``runlocal`` (a smoke test: 20 steps of 8 clips).
"""
import ml_collections

from avpretrain.config import parse_arg
from configs.common import base_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, baseline=False)
    c = base_config()
    c.method = "emo_dna"
    c.total_steps = 3000
    c.batch_size = 64                    # adapting: 32 source + 32 target clips per step
    c.log_every = 50
    c.checkpoint_every = 250
    c.keep_checkpoints = 1
    c.eval_every = 250
    c.eval.metric = "uar"
    c.eval.patience = 6
    c.eval.dir = ""                      # "": validate on the source; a path: a labelled held-out target split (supervised selection)
    c.init.params = ()                   # unused: the backbone's attributes (M2D.ENCODER) of init.path

    c.data.target_dir = ""               # the unlabelled target corpus (its train split)

    # The backbone: the architecture of init.path, and the classes (filled in at train time).
    c.model = ml_collections.ConfigDict()

    c.emo_dna = ml_collections.ConfigDict()
    c.emo_dna.adapt = not arg.baseline   # False: the source-only baseline (cross-entropy on the source only)
    c.emo_dna.init_method = ""           # filled in: the backbone export's method
    c.emo_dna.hidden = 256               # emotion / corpus encoder MLP: scene embedding → hidden → dim
    c.emo_dna.dim = 128
    c.emo_dna.temperature = 0.1          # InfoNCE against the prototypes
    c.emo_dna.momentum = 0.9             # prototype EMA
    c.emo_dna.threshold_momentum = 0.99  # the adaptive thresholds' EMA (FreeMatch: 0.999 over far longer runs)
    c.emo_dna.ramp_fraction = 0.2        # the alignment losses rise linearly over this share of training
    c.emo_dna.weights = ml_collections.ConfigDict(
        {"decouple": 1.0, "difference": 0.1, "corpus_align": 1.0, "class_align": 1.0,
         "diversity": 1.0})               # diversity: ours (against pseudo-label collapse), 0 turns it off

    c.optim.base_lr = 4e-3               # per 256: the heads' peak lr = 1e-3 at batch 64
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.05
    c.optim.warmup_fraction = 0.05
    c.optim.grad_clip = 1.0
    c.optim.lr_mult.encoder = 0.1        # the backbone at a tenth of the heads' lr; 0 freezes it

    if arg.runlocal:
        c.total_steps = 20
        c.batch_size = 8
        c.log_every = 5
        c.checkpoint_every = 10
        c.eval_every = 10
        c.eval.patience = 0
    return c
