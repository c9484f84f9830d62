"""Vector quantisation with an EMA codebook (VQ-VAE-2 style), the bottleneck of the VQ-VAE tokenizers.

Shapes: N encodings (all leading axes flattened), K codes, D code width.

The codebook and its EMA statistics are ``Codebook`` variables, not ``nnx.Param``: the default step
(``step.default_update``) differentiates and optimises ``nnx.Param`` only, and keeps the in-place
updates that ``__call__(..., train=True)`` makes to these variables.

EMA update (train=True), over the whole (global) batch:
    cluster_size ← decay·cluster_size + (1 − decay)·counts
    embed_sum    ← decay·embed_sum    + (1 − decay)·one_hotᵀ z
    codebook     ← embed_sum / smoothed,  smoothed = n·(cluster_size + eps) / (n + K·eps),
                   n = Σ cluster_size  (Laplace smoothing).
Under ``jit`` with batch-sharded inputs the sums over the batch are global (XLA inserts the
all-reduce); no per-device statistics exist.

Initial state: codebook ~ N(0, 1) (the reference's ``VectorQuantizerEMA`` draws ``normal_()``),
cluster_size = 1 and embed_sum = codebook, so that the smoothed ratio embed_sum / smoothed equals the
codebook at step 0 and a code that receives no encodings keeps its vector (its sum and size decay
together) instead of blowing up as ``d·e / ε`` does with zero-initialised sizes.

Dead-code restart (train=True, ``dead_after > 0``): a code not chosen by any encoding of the batch
for more than ``dead_after`` consecutive training steps is replaced by an encoding of the current
batch, drawn with ``rng`` (without replacement when the batch has at least K encodings); its
vector and embed_sum become that encoding, its cluster_size 1 and its counter 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

HIGHEST = jax.lax.Precision.HIGHEST


class Codebook(nnx.Variable):
    """Non-trainable VQ state (codebook, EMA statistics, usage counters), updated in place."""


class VectorQuantizer(nnx.Module):
    def __init__(self, num_codes: int, dim: int, *, decay: float = 0.99, eps: float = 1e-5,
                 commitment: float = 0.25, dead_after: int = 100, rngs: nnx.Rngs):
        if dead_after < 0:
            raise ValueError(f"dead_after must be >= 0, got {dead_after}")
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.eps, self.commitment, self.dead_after = decay, eps, commitment, dead_after
        embed_KD = jax.random.normal(rngs.params(), (num_codes, dim), jnp.float32)
        self.codebook = Codebook(embed_KD)
        self.embed_sum = Codebook(embed_KD)
        self.cluster_size = Codebook(jnp.ones((num_codes,), jnp.float32))
        self.unused_steps = Codebook(jnp.zeros((num_codes,), jnp.int32))

    def lookup(self, codes):
        """Code vectors [..., D] (float32) of int ``codes`` [...]."""
        return jnp.take(self.codebook[...], codes, axis=0)

    def distances(self, z_ND):
        """Squared Euclidean distances [N, K] = ‖z‖² − 2 z·e + ‖e‖², float32."""
        e_KD = self.codebook[...]
        z_ND = z_ND.astype(jnp.float32)
        return (jnp.sum(z_ND ** 2, -1, keepdims=True)
                - 2.0 * jnp.matmul(z_ND, e_KD.T, precision=HIGHEST)
                + jnp.sum(e_KD ** 2, -1)[None])

    def __call__(self, z, *, train: bool, rng=None):
        """``z`` [..., D] → (z_q [..., D] (straight-through), codes int32 [...], aux dict).

        aux: ``commitment_loss`` commitment·mean((z − sg(q))²), ``perplexity`` exp(entropy of the
        batch's code usage), ``usage`` fraction of the K codes used by the batch, ``restarted``
        number of codes restarted by this call (0 unless training with ``dead_after > 0``).
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"last axis of z is {z.shape[-1]}, the codebook width is {self.dim}")
        restart = train and self.dead_after > 0
        if restart and rng is None:
            raise ValueError("VectorQuantizer(train=True) with dead_after > 0 needs rng for code restarts")
        lead = z.shape[:-1]
        K = self.num_codes
        z_ND = z.reshape(-1, self.dim).astype(jnp.float32)
        N = z_ND.shape[0]

        codes_N = jnp.argmin(self.distances(z_ND), axis=-1).astype(jnp.int32)
        q_ND = self.lookup(codes_N)
        onehot_NK = jax.nn.one_hot(codes_N, K, dtype=jnp.float32)
        counts_K = jnp.sum(onehot_NK, axis=0)
        probs_K = counts_K / N
        entropy = -jnp.sum(jnp.where(probs_K > 0, probs_K * jnp.log(jnp.where(probs_K > 0, probs_K, 1.0)), 0.0))
        aux = {
            "commitment_loss": self.commitment * jnp.mean((z_ND - jax.lax.stop_gradient(q_ND)) ** 2),
            "perplexity": jnp.exp(entropy),
            "usage": jnp.mean((counts_K > 0).astype(jnp.float32)),
            "restarted": jnp.zeros((), jnp.int32),
        }

        if train:
            zs = jax.lax.stop_gradient(z_ND)
            d = self.decay
            size_K = d * self.cluster_size[...] + (1 - d) * counts_K
            sum_KD = d * self.embed_sum[...] + (1 - d) * jnp.matmul(onehot_NK.T, zs, precision=HIGHEST)
            n = jnp.sum(size_K)
            smoothed_K = n * (size_K + self.eps) / (n + K * self.eps)
            embed_KD = sum_KD / smoothed_K[:, None]
            unused_K = jnp.where(counts_K > 0, 0, self.unused_steps[...] + 1).astype(jnp.int32)
            if restart:
                dead_K = unused_K > self.dead_after
                if N >= K:
                    _, idx_K = jax.lax.top_k(jax.random.uniform(rng, (N,)), K)  # K distinct, O(N)
                else:
                    idx_K = jax.random.randint(rng, (K,), 0, N)
                new_KD = zs[idx_K]
                embed_KD = jnp.where(dead_K[:, None], new_KD, embed_KD)
                sum_KD = jnp.where(dead_K[:, None], new_KD, sum_KD)
                size_K = jnp.where(dead_K, 1.0, size_K)
                unused_K = jnp.where(dead_K, 0, unused_K)
                aux["restarted"] = jnp.sum(dead_K.astype(jnp.int32))
            self.cluster_size[...] = size_K
            self.embed_sum[...] = sum_KD
            self.codebook[...] = embed_KD
            self.unused_steps[...] = unused_K

        z_q = z + jax.lax.stop_gradient(q_ND.reshape(z.shape).astype(z.dtype) - z)
        return z_q, codes_N.reshape(lead), aux
