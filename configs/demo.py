"""The `make demo` run: a small M2D pretrained on the embedded procedural corpus, on a laptop CPU.

  avpretrain data build demo --out runs/demo/data
  avpretrain train --config=configs/demo.py --config.data.dir=runs/demo/data --workdir=runs/demo/train
"""
from avpretrain.config import parse_arg
from configs import m2d


def get_config(arg=None):
    arg = parse_arg(arg, steps=1200)
    c = m2d.get_config("size=tiny")
    c.total_steps = arg.steps
    c.batch_size = 64
    c.log_every = 25
    c.checkpoint_every = 400
    c.keep_checkpoints = 2
    c.data.stats_batches = 8
    # A 1.9 s crop of the 2–4 s clips: 5 × 12 patches.
    c.model.input_frames = 192
    c.model.width, c.model.depth, c.model.num_heads = 192, 4, 3
    c.model.pred_width, c.model.pred_depth, c.model.pred_heads = 128, 2, 4
    # Short run: a larger learning rate and a faster-moving target than the 300-epoch recipe.
    c.optim.base_lr = 1.5e-3
    c.optim.warmup_fraction = 0.1
    c.ema.start, c.ema.end = 0.995, 0.9995
    return c
