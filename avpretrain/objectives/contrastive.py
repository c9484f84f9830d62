"""Contrastive objectives: symmetric InfoNCE (M2D-CLAP / M2D2) and NT-Xent (VQ-MAE-AV).

Both take global ``jax.Array``s. Under ``jit`` with the batch axis sharded over the
data-parallel mesh axes they are written with plain ``jnp`` ops on the full [B, D] arrays, so
XLA inserts the all-gathers it needs and every example sees the negatives of the whole global
batch (the equivalent of CLIP's ``all_gather`` with gradients). The logits are computed in
float32 whatever the input dtype.

Shapes: B global batch, D embedding width.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def l2_normalize(x_BD, eps: float = 1e-12):
    x_BD = x_BD.astype(jnp.float32)
    return x_BD / jnp.maximum(jnp.linalg.norm(x_BD, axis=-1, keepdims=True), eps)


def _check_pair(name_a, a, name_b, b):
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must both be [B, D] with equal shapes, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def symmetric_infonce(audio_BD, text_BD, logit_scale):
    """CLIP-style symmetric InfoNCE over the whole global batch: (loss, metrics).

    logits_BB = exp(min(logit_scale, LOGIT_SCALE_MAX)) · â @ t̂ᵀ with â, t̂ L2-normalised;
    loss = (CE(logits_BB, diag) + CE(logits_BBᵀ, diag)) / 2.

    The clamp is ``jnp.minimum``: below the maximum the gradient wrt ``logit_scale`` flows
    unchanged; above it the gradient is exactly zero (the parameter stops growing, as the
    reference's clamp at log 100 does). ``logit_scale`` is the learnable *log* scale, initialised
    to ``LOGIT_SCALE_INIT``.

    metrics: ``clap_loss``, ``clap_logit_scale`` (the clamped, exponentiated scale) and
    ``clap_a2t_acc`` (in-batch top-1 accuracy of audio → text).
    """
    _check_pair("audio_BD", audio_BD, "text_BD", text_BD)
    scale = jnp.exp(jnp.minimum(jnp.asarray(logit_scale, jnp.float32), LOGIT_SCALE_MAX))
    a_BD, t_BD = l2_normalize(audio_BD), l2_normalize(text_BD)
    logits_BB = scale * jnp.einsum("id,jd->ij", a_BD, t_BD, preferred_element_type=jnp.float32)
    labels_B = jnp.arange(logits_BB.shape[0])
    diag_B = jnp.diagonal(logits_BB)
    loss_a2t = jnp.mean(jax.nn.logsumexp(logits_BB, axis=1) - diag_B)
    loss_t2a = jnp.mean(jax.nn.logsumexp(logits_BB, axis=0) - diag_B)
    loss = 0.5 * (loss_a2t + loss_t2a)
    metrics = {
        "clap_loss": loss,
        "clap_logit_scale": scale,
        "clap_a2t_acc": jnp.mean((jnp.argmax(logits_BB, axis=1) == labels_B).astype(jnp.float32)),
    }
    return loss, metrics


def _squeeze_pooled(name, x):
    """[B, 1, D] (attention-pooled tokens) → [B, D]; any other non-2-D shape is an error."""
    if x.ndim == 3 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [B, D] or [B, 1, D] (pooled tokens), got {tuple(x.shape)}")
    return x


def nt_xent(a_BD, b_BD, temperature: float = 0.5):
    """NT-Xent (SimCLR) between two views, here pooled audio and video tokens.

    z = concat(â, b̂) [2B, D] (L2-normalised), sim = z zᵀ / temperature with the self-similarity
    removed; the positive of row i is its cross-modal partner (i ± B); loss = mean over the 2B
    rows of the cross-entropy. Accepts [B, D] or [B, 1, D] (a singleton middle axis is squeezed);
    anything else, or unequal shapes, raises ValueError.
    """
    a_BD, b_BD = _squeeze_pooled("a_BD", a_BD), _squeeze_pooled("b_BD", b_BD)
    _check_pair("a_BD", a_BD, "b_BD", b_BD)
    B = a_BD.shape[0]
    z_ND = jnp.concatenate([l2_normalize(a_BD), l2_normalize(b_BD)], axis=0)
    sim_NN = jnp.einsum("id,jd->ij", z_ND, z_ND, preferred_element_type=jnp.float32) / temperature
    sim_NN = jnp.where(jnp.eye(2 * B, dtype=bool), -jnp.inf, sim_NN)
    pos_N = jnp.concatenate([jnp.arange(B, 2 * B), jnp.arange(B)])
    pos_logit_N = jnp.take_along_axis(sim_NN, pos_N[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(sim_NN, axis=1) - pos_logit_N)
