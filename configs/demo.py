"""The `make demo` run: a small M2D pretrained on the embedded procedural corpus, on a laptop CPU.

  avpretrain data build demo --out runs/demo/data
  avpretrain train --config=configs/demo.py --config.data.dir=runs/demo/data --workdir=runs/demo/train

It is `configs/m2d.py:size=tiny,small_data` (the small-data recipe, every value there): a
128-wide 4-block encoder, 1.92 s crops of the 2–4 s clips, lr 3e-3 per 256, EMA 0.99→0.999.
About 10 minutes on 2 CPU cores (0.19 s/step × 3000 steps of 32 clips ≈ 50 epochs of 1920 clips).
"""
from avpretrain.config import parse_arg
from configs import m2d


def get_config(arg=None):
    arg = parse_arg(arg, steps=3000)
    return m2d.get_config(f"size=tiny,small_data,steps={arg.steps}")
