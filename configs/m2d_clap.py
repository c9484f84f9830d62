"""Two-stage audio-language pretraining: M2D-CLAP (stage 1) then M2D2 (stage 2).

Captions are embedded once, offline, with a sentence model (frozen targets)::

  avpretrain data embed-captions --data=$DATA [--model=NAME_OR_PATH]

Stage 1 (M2D + 0.01·CLAP; the paper's recipe is M2D's: base, batch 2048, 300 epochs)::

  avpretrain train --config=configs/m2d_clap.py:stage=1,size=base --config.data.dir=$DATA --workdir=$W1

Stage 2 (semantic head + trainable text MLP over the stage-1 encoder, frozen by default)::

  avpretrain train --config=configs/m2d_clap.py:stage=2,size=base --config.data.dir=$DATA \\
      --config.init.path=$W1 --workdir=$W2

``runlocal`` makes either a seconds-long CPU run.
"""
import ml_collections

from avpretrain.config import parse_arg
from configs import m2d


def get_config(arg=None):
    arg = parse_arg(arg, stage=1, size="base", runlocal=False)
    if arg.stage not in (1, 2):
        raise ValueError(f"configs/m2d_clap.py: stage={arg.stage!r}; use stage=1 or stage=2")
    c = m2d.get_config(f"size={arg.size},runlocal={arg.runlocal}")
    c.data.use_captions = True
    c.model.text_dim = ml_collections.config_dict.placeholder(int)  # filled from the stored embeddings
    if arg.stage == 1:
        c.method = "m2d_clap"
        c.model.clap_weight = 0.01          # loss = M2D + clap_weight · CLAP
        return c

    c.method = "m2d2"
    c.init.path = ""                        # required: the stage-1 workdir or export
    c.model.head_depth = 2                  # semantic-head blocks (1–4)
    c.model.text_hidden = ml_collections.config_dict.placeholder(int)  # None: 2·width
    c.optim.lr_mult.encoder = 0.0           # 0: frozen stage-1 encoder; e.g. 0.1 to fine-tune it slowly
    c.total_steps = 30_000 if not arg.runlocal else c.total_steps
    c.optim.base_lr = 1e-4
    c.optim.warmup_fraction = 0.05
    del c["ema"]                            # no target encoder in stage 2
    return c
