"""Multi-corpus pre-finetuning for few-shot emotion recognition (Chen & Yu, Interspeech 2023;
``method="prefinetune"``, ``avpretrain/models/prefinetune.py``).

One shared encoder (an M2D-family export: ``init.path``), one linear head per corpus of
``data.dirs``; each batch from one corpus, drawn in proportion to the corpora's sizes; the loss
divided by ln(#classes of that corpus). The export is an encoder like the one it started from::

  avpretrain train --config=configs/prefinetune.py --config.init.path=$ENCODER \\
      --config.data.dirs=$CREMA_D,$IEMOCAP,$MSP_PODCAST,$RAVDESS --workdir=$RUN
  avpretrain export --workdir=$RUN --out=$PREFINETUNED
  avpretrain eval few-shot --model=$ENCODER,$PREFINETUNED --data=$ESD

The paper's sweep, one pre-finetuned encoder per non-empty subset of the corpora (15 for four; the
plain encoder makes 16), each in ``$W/<i>_use=<a+b>``::

  avpretrain sweep --config=configs/prefinetune.py --config.init.path=$ENCODER \\
      --config.data.dirs=$CREMA_D,$IEMOCAP,$MSP_PODCAST,$RAVDESS --workdir=$W --run

Corpora are named by their directory (``--config.data.names=a,b,…`` to choose); ``data.use=a+b``
pre-finetunes on a subset. No validation: the few-shot protocol downstream selects and scores.

Config arguments: ``runlocal`` (a smoke test: 20 steps of 8 clips).
"""
import itertools

import ml_collections

from avpretrain.config import parse_arg
from configs.common import base_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = base_config()
    c.method = "prefinetune"
    c.total_steps = 4000
    c.batch_size = 32
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 1
    c.init.params = ()                      # unused: the encoder's attributes (M2D.ENCODER) of init.path

    c.data.dirs = ()                        # the emotion corpora (datasets with class labels)
    c.data.names = ()                       # (): each directory's name
    c.data.use = ""                         # "a+b": pre-finetune on these corpora only ("": all); the sweep sets it

    # The encoder: the architecture of init.path (filled in at train time).
    c.model = ml_collections.ConfigDict()

    c.prefinetune = ml_collections.ConfigDict()
    c.prefinetune.scale_loss = True         # divide each batch's cross-entropy by ln(#classes of its corpus)
    # filled in at train time from the corpora used:
    c.prefinetune.init_method = ""
    c.prefinetune.corpora = ()
    c.prefinetune.dirs = ()
    c.prefinetune.num_classes = ()
    c.prefinetune.class_names = ()          # one "a,b,c" string per corpus
    c.prefinetune.sizes = ()                # training clips per corpus: the sampling weights

    c.optim.base_lr = 1e-3                  # per 256 (1.25e-4 at batch 32)
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.01
    c.optim.warmup_fraction = 0.1
    c.optim.grad_clip = 1.0
    # The whole encoder at the heads' rate: pre-finetuning exists to change the encoder. At 0.1 × (the
    # first demo run) 300 steps moved its weights by 0.5 % and the few-shot figures did not change.
    c.optim.lr_mult.encoder = 1.0

    if arg.runlocal:
        c.total_steps = 20
        c.batch_size = 8
        c.log_every = 5
        c.checkpoint_every = 10
    return c


def get_sweep(arg=None, config=None):
    """Every non-empty subset of ``data.dirs`` (as given on the command line), smallest first."""
    from avpretrain.models import prefinetune

    dirs = tuple(config.data.dirs) if config is not None else ()
    if not dirs:
        raise ValueError("configs/prefinetune.py sweeps the subsets of the corpora: give --config.data.dirs=a,b,...")
    names = prefinetune.corpus_names(dirs, tuple(config.data.names))
    return [{"data.use": "+".join(s)} for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]
