"""VQ-MAE-AV (Sadok et al.): a multimodal masked autoencoder over VQ-VAE codes, in Flax NNX.

Inputs are the codes of the two tokenizers (``models/vqvae.py``): audio [B, 2T, 64] (64 codes per
20 ms frame, 256-code book) and video [B, T, 24, 24] (24×24 codes per 25 fps frame, 512-code book).
``TokenLayout`` is the one definition of how codes group into tokens, used by pretraining,
fine-tuning and export alike (the reference's pretraining, fine-tuning and config disagree).

Model: each code position inside a token has its own embedding table; the embeddings of a
token's codes are concatenated to the model width (video: 80 codes × 4-d = 320; audio: 20 × 16 =
320). Learned position embeddings per modality plus a learned modality embedding; the encoder is
joint self-attention over the visible tokens of both modalities; the decoder puts one shared mask
token at the masked positions and predicts every code of a masked token with per-code-position
linear heads. Loss = CE(masked video codes) + CE(masked audio codes) + contrastive_weight ·
NT-Xent(attention-pooled audio, attention-pooled video) over the whole global batch.

Masking (``model.mask_mode``):

- ``"fixed"``: ``mask_ratio_video`` / ``mask_ratio_audio``; the number masked per modality is
  static, so the encoder runs over the gathered visible tokens only and the heads over the
  gathered masked tokens only (MAE's layout; cheapest).
- ``"dirichlet"``: per step (r_v, r_a) ~ Dirichlet(1, 1), r_v + r_a = 1, the same for the whole
  batch. The counts change from step to step, and jit needs static shapes, so this mode keeps
  **every** token in the sequence: a boolean per-token mask, the encoder attends only to visible
  keys (``valid_BN`` of ``vit.Attention``; masked tokens still run as queries, their outputs are
  replaced by the mask token before the decoder and never pooled), and the CE is a masked mean
  over all tokens. Cost: the encoder runs over all Nv + Na tokens instead of the visible ones
  (≈ 2× the encoder matmuls at an average keep of 1/2, ≈ 4× its attention) and the heads run
  over every token instead of only the masked ones. Given the same mask both modes compute the
  same loss (tested).

In both modes the number masked per modality is clamped to [1, N − 1]: at least one masked token
(the CE is defined) and one visible token (the pooling has something to attend to).

Shapes: B batch, T video frames, Nv / Na tokens, Pv / Pa codes per token, Kv = 512 / Ka = 256
code-book sizes, D encoder width, E decoder width.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avpretrain import method
from avpretrain.models import vit
from avpretrain.models.m2d import transformer_flops
from avpretrain.objectives import contrastive

MODALITIES = ("video", "audio")  # canonical order in the joint sequence
MASK_MODES = ("fixed", "dirichlet")
FIELD = {"video": "video_codes", "audio": "audio_codes"}


# -- the token layout ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """How codes group into tokens (one definition for pretraining, fine-tuning and export).

    Video: a token is a tube of ``tube`` frames × ``patch``×``patch`` codes of the ``grid``×``grid``
    code map; tokens in (time, row, column) order, codes inside a token in (frame, row, column)
    order. Audio: a token is ``freq_group`` adjacent frequency codes × ``t_audio`` frames; tokens in
    (time, frequency) order, codes inside in (frame, frequency) order. Both are time-major, so the
    first tokens of a clip are the tokens of a shorter clip (``embed`` of shorter inputs).
    """

    frames: int = 50        # T video frames per clip (25 fps); audio frames = 2T (50 per s)
    tube: int = 5
    patch: int = 4
    freq_group: int = 4
    t_audio: int = 5
    grid: int = 24          # video codes per side (tokenizer)
    audio_codes: int = 64   # audio codes per frame (tokenizer)
    video_vocab: int = 512
    audio_vocab: int = 256

    def __post_init__(self):
        for key in ("frames", "tube", "patch", "freq_group", "t_audio"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)} must be a positive integer")
        if self.frames % self.tube:
            raise ValueError(f"model.frames={self.frames} must be a multiple of model.tube={self.tube}")
        if self.grid % self.patch:
            raise ValueError(f"model.patch={self.patch} must divide the {self.grid}×{self.grid} video code grid")
        if self.audio_codes % self.freq_group:
            raise ValueError(f"model.freq_group={self.freq_group} must divide the {self.audio_codes} audio codes "
                             "per frame")
        if (2 * self.frames) % self.t_audio:
            raise ValueError(f"model.t_audio={self.t_audio} must divide the {2 * self.frames} audio frames "
                             f"(2 × model.frames={self.frames})")

    @classmethod
    def from_config(cls, m) -> TokenLayout:
        return cls(frames=int(m.frames), tube=int(m.tube), patch=int(m.patch), freq_group=int(m.freq_group),
                   t_audio=int(m.t_audio))

    # sizes
    @property
    def video_grid(self) -> tuple[int, int, int]:
        return self.frames // self.tube, self.grid // self.patch, self.grid // self.patch

    @property
    def audio_grid(self) -> tuple[int, int]:
        return 2 * self.frames // self.t_audio, self.audio_codes // self.freq_group

    def num_tokens(self, modality: str) -> int:
        return int(np.prod(self.video_grid if modality == "video" else self.audio_grid))

    def codes_per_token(self, modality: str) -> int:
        return self.tube * self.patch ** 2 if modality == "video" else self.freq_group * self.t_audio

    def vocab(self, modality: str) -> int:
        return self.video_vocab if modality == "video" else self.audio_vocab

    # codes <-> tokens (pure; any T that is a multiple of the tube / audio-token length)
    def video_to_tokens(self, codes_BTHW):
        """[B, T, 24, 24] → [B, T/tube · (24/patch)², tube·patch²]."""
        B, T, H, W = codes_BTHW.shape
        if (H, W) != (self.grid, self.grid) or T % self.tube:
            raise ValueError(f"video codes {tuple(codes_BTHW.shape)}: need [B, T, {self.grid}, {self.grid}] "
                             f"with T a multiple of model.tube={self.tube}")
        t, p = self.tube, self.patch
        x = codes_BTHW.reshape(B, T // t, t, H // p, p, W // p, p)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(B, (T // t) * (H // p) * (W // p), t * p * p)

    def tokens_to_video(self, tokens_BNP):
        B, N, P = tokens_BNP.shape
        t, p, g = self.tube, self.patch, self.grid // self.patch
        if P != t * p * p or N % (g * g):
            raise ValueError(f"video tokens {tuple(tokens_BNP.shape)}: need [B, n·{g * g}, {t * p * p}]")
        nt = N // (g * g)
        x = tokens_BNP.reshape(B, nt, g, g, t, p, p).transpose(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, nt * t, self.grid, self.grid)

    def audio_to_tokens(self, codes_BTF):
        """[B, 2T, 64] → [B, 2T/t_audio · 64/freq_group, t_audio·freq_group]."""
        B, T, F = codes_BTF.shape
        if F != self.audio_codes or T % self.t_audio:
            raise ValueError(f"audio codes {tuple(codes_BTF.shape)}: need [B, T, {self.audio_codes}] with T a "
                             f"multiple of model.t_audio={self.t_audio}")
        t, f = self.t_audio, self.freq_group
        x = codes_BTF.reshape(B, T // t, t, F // f, f).transpose(0, 1, 3, 2, 4)
        return x.reshape(B, (T // t) * (F // f), t * f)

    def tokens_to_audio(self, tokens_BNP):
        B, N, P = tokens_BNP.shape
        t, f, g = self.t_audio, self.freq_group, self.audio_codes // self.freq_group
        if P != t * f or N % g:
            raise ValueError(f"audio tokens {tuple(tokens_BNP.shape)}: need [B, n·{g}, {t * f}]")
        x = tokens_BNP.reshape(B, N // g, g, t, f).transpose(0, 1, 3, 2, 4)
        return x.reshape(B, (N // g) * t, self.audio_codes)

    def to_tokens(self, modality: str, codes):
        return self.video_to_tokens(codes) if modality == "video" else self.audio_to_tokens(codes)


# -- masking ------------------------------------------------------------------------------------
def num_masked(ratio, n: int):
    """round(ratio · n) clamped to [1, n − 1] (a Python int for a Python ratio, else a traced int)."""
    if isinstance(ratio, (int, float)):
        return int(min(max(round(ratio * n), 1), n - 1))
    return jnp.clip(jnp.round(ratio * n), 1, n - 1).astype(jnp.int32)


def shuffle(rng, batch: int, n: int):
    """Per-example random permutations [B, n] (argsort of uniform noise, MAE)."""
    return jnp.argsort(jax.random.uniform(rng, (batch, n)), axis=1)


def mask_from_shuffle(ids_shuffle_BN, masked):
    """Boolean [B, N], True = masked: the last ``masked`` of each permutation (MAE: first kept)."""
    n = ids_shuffle_BN.shape[1]
    rank_BN = jnp.argsort(ids_shuffle_BN, axis=1)
    return rank_BN >= n - masked


def dirichlet_ratios(rng):
    """(r_v, r_a) ~ Dirichlet(1, 1): r_v + r_a = 1."""
    r = jax.random.dirichlet(rng, jnp.ones((2,), jnp.float32))
    return r[0], r[1]


# -- modules ------------------------------------------------------------------------------------
class AttentionPool(nnx.Module):
    """A learned query attending over a modality's tokens: [B, N, D] (+ valid [B, N]) → [B, D]."""

    def __init__(self, dim: int, num_heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (dim,)), out_sharding=("embed",))
        self.kv = vit.dense(dim, 2 * dim, ("embed", "qkv"), rngs, dtype)
        self.proj = vit.dense(dim, dim, ("qkv", "embed"), rngs, dtype)

    def __call__(self, x_BND, valid_BN=None):
        B, N, D = x_BND.shape
        H = self.num_heads
        kv = self.kv(x_BND).reshape(B, N, 2, H, D // H)
        k, v = kv[:, :, 0], kv[:, :, 1]
        q_HK = self.query[...].astype(k.dtype).reshape(H, D // H)
        logits_BHN = jnp.einsum("hk,bnhk->bhn", q_HK * (D // H) ** -0.5, k).astype(jnp.float32)
        if valid_BN is not None:
            logits_BHN = jnp.where(valid_BN[:, None, :], logits_BHN, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(logits_BHN, axis=-1).astype(v.dtype)
        return self.proj(jnp.einsum("bhn,bnhk->bhk", w, v).reshape(B, D))


class VQMAEAV(nnx.Module):
    # Top-level attributes of the encoder (what an export keeps; "encoder" group of optim.lr_mult).
    ENCODER = ("video_embed", "audio_embed", "video_pos", "audio_pos", "modality_embed", "blocks", "norm",
               "pool_video", "pool_audio")

    @classmethod
    def param_group(cls, path: tuple) -> str:
        return "encoder" if str(path[0]) in cls.ENCODER else "head"

    def __init__(self, *, layout: TokenLayout, modalities=MODALITIES, width: int = 320, depth: int = 6,
                 num_heads: int = 4, mlp_ratio: float = 2.0, dec_width: int = 320, dec_depth: int = 3,
                 dec_heads: int = 4, mask_mode: str = "fixed", mask_ratio_video: float = 0.8,
                 mask_ratio_audio: float = 0.8, contrastive_weight: float = 1.0, temperature: float = 0.5,
                 dtype=jnp.float32, attention: str = "auto", remat: str = "none", scan_layers: bool = False,
                 encoder_only: bool = False, rngs: nnx.Rngs):
        modalities = tuple(modalities)
        if not modalities or any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities):
            raise ValueError(f"model.modalities={modalities!r}: a non-empty subset of {MODALITIES}")
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        if mask_mode not in MASK_MODES:
            raise ValueError(f"model.mask_mode={mask_mode!r}: choose one of {MASK_MODES}")
        if mask_mode == "dirichlet" and len(self.modalities) != 2:
            raise ValueError("model.mask_mode='dirichlet' draws (r_v, r_a) with r_v + r_a = 1: it needs both "
                             f"modalities, got model.modalities={self.modalities!r}")
        for key, r in (("mask_ratio_video", mask_ratio_video), ("mask_ratio_audio", mask_ratio_audio)):
            if not 0 < r < 1:
                raise ValueError(f"model.{key}={r} must be in (0, 1)")
        if contrastive_weight < 0 or temperature <= 0:
            raise ValueError(f"model.contrastive_weight={contrastive_weight} must be >= 0 and "
                             f"model.temperature={temperature} > 0")
        self.layout, self.mask_mode, self.remat, self.dtype = layout, mask_mode, remat, dtype
        self.mask_ratio = {"video": float(mask_ratio_video), "audio": float(mask_ratio_audio)}
        self.contrastive_weight, self.temperature = float(contrastive_weight), float(temperature)
        self.contrastive = self.contrastive_weight > 0 and len(self.modalities) == 2
        self.dims = dict(width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, dec_width=dec_width,
                         dec_depth=dec_depth, dec_heads=dec_heads)
        normal = nnx.initializers.normal(0.02)
        self.encoder_only = encoder_only

        for m in self.modalities:
            P, K, N = layout.codes_per_token(m), layout.vocab(m), layout.num_tokens(m)
            if width % P:
                raise ValueError(f"model.width={width} must be a multiple of the {P} codes per {m} token "
                                 f"(each code gets width/{P} dimensions)")
            # One embedding table per code position: [P, K, width/P], gathered and concatenated.
            setattr(self, f"{m}_embed", nnx.Param(normal(rngs.params(), (P, K, width // P)),
                                                  out_sharding=(None, None, None)))
            setattr(self, f"{m}_pos", nnx.Param(normal(rngs.params(), (1, N, width)),
                                                out_sharding=(None, None, "embed")))
        self.modality_embed = nnx.Param(normal(rngs.params(), (len(self.modalities), width)),
                                        out_sharding=(None, "embed"))
        self.blocks = vit.blocks(depth, width, num_heads, mlp_ratio, rngs, dtype, attention, scan_layers)
        self.norm = vit.layer_norm(width, rngs, dtype)
        if self.contrastive:  # trained only by the contrastive loss: absent without it
            self.pool_video = AttentionPool(width, num_heads, rngs, dtype)
            self.pool_audio = AttentionPool(width, num_heads, rngs, dtype)
        if encoder_only:
            return
        self.decoder_embed = vit.dense(width, dec_width, ("embed", None), rngs, dtype)
        self.mask_token = nnx.Param(normal(rngs.params(), (1, 1, dec_width)), out_sharding=(None, None, None))
        for m in self.modalities:
            P, K, N = layout.codes_per_token(m), layout.vocab(m), layout.num_tokens(m)
            setattr(self, f"decoder_{m}_pos", nnx.Param(normal(rngs.params(), (1, N, dec_width)),
                                                        out_sharding=(None, None, None)))
            # Per-code-position linear heads as one batched einsum: [P, E, K] + bias [P·K].
            setattr(self, f"{m}_head", nnx.Param(nnx.initializers.xavier_uniform(in_axis=-2, out_axis=-1,
                                                                                  batch_axis=(0,))(
                rngs.params(), (P, dec_width, K)), out_sharding=(None, None, None)))
            # the bias flat [P·K]: 1-D, so AdamW's decay mask (ndim > 1) leaves it alone like other biases
            setattr(self, f"{m}_head_bias", nnx.Param(jnp.zeros((P * K,)), out_sharding=(None,)))
        self.decoder_modality = nnx.Param(normal(rngs.params(), (len(self.modalities), dec_width)),
                                          out_sharding=(None, None))
        self.decoder_blocks = vit.blocks(dec_depth, dec_width, dec_heads, mlp_ratio, rngs, dtype, attention,
                                         scan_layers)
        self.decoder_norm = vit.layer_norm(dec_width, rngs, dtype)

    # -- pieces -----------------------------------------------------------------------------------
    def _mod_index(self, m: str) -> int:
        return self.modalities.index(m)

    def embed_tokens(self, m: str, tokens_BNP):
        """Per-code embeddings concatenated + position + modality: [B, N, D] (N ≤ the layout's)."""
        B, N, P = tokens_BNP.shape
        if N > self.layout.num_tokens(m):
            raise ValueError(f"{N} {m} tokens exceed the model's {self.layout.num_tokens(m)} (model.frames)")
        table = getattr(self, f"{m}_embed")[...]
        x = table[jnp.arange(P)[None, None, :], tokens_BNP]                       # [B, N, P, d]
        x = x.reshape(B, N, -1)
        x = x + getattr(self, f"{m}_pos")[...][:, :N] + self.modality_embed[...][self._mod_index(m)]
        return x.astype(self.dtype)

    def encode(self, x: dict, valid: dict | None = None) -> dict:
        """Joint encoder over the modalities' embedded tokens (dict m → [B, N_m, D]), keys restricted to
        ``valid`` (dict m → bool [B, N_m], None: all); returns the normed outputs per modality."""
        ms = [m for m in self.modalities if m in x]
        sizes = [x[m].shape[1] for m in ms]
        h = jnp.concatenate([x[m] for m in ms], axis=1)
        valid_BN = None if valid is None else jnp.concatenate([valid[m] for m in ms], axis=1)
        h = self.norm(vit.apply_blocks(self.blocks, h, valid_BN, remat=self.remat))
        return dict(zip(ms, jnp.split(h, np.cumsum(sizes)[:-1], axis=1)))

    def pool(self, m: str, x_BND, valid_BN=None):
        """Clip embedding [B, D]: the attention pool (contrastive models), else the (valid) mean."""
        if self.contrastive:
            return getattr(self, f"pool_{m}")(x_BND, valid_BN)
        if valid_BN is None:
            return x_BND.mean(1)
        w = valid_BN.astype(x_BND.dtype)[..., None]
        return (x_BND * w).sum(1) / jnp.maximum(w.sum(1), 1)

    def decode(self, enc: dict, masked: dict, ids_restore: dict | None = None) -> dict:
        """Decoder over all tokens of every modality → final features [B, N_m, E] per modality.

        ``enc[m]``: [B, K_m, D] visible tokens in shuffle order (gather layout, ``ids_restore``
        given) or [B, N_m, D] all tokens (mask layout, masked positions replaced by the mask token).
        """
        parts = []
        for m in self.modalities:
            y = self.decoder_embed(enc[m])
            mask_tok = self.mask_token[...].astype(y.dtype)
            B, E = y.shape[0], y.shape[-1]
            N = masked[m].shape[1]
            if ids_restore is not None:
                fill = jnp.broadcast_to(mask_tok, (B, N - y.shape[1], E))
                y = vit.gather_tokens(jnp.concatenate([y, fill], axis=1), ids_restore[m])
            else:
                y = jnp.where(masked[m][..., None], mask_tok, y)
            y = y + (getattr(self, f"decoder_{m}_pos")[...][:, :N]
                     + self.decoder_modality[...][self._mod_index(m)]).astype(y.dtype)
            parts.append(y)
        sizes = [p.shape[1] for p in parts]
        h = self.decoder_norm(vit.apply_blocks(self.decoder_blocks, jnp.concatenate(parts, axis=1), remat=self.remat))
        return dict(zip(self.modalities, jnp.split(h, np.cumsum(sizes)[:-1], axis=1)))

    def logits(self, m: str, h_BNE):
        """Per-code-position heads: [B, N, E] → float32 logits [B, N, P, K]."""
        w = getattr(self, f"{m}_head")[...].astype(h_BNE.dtype)
        out = jnp.einsum("bne,pek->bnpk", h_BNE, w, preferred_element_type=jnp.float32)
        return out + getattr(self, f"{m}_head_bias")[...].reshape(w.shape[0], w.shape[2])

    # -- training ---------------------------------------------------------------------------------
    def draw_masks(self, rng, batch: int):
        """(masked dict m → bool [B, N_m], ids_shuffle dict, ratios dict, counts dict).

        Fixed mode: counts are Python ints (static); Dirichlet: traced int32 scalars.
        """
        k_ratio, *keys = jax.random.split(rng, 1 + len(self.modalities))
        if self.mask_mode == "dirichlet":
            r_v, r_a = dirichlet_ratios(k_ratio)
            ratios = {"video": r_v, "audio": r_a}
        else:
            ratios = {m: self.mask_ratio[m] for m in self.modalities}
        masked, ids, counts = {}, {}, {}
        for m, key in zip(self.modalities, keys):
            n = self.layout.num_tokens(m)
            ids[m] = shuffle(key, batch, n)
            counts[m] = num_masked(ratios[m], n)
            masked[m] = mask_from_shuffle(ids[m], counts[m])
        return masked, ids, ratios, counts

    def forward_masked(self, tokens: dict, masked: dict, ids: dict, counts: dict, gather: bool):
        """Encoder + decoder for given masks: (encoder outputs, visible-valid masks or None,
        decoder features at the positions the CE uses, the codes there, weights of those positions).

        ``gather`` (static counts only): visible tokens gathered into the encoder, masked ones into
        the heads; else all tokens with an attention validity mask (``valid_BN``).
        """
        x = {m: self.embed_tokens(m, tokens[m]) for m in self.modalities}
        if gather:
            keep = {m: ids[m][:, :tokens[m].shape[1] - counts[m]] for m in self.modalities}
            enc = self.encode({m: vit.gather_tokens(x[m], keep[m]) for m in self.modalities})
            dec = self.decode(enc, masked, {m: jnp.argsort(ids[m], axis=1) for m in self.modalities})
            sel = {m: ids[m][:, tokens[m].shape[1] - counts[m]:] for m in self.modalities}
            feats = {m: vit.gather_tokens(dec[m], sel[m]) for m in self.modalities}
            targets = {m: vit.gather_tokens(tokens[m], sel[m]) for m in self.modalities}
            weights = {m: jnp.ones(sel[m].shape, jnp.float32) for m in self.modalities}
            return enc, None, feats, targets, weights
        valid = {m: ~masked[m] for m in self.modalities}
        enc = self.encode(x, valid)
        dec = self.decode(enc, masked)
        return enc, valid, dec, tokens, {m: masked[m].astype(jnp.float32) for m in self.modalities}

    def loss(self, batch, rng):
        """The training objective on ``batch['video_codes']`` / ``batch['audio_codes']``: (loss, metrics)."""
        tokens = {m: self.layout.to_tokens(m, batch[FIELD[m]].astype(jnp.int32)) for m in self.modalities}
        B = tokens[self.modalities[0]].shape[0]
        masked, ids, ratios, counts = self.draw_masks(rng, B)
        loss, metrics = self.loss_with_masks(tokens, masked, ids, counts, gather=self.mask_mode == "fixed")
        metrics.update({f"mask_ratio_{m}": jnp.asarray(ratios[m], jnp.float32) for m in self.modalities})
        return loss, metrics

    def loss_with_masks(self, tokens, masked, ids, counts, gather: bool):
        enc, valid, feats, targets, weights = self.forward_masked(tokens, masked, ids, counts, gather)
        total, metrics = 0.0, {}
        for m in self.modalities:
            logits = self.logits(m, feats[m])                                       # [B, M, P, K]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets[m])  # [B, M, P]
            w = jnp.broadcast_to(weights[m][..., None], ce.shape)
            count = jnp.maximum(w.sum(), 1.0)
            ce_m = (ce * w).sum() / count
            probs = jax.nn.softmax(logits, axis=-1)
            mean_p = (probs * w[..., None]).sum((0, 1, 2)) / count
            metrics[f"ce_{m}"] = ce_m
            metrics[f"acc_{m}"] = ((logits.argmax(-1) == targets[m]) * w).sum() / count
            metrics[f"perplexity_{m}"] = jnp.exp(-jnp.sum(mean_p * jnp.log(jnp.maximum(mean_p, 1e-12))))
            total = total + ce_m
        if self.contrastive:
            pooled = {m: self.pool(m, enc[m], None if valid is None else valid[m]) for m in self.modalities}
            nt = contrastive.nt_xent(pooled["audio"], pooled["video"], self.temperature)
            metrics["nt_xent"] = nt
            total = total + self.contrastive_weight * nt
        metrics["loss"] = total
        return total, metrics

    # -- downstream -------------------------------------------------------------------------------
    def embed(self, codes: dict) -> dict:
        """Unmasked encoder over the given modalities' codes (dict field → codes): per modality the
        token embeddings ``<m>_tokens`` [B, N, D] and the pooled clip embedding ``<m>`` [B, D];
        ``clip`` = the pooled embeddings concatenated in (video, audio) order."""
        tokens = {m: self.layout.to_tokens(m, jnp.asarray(codes[FIELD[m]]).astype(jnp.int32))
                  for m in self.modalities if FIELD[m] in codes}
        enc = self.encode({m: self.embed_tokens(m, t) for m, t in tokens.items()})
        out = {}
        for m, x in enc.items():
            out[f"{m}_tokens"] = x.astype(jnp.float32)
            out[m] = self.pool(m, x).astype(jnp.float32)
        out["clip"] = jnp.concatenate([out[m] for m in self.modalities if m in enc], axis=-1)
        return out

    def tokens_per_example(self) -> int:
        """Tokens of one example (both modalities, visible and masked): the bench's tokens/s."""
        return sum(self.layout.num_tokens(m) for m in self.modalities)

    def flops_per_example(self) -> float:
        """Analytic training FLOPs for one example (matmuls + attention; backward = 2× forward).

        Embedding gathers are free; fixed mode: encoder over the visible, heads over the masked
        tokens; Dirichlet mode: both over all tokens (what it computes, see the module docstring).
        """
        d, L = self.dims, self.layout
        n = {m: L.num_tokens(m) for m in self.modalities}
        if self.mask_mode == "fixed":
            masked = {m: num_masked(self.mask_ratio[m], n[m]) for m in self.modalities}
            enc_tokens = sum(n[m] - masked[m] for m in self.modalities)
            head_tokens = masked
        else:
            enc_tokens, head_tokens = sum(n.values()), n
        total_n = sum(n.values())
        f = transformer_flops(enc_tokens, d["width"], d["depth"], d["mlp_ratio"])
        f += 2 * enc_tokens * d["width"] * d["dec_width"]
        f += transformer_flops(total_n, d["dec_width"], d["dec_depth"], d["mlp_ratio"])
        f += sum(2 * head_tokens[m] * d["dec_width"] * L.codes_per_token(m) * L.vocab(m) for m in self.modalities)
        if self.contrastive:
            f += 2 * enc_tokens * d["width"] * 2 * d["width"] + 2 * 2 * d["width"] * d["width"]
        return float(3 * f)


def kwargs_from_config(m, encoder_only: bool = False) -> dict:
    return dict(layout=TokenLayout.from_config(m), modalities=tuple(m.get("modalities", MODALITIES)),
                width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.get("mlp_ratio", 2.0),
                dec_width=m.dec_width, dec_depth=m.dec_depth, dec_heads=m.dec_heads,
                mask_mode=m.get("mask_mode", "fixed"), mask_ratio_video=m.mask_ratio_video,
                mask_ratio_audio=m.mask_ratio_audio, contrastive_weight=m.contrastive_weight,
                temperature=m.temperature, dtype=jnp.dtype(m.get("dtype", "float32")),
                attention=m.get("attention", "auto"), remat=str(m.get("remat", "none")),
                scan_layers=bool(m.get("scan_layers", False)), encoder_only=encoder_only)


def create(config, rngs: nnx.Rngs, encoder_only: bool = False) -> VQMAEAV:
    return VQMAEAV(rngs=rngs, **kwargs_from_config(config.model, encoder_only))


def inputs(config) -> dict:
    """``video_codes`` int32 [T, 24, 24] and ``audio_codes`` int32 [2T, 64] (T = model.frames),
    only the modalities of ``model.modalities``."""
    L = TokenLayout.from_config(config.model)
    fields = {"video": method.Field((L.frames, L.grid, L.grid), "int32", L.video_vocab),
              "audio": method.Field((2 * L.frames, L.audio_codes), "int32", L.audio_vocab)}
    mods = tuple(config.model.get("modalities", MODALITIES))
    return {FIELD[m]: fields[m] for m in MODALITIES if m in mods}


class Embedder:
    """The export adapter: ``embed(audio_codes=None, video_codes=None)`` (jitted) → dict of numpy
    arrays: ``<m>_tokens`` [B, N, D] (unmasked encoder, joint over the modalities given),
    ``<m>`` [B, D] pooled clip embeddings (the attention pools; a mean over tokens for models
    trained without the contrastive branch) and ``clip`` (their concatenation, video first).

    Codes come from the ``vqvae_audio`` / ``vqvae_video`` tokenizers; clips of up to
    ``model.frames`` video frames (a multiple of ``model.tube``; audio 2× as many frames)."""

    def __init__(self, model, config, meta=None):
        self.model, self.config, self.meta = model, config, meta
        self.layout = model.layout
        self.embedding_dim = model.dims["width"]
        graphdef, state = nnx.split(model)
        self._state = state
        self._embed = jax.jit(lambda state, codes: nnx.merge(graphdef, state).embed(codes))

    def embed(self, audio_codes=None, video_codes=None) -> dict:
        codes = {k: np.asarray(v, np.int32) for k, v in (("audio_codes", audio_codes), ("video_codes", video_codes))
                 if v is not None}
        unknown = [k for k in codes if k.split("_")[0] not in self.model.modalities]
        if not codes or unknown:
            raise ValueError(f"embed: give the codes of {[FIELD[m] for m in self.model.modalities]}"
                             + (f"; this model has no {unknown}" if unknown else ""))
        return {k: np.asarray(v) for k, v in self._embed(self._state, codes).items()}


METHOD = method.register(method.Method(name="vq_mae_av", create=create, inputs=inputs, pretrained=Embedder))
