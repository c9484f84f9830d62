"""VQ-MAE-AV visual tokenizer: a VQ-VAE over 96×96 RGB face frames, 24×24 codes of 512 per frame.

Full run (Adam 1e-3 as the audio tokenizer; 32 crops × 8 frames = 256 face frames per step, no
weight decay, a short warm-up then cosine decay)::

  avpretrain train --config=configs/vqvae_video.py --config.data.dir=$DATA --workdir=$WORKDIR

Smoke test on a laptop CPU (seconds)::

  avpretrain train --config=configs/vqvae_video.py:runlocal --config.data.dir=$DATA --workdir=/tmp/vqvae_video

Export and use (``Tokenizer``: uint8 frames [B, T, 96, 96, 3] → codes [B, T, 24, 24] → frames in [0, 1])::

  avpretrain export --workdir=$WORKDIR --out=$EXPORT
  tok = avpretrain.load_pretrained("$EXPORT"); codes = tok.encode(frames); recon = tok.decode(codes)
"""
import ml_collections

import avpretrain.models.vqvae  # noqa: F401  registers the method (until method.BUILTIN names it)
from avpretrain.config import parse_arg
from configs.common import base_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = base_config()
    c.method = "vqvae_video"
    c.total_steps = 100_000
    c.batch_size = 32              # crops; × model.frames = 256 face frames per step

    c.model = ml_collections.ConfigDict()
    c.model.frames = 8             # consecutive 25 fps frames per crop
    c.model.num_codes = 512
    c.model.code_dim = 4
    c.model.decay = 0.99           # EMA codebook
    c.model.commitment = 0.25
    c.model.dead_after = 100       # restart a code unused for this many steps (0: never)
    c.model.hidden = 128           # encoder/decoder channels (the reference's)
    c.model.residual_blocks = 2
    c.model.residual_hidden = 32

    c.optim.weight_decay = 0.0
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.warmup_fraction = 0.01
    c.optim.grad_clip = 10.0

    if arg.runlocal:
        c.total_steps = 20
        c.batch_size = 8
        c.model.frames = 2
        c.model.hidden, c.model.residual_hidden = 32, 16   # a narrower network: seconds per step on a CPU
        c.model.dead_after = 2
        c.log_every = 5
        c.checkpoint_every = 10
    c.optim.base_lr = 1e-3 * 256 / c.batch_size   # peak lr = base_lr · batch / 256 = 1e-3 (Adam 1e-3)
    return c
