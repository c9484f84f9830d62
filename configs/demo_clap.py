"""The `make demo-clap` runs: M2D-CLAP (stage 1) then M2D2 (stage 2) on the captioned demo corpus.

  avpretrain data build demo --out runs/demo_clap/data
  avpretrain data embed-captions --data runs/demo_clap/data
  avpretrain train --config=configs/demo_clap.py:stage=1 --config.data.dir=DATA --workdir=W1
  avpretrain train --config=configs/demo_clap.py:stage=2 --config.data.dir=DATA --config.init.path=W1 --workdir=W2

The stage-1 model is `configs/demo.py`'s small M2D; CPU-sized step counts.
"""
from avpretrain.config import parse_arg
from configs import demo, m2d_clap


def get_config(arg=None):
    arg = parse_arg(arg, stage=1, steps=0)
    c = m2d_clap.get_config(f"stage={arg.stage},size=tiny")
    small = demo.get_config()
    for key in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        c[key] = small[key]
    c.data.stats_batches = small.data.stats_batches
    for key in ("input_frames", "width", "depth", "num_heads", "pred_width", "pred_depth", "pred_heads"):
        c.model[key] = small.model[key]
    c.optim.warmup_fraction = small.optim.warmup_fraction
    if arg.stage == 1:
        c.total_steps = arg.steps or 2000
        c.optim.base_lr = small.optim.base_lr
        c.ema.start, c.ema.end = small.ema.start, small.ema.end
    else:
        c.total_steps = arg.steps or 800
        c.optim.base_lr = 3e-3
    return c
