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
from avpretrain.config import parse_arg
from configs.common import vqvae_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = vqvae_config("vqvae_video", arg.runlocal,
                     frames=8, num_codes=512, code_dim=4, hidden=128, residual_hidden=32, local_frames=2)
    if arg.runlocal:
        c.model.hidden, c.model.residual_hidden = 32, 16   # a narrower network: seconds per step on a CPU
    return c
