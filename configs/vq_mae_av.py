"""VQ-MAE-AV pretraining: a masked autoencoder over the VQ-VAE codes of audio and video
(``avpretrain/models/vq_mae_av.py``); ``variant=audio`` is the audio-only VQ-MAE-S.

It reads a token dataset: clips tokenized with trained ``vqvae_audio`` / ``vqvae_video`` exports
(``avpretrain data tokenize``), 2 s windows of 50 video code frames (24×24 codes, 25 fps) and the
aligned 100 audio code frames (64 codes, 50 per s)::

  avpretrain train --config=configs/vq_mae_av.py --config.data.dir=$TOKENS --workdir=$WORKDIR
  avpretrain train --config=configs/vq_mae_av.py:variant=audio --config.data.dir=$TOKENS --workdir=$WORKDIR

Masking ratios drawn per step from Dirichlet(1, 1) (r_v + r_a = 1) instead of the fixed ones::

  avpretrain train --config=configs/vq_mae_av.py --config.model.mask_mode=dirichlet ...

Smoke test on a laptop CPU (20 steps of 8 clips, 0.4 s windows, an 80-wide 2-block encoder)::

  avpretrain train --config=configs/vq_mae_av.py:runlocal --config.data.dir=$TOKENS --workdir=/tmp/vq_mae_av

Batch 256, so lr = base_lr · 256 / 256 = 1e-3 (the reference's AdamW 1e-3); the reference fixes no
batch for this model. Memory is dominated by the per-code logits of the masked tokens: float32
[M, 80, 512] video + [M, 20, 256] audio per example (≈ 47 + 6.6 MB at the fixed 0.8 ratios; in
"dirichlet" mode the heads run over all 360 + 320 tokens, ≈ 59 + 6.6 MB), a few times that with
the softmax and the backward pass: shard the batch (the default mesh puts it on every device) or
lower it (lr follows) if it does not fit.
"""
import ml_collections

from avpretrain.config import parse_arg
from configs.common import base_config

VARIANTS = {"av": ("video", "audio"), "audio": ("audio",)}


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, variant="av")
    if arg.variant not in VARIANTS:
        raise ValueError(f"configs/vq_mae_av.py: unknown variant {arg.variant!r}; choose one of {sorted(VARIANTS)}")
    c = base_config()
    c.method = "vq_mae_av"
    c.total_steps = 100_000
    c.batch_size = 256

    c.model = ml_collections.ConfigDict()
    c.model.modalities = VARIANTS[arg.variant]
    # The one token layout (models/vq_mae_av.py TokenLayout).
    c.model.frames = 50            # video code frames per window (2 s); audio: 2 × frames
    c.model.tube = 5               # video token: tube frames × patch × patch codes (80 codes)
    c.model.patch = 4
    c.model.freq_group = 4         # audio token: freq_group codes × t_audio frames (20 codes)
    c.model.t_audio = 5
    # Encoder / decoder (the reference: 6 blocks, 4 heads, width 320, MLP 2×; decoder 3 blocks).
    c.model.width = 320            # a multiple of both 80 (video) and 20 (audio) codes per token
    c.model.depth = 6
    c.model.num_heads = 4
    c.model.mlp_ratio = 2.0
    c.model.dec_width = 320
    c.model.dec_depth = 3
    c.model.dec_heads = 4
    # Masking: fixed ratios, or per step (r_v, r_a) ~ Dirichlet(1, 1) ("dirichlet": all tokens run
    # through the encoder with an attention mask, see the model's docstring for the cost).
    c.model.mask_mode = "fixed"    # fixed | dirichlet (needs both modalities)
    c.model.mask_ratio_video = 0.8
    c.model.mask_ratio_audio = 0.8
    c.model.contrastive_weight = 1.0   # NT-Xent between pooled audio and video; 0: off (audio variant: unused)
    c.model.temperature = 0.5
    c.model.dtype = "float32"      # compute dtype; "bfloat16" on TPU/GPU (params and optimizer stay float32)
    c.model.attention = "auto"
    c.model.remat = "none"
    c.model.scan_layers = False    # true: blocks stacked and scanned (configs/m2d.py says what it costs)

    c.optim.base_lr = 1e-3         # per 256: lr = 1e-3 · batch / 256
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.05
    c.optim.warmup_fraction = 0.05    # warm-up then cosine to 0 (the reference gives no warm-up length)

    # What a later run (e.g. fine-tuning) takes from this one with --config.init.path: the encoder.
    c.init.params = tuple(f"{m}_{p}" for m in c.model.modalities for p in ("embed", "pos")) + (
        "modality_embed", "blocks", "norm")

    if arg.runlocal:
        c.total_steps = 20
        c.batch_size = 8
        c.log_every = 5
        c.checkpoint_every = 10
        c.model.frames = 10        # 0.4 s: 2 × 6 × 6 video + 4 × 16 audio tokens
        c.model.width = 80         # the smallest width that 80 and 20 codes per token divide
        c.model.depth = 2
        c.model.num_heads = 2
        c.model.dec_width = 64
        c.model.dec_depth = 1
        c.model.dec_heads = 2
    return c
