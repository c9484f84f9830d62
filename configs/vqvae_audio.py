"""VQ-MAE-AV audio tokenizer: a VQ-VAE over 513-bin power-spectrum frames, 64 codes of 256 per frame.

Full run (the reference: Adam 1e-3, batches of 1024 spectrum frames; here 32 crops × 32 frames of
20 ms, no weight decay, a short warm-up then cosine decay)::

  avpretrain train --config=configs/vqvae_audio.py --config.data.dir=$DATA --workdir=$WORKDIR

Smoke test on a laptop CPU (seconds)::

  avpretrain train --config=configs/vqvae_audio.py:runlocal --config.data.dir=$DATA --workdir=/tmp/vqvae_audio

Export and use (``Tokenizer``: waveforms [B, S] at 16 kHz → codes [B, S // 320, 64] → power spectra)::

  avpretrain export --workdir=$WORKDIR --out=$EXPORT
  tok = avpretrain.load_pretrained("$EXPORT"); codes = tok.encode(waves); power = tok.decode(codes)
"""
import ml_collections

import avpretrain.models.vqvae  # noqa: F401  registers the method (until method.BUILTIN names it)
from avpretrain.config import parse_arg
from configs.common import base_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = base_config()
    c.method = "vqvae_audio"
    c.total_steps = 100_000
    c.batch_size = 32              # crops; × model.frames = 1024 spectrum frames per step

    c.model = ml_collections.ConfigDict()
    c.model.frames = 32            # power-spectrum frames (320 samples each) per crop
    c.model.num_codes = 256
    c.model.code_dim = 8
    c.model.decay = 0.99           # EMA codebook
    c.model.commitment = 0.25
    c.model.dead_after = 100       # restart a code unused for this many steps (0: never)
    c.model.hidden = 32            # encoder/decoder channels (the reference's)
    c.model.residual_blocks = 2
    c.model.residual_hidden = 32

    c.optim.weight_decay = 0.0
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.warmup_fraction = 0.01
    c.optim.grad_clip = 10.0

    if arg.runlocal:
        c.total_steps = 20
        c.batch_size = 8
        c.model.frames = 25
        c.model.dead_after = 2
        c.log_every = 5
        c.checkpoint_every = 10
    c.optim.base_lr = 1e-3 * 256 / c.batch_size   # peak lr = base_lr · batch / 256 = 1e-3 (Adam 1e-3)
    return c
