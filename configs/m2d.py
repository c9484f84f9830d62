"""M2D (Masked Modeling Duo) pretraining.

Full run (paper: AudioSet-2M, batch 2048, 300 epochs ≈ 293k steps), on a pod::

  avpretrain train --config=configs/m2d.py:size=base --config.data.dir=$DATA --workdir=$WORKDIR

On a laptop CPU::

  avpretrain train --config=configs/m2d.py:size=tiny,runlocal --config.data.dir=$DATA --workdir=/tmp/m2d

Sweep (printed, or run one after another with --run)::

  avpretrain sweep --config=configs/m2d.py:size=tiny,runlocal --workdir=/tmp/sweep
"""
import ml_collections

from avpretrain.config import parse_arg
from avpretrain.models.m2d import SIZES
from configs.common import base_config


def get_config(arg=None):
    arg = parse_arg(arg, size="base", runlocal=False)
    if arg.size not in SIZES:
        raise ValueError(f"configs/m2d.py: unknown size {arg.size!r}; choose one of {sorted(SIZES)}")
    c = base_config()
    c.method = "m2d"
    c.total_steps = 293_000
    c.batch_size = 2048

    c.model = ml_collections.ConfigDict()
    c.model.size = arg.size        # tiny | small | base | large (models/m2d.py SIZES)
    c.model.input_frames = 608     # 6.08 s crops of 10 s clips
    c.model.n_mels = 80
    c.model.patch = 16
    c.model.mask_ratio = 0.7
    c.model.dtype = "float32"      # "bfloat16" for TPU/GPU compute (params stay float32)
    for field in ("width", "depth", "num_heads", "pred_width", "pred_depth", "pred_heads"):
        c.model[field] = ml_collections.config_dict.placeholder(int)   # None: the size's value

    c.ema = ml_collections.ConfigDict()
    c.ema.start = 0.99995
    c.ema.end = 0.99999

    if arg.runlocal:
        c.total_steps = 20
        c.batch_size = 16
        c.model.input_frames = 96
        c.log_every = 5
        c.checkpoint_every = 10
        c.data.stats_batches = 2
        c.ema.start, c.ema.end = 0.99, 0.999
    return c


def get_sweep(arg=None):
    """Learning rate × mask ratio, as in the M2D ablations."""
    return [{"optim.base_lr": lr, "model.mask_ratio": mr} for lr in (1e-4, 3e-4) for mr in (0.6, 0.7)]
