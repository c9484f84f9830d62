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
from avpretrain.config import parse_arg
from configs.common import vqvae_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = vqvae_config("vqvae_audio", arg.runlocal,
                     frames=32, num_codes=256, code_dim=8, hidden=32, residual_hidden=32, local_frames=25)
    return c
