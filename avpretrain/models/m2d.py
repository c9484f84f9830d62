"""M2D, Masked Modeling Duo (Niizumi et al.), in Flax NNX.

The online encoder sees the visible patches; the EMA target encoder sees the masked patches; the
predictor maps online tokens (plus mask tokens) to the target's features at the masked positions.
Loss: 2 - 2·cos between predictions and per-token standardised targets. Parameter names follow the
PyTorch reference so that ``avpretrain.interop.m2d`` maps them one to one.

Shapes: B batch, N = gF·gT patches (frequency-major), K visible, M = N - K masked, D width,
E predictor width; ``lms`` is the normalised log-mel [B, 1, F, T].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import audio, frontend, method
from avpretrain.models import vit
from avpretrain.objectives.contrastive import l2_normalize

# Encoder (width, depth, heads) and predictor (width, depth, heads) per size. base = the paper's.
SIZES = {
    "tiny": dict(width=192, depth=12, num_heads=3, pred_width=192, pred_depth=4, pred_heads=6),
    "small": dict(width=384, depth=12, num_heads=6, pred_width=256, pred_depth=8, pred_heads=8),
    "base": dict(width=768, depth=12, num_heads=12, pred_width=512, pred_depth=8, pred_heads=16),
    "large": dict(width=1024, depth=24, num_heads=16, pred_width=512, pred_depth=8, pred_heads=16),
}

# Everything but the target encoder (updated by EMA only) is trained.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.Any(nnx.PathContains("target_blocks"),
                                                nnx.PathContains("target_norm"))))


def transformer_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
    """Forward FLOPs of ``depth`` pre-norm blocks over ``tokens`` tokens (matmuls + attention)."""
    per_token = 2 * (4 * width * width + 2 * width * int(width * mlp_ratio))
    return depth * (tokens * per_token + 4 * tokens * tokens * width)


def random_masking(rng, batch: int, num_patches: int, mask_ratio: float):
    """Per-sample random masking: (ids_shuffle [B, N], ids_restore [B, N], len_keep).

    The first ``len_keep`` of ``ids_shuffle`` are visible, the rest masked (MAE convention).
    """
    len_keep = int(num_patches * (1 - mask_ratio))
    ids_shuffle = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1)
    return ids_shuffle, jnp.argsort(ids_shuffle, axis=1), len_keep


def norm_mse_loss(pred_BMD, target_BMD):
    """Standardise each target token (unbiased var, eps 1e-6), L2-normalise both, mean of 2 - 2·cos."""
    pred, target = pred_BMD.astype(jnp.float32), target_BMD.astype(jnp.float32)
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
    return jnp.mean(2 - 2 * jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1))


class M2D(nnx.Module):
    TRAINABLE = TRAINABLE
    EMA = True  # the trainer calls ``ema_update`` after each step
    # Top-level attributes of the online encoder: what ``param_group`` calls "encoder"
    # (optim.lr_mult.encoder); a later stage initialises from these (config.init.params).
    ENCODER = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm")

    @classmethod
    def param_group(cls, path: tuple) -> str:
        """"encoder" for the online encoder's params, "head" for everything else."""
        return "encoder" if str(path[0]) in cls.ENCODER else "head"

    def __init__(self, *, input_frames: int, n_mels: int = 80, patch: int = 16, width: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, pred_width: int, pred_depth: int, pred_heads: int,
                 mask_ratio: float = 0.7, dtype=jnp.float32, attention: str = "auto", remat: str = "none",
                 scan_layers: bool = False, encoder_only: bool = False, rngs: nnx.Rngs):
        """``encoder_only`` builds just the online encoder (exported models: no target, no predictor).

        ``dtype`` is the compute dtype (params and optimizer state stay float32); ``attention`` picks
        ``jax.nn.dot_product_attention``'s implementation (``vit.attention_implementation``);
        ``remat`` ("none", "dots", "full": ``vit.REMAT``) is what the backward pass of the trained
        blocks recomputes instead of keeping; ``scan_layers`` stacks each block stack's parameters and
        runs it as a scan (``vit.blocks``).
        """
        if n_mels % patch or input_frames % patch:
            raise ValueError(f"n_mels={n_mels} and input_frames={input_frames} must be multiples of patch={patch}")
        self.patch, self.n_mels, self.input_frames = patch, n_mels, input_frames
        self.grid = (n_mels // patch, input_frames // patch)
        self.mask_ratio, self.remat, self.scan_layers = mask_ratio, remat, scan_layers
        self.dims = dict(width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         pred_width=pred_width, pred_depth=pred_depth, pred_heads=pred_heads)
        normal = nnx.initializers.normal(0.02)

        self.patch_embed = vit.dense(patch * patch, width, (None, "embed"), rngs, dtype)
        self.cls_token = nnx.Param(normal(rngs.params(), (1, 1, width)), out_sharding=(None, None, "embed"))
        self.pos_embed = vit.Buffer(jnp.asarray(vit.sincos_pos_embed(width, *self.grid))[None])
        self.blocks = vit.blocks(depth, width, num_heads, mlp_ratio, rngs, dtype, attention, scan_layers)
        self.norm = vit.layer_norm(width, rngs, dtype)
        self.encoder_only = encoder_only
        if encoder_only:
            return
        # Target encoder: its own blocks + norm, starting as a copy of the online ones.
        self.target_blocks = vit.blocks(depth, width, num_heads, mlp_ratio, rngs, dtype, attention, scan_layers)
        self.target_norm = vit.layer_norm(width, rngs, dtype)
        nnx.update(self.target_blocks, nnx.state(self.blocks, nnx.Param))
        nnx.update(self.target_norm, nnx.state(self.norm, nnx.Param))
        # Predictor.
        self.decoder_embed = vit.dense(width, pred_width, ("embed", None), rngs, dtype)
        self.mask_token = nnx.Param(normal(rngs.params(), (1, 1, pred_width)), out_sharding=(None, None, None))
        self.decoder_pos_embed = vit.Buffer(jnp.asarray(vit.sincos_pos_embed(pred_width, *self.grid))[None])
        self.decoder_blocks = vit.blocks(pred_depth, pred_width, pred_heads, mlp_ratio, rngs, dtype, attention,
                                         scan_layers)
        self.decoder_norm = vit.layer_norm(pred_width, rngs, dtype)
        self.decoder_pred = vit.dense(pred_width, width, (None, "embed"), rngs, dtype)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    # -- encoders ---------------------------------------------------------------------------
    def _patch_tokens(self, lms):
        """Patch embedding + positions for [B, 1, F, T] with T ≤ input_frames: [B, gF·gT', D]."""
        grid_t = lms.shape[-1] // self.patch
        if grid_t > self.grid[1] or lms.shape[-2] != self.n_mels:
            raise ValueError(f"input {lms.shape} exceeds the model's [*, 1, {self.n_mels}, {self.input_frames}]")
        pos = self.pos_embed[...][:, 1:].reshape(1, self.grid[0], self.grid[1], -1)[:, :, :grid_t]
        x = self.patch_embed(vit.patchify(lms, self.patch))
        return x + pos.reshape(1, -1, pos.shape[-1]).astype(x.dtype)

    def _with_cls(self, x_BND):
        cls = (self.cls_token[...] + self.pos_embed[...][:, :1]).astype(x_BND.dtype)
        return jnp.concatenate([jnp.broadcast_to(cls, (x_BND.shape[0], 1, x_BND.shape[-1])), x_BND], axis=1)

    def encode(self, lms, ids_keep=None):
        """Online encoder: [B, 1+K, D] (CLS first); all patches when ``ids_keep`` is None."""
        x = self._patch_tokens(lms)
        if ids_keep is not None:
            x = vit.gather_tokens(x, ids_keep)
        x = vit.apply_blocks(self.blocks, self._with_cls(x), remat=self.remat)
        return self.norm(x)

    def layer_columns(self, lms):
        """Every encoder block's output (the hidden states, before the final norm), averaged over the
        frequency patches of each time column: [B, depth, T/p, D] (layer analysis)."""
        outs = vit.block_outputs(self.blocks, self._with_cls(self._patch_tokens(lms)))
        B, _, D = outs[0].shape
        grid_t = lms.shape[-1] // self.patch
        return jnp.stack([h[:, 1:].reshape(B, self.grid[0], grid_t, D).mean(1) for h in outs], axis=1)

    def encode_target(self, lms, ids_masked):
        """Target encoder on the masked patches: [B, M, D] (CLS dropped), no gradient."""
        x = vit.apply_blocks(self.target_blocks, self._with_cls(vit.gather_tokens(self._patch_tokens(lms), ids_masked)))
        return jax.lax.stop_gradient(self.target_norm(x)[:, 1:])

    def predict(self, online_B1KD, ids_restore, len_keep):
        """Predictor: online tokens + mask tokens, unshuffled, → predictions [B, N, D] in patch order."""
        x = self.decoder_embed(online_B1KD)
        B, N = ids_restore.shape
        masks = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (B, N - len_keep, x.shape[-1]))
        x_ = vit.gather_tokens(jnp.concatenate([x[:, 1:], masks], axis=1), ids_restore)
        x = jnp.concatenate([x[:, :1], x_], axis=1) + self.decoder_pos_embed[...].astype(x.dtype)
        x = vit.apply_blocks(self.decoder_blocks, x, remat=self.remat)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    # -- training ---------------------------------------------------------------------------
    def masked_loss(self, lms, ids_shuffle, len_keep: int):
        ids_restore = jnp.argsort(ids_shuffle, axis=1)
        ids_keep, ids_masked = ids_shuffle[:, :len_keep], ids_shuffle[:, len_keep:]
        online = self.encode(lms, ids_keep)
        pred = vit.gather_tokens(self.predict(online, ids_restore, len_keep), ids_masked)
        return norm_mse_loss(pred, self.encode_target(lms, ids_masked)), online

    def loss(self, batch, rng):
        """The training objective on ``batch['lms']``: (loss, metrics)."""
        ids_shuffle, _, len_keep = random_masking(rng, batch["lms"].shape[0], self.num_patches, self.mask_ratio)
        loss, _ = self.masked_loss(batch["lms"], ids_shuffle, len_keep)
        return loss, {"loss_m2d": loss}

    def ema_update(self, decay):
        """target ← decay·target + (1 − decay)·online, for the blocks and the final norm."""
        for online, target in ((self.blocks, self.target_blocks), (self.norm, self.target_norm)):
            new = jax.tree.map(lambda o, t: decay * t + (1 - decay) * o,
                               nnx.state(online, nnx.Param), nnx.state(target, nnx.Param))
            nnx.update(target, new)

    # -- downstream ---------------------------------------------------------------------------
    def frame_embeddings(self, lms):
        """Unmasked encoder, CLS dropped, the gF tokens of each time column concatenated: [B, T/p, gF·D]."""
        x = self.encode(lms)[:, 1:]
        B, _, D = x.shape
        grid_t = lms.shape[-1] // self.patch
        return x.reshape(B, self.grid[0], grid_t, D).transpose(0, 2, 1, 3).reshape(B, grid_t, self.grid[0] * D)

    def flops_per_example(self) -> float:
        """Analytic training FLOPs for one example (matmuls + attention; backward = 2× forward)."""
        d = self.dims
        n, k = self.num_patches, int(self.num_patches * (1 - self.mask_ratio))

        def stack(tokens, width, depth):
            return transformer_flops(tokens, width, depth, d["mlp_ratio"])

        p2 = self.patch * self.patch
        online = 2 * n * p2 * d["width"] + stack(1 + k, d["width"], d["depth"])
        predictor = (2 * (1 + k) * d["width"] * d["pred_width"] + stack(1 + n, d["pred_width"], d["pred_depth"])
                     + 2 * n * d["pred_width"] * d["width"])
        target = stack(1 + n - k, d["width"], d["depth"])
        return float(3 * (online + predictor) + target)


def kwargs_from_config(model_config, encoder_only: bool = False) -> dict:
    """M2D constructor arguments from ``config.model`` (size preset, overridable per field)."""
    m = model_config
    dims = dict(SIZES[m.size])
    dims.update({k: m[k] for k in dims if m.get(k) is not None})
    return dict(input_frames=m.input_frames, n_mels=m.get("n_mels", 80), patch=m.get("patch", 16),
                mlp_ratio=m.get("mlp_ratio", 4.0), mask_ratio=m.mask_ratio,
                dtype=jnp.dtype(m.get("dtype", "float32")), attention=m.get("attention", "auto"),
                remat=str(m.get("remat", "none")), scan_layers=bool(m.get("scan_layers", False)),
                encoder_only=encoder_only, **dims)


def from_config(model_config, rngs: nnx.Rngs, encoder_only: bool = False) -> M2D:
    return M2D(rngs=rngs, **kwargs_from_config(model_config, encoder_only))


# -- the method --------------------------------------------------------------------------------
def audio_inputs(config) -> dict:
    """One waveform crop of exactly ``model.input_frames`` log-mel frames."""
    return {"audio": method.Field((audio.num_samples_for_frames(config.model.input_frames),))}


# Methods whose export is an M2D encoder (``pretrained_encoder``): what distillation, pre-finetuning
# and domain adaptation start from.
FAMILY = ("m2d", "m2d_clap", "m2d2", "distill", "prefinetune")


def encoder_source(path, key: str, sample_rate: int) -> tuple[dict, tuple[float, float]]:
    """The config (a dict) and log-mel statistics of the M2D-family export or workdir at ``path``
    (``key``: the config key that named it, for errors), refusing another method or sample rate."""
    from avpretrain import workdir as workdir_lib
    from avpretrain.models import classifier

    if not path:
        raise ValueError(f"config.{key} is empty: name an exported M2D-family encoder (avpretrain export)")
    src = classifier.source_config(path)
    if src.get("method") not in FAMILY:
        raise ValueError(f"config.{key}={path} is a {src.get('method')!r} model; this takes an M2D-family encoder "
                         f"({', '.join(FAMILY)})")
    rate = src.get("data", {}).get("sample_rate", sample_rate)
    if rate != sample_rate:
        raise ValueError(f"config.{key}={path} was trained at {rate} Hz, config.data.sample_rate is {sample_rate}")
    return src, tuple(workdir_lib.model_norm_stats(path))


def pretrained_encoder(model, config, meta):
    """The export adapter of the M2D family: ``export.PretrainedEncoder`` (frame/scene embeddings)."""
    from avpretrain.export import PretrainedEncoder

    return PretrainedEncoder(model, config, meta["norm_stats"], meta["sample_rate"])


METHOD = method.register(method.Method(
    name="m2d", create=lambda config, rngs, encoder_only: from_config(config.model, rngs, encoder_only),
    inputs=audio_inputs, frontend=(frontend.LogMel(),), pretrained=pretrained_encoder))
