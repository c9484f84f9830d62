"""Two-stage audio-language pretraining against frozen sentence-embedding targets.

Stage 1, M2D-CLAP (``method="m2d_clap"``): M2D plus a CLAP objective on the same forward pass.
The audio embedding is the mean of the online encoder's visible tokens (CLS dropped) → MLP
(D→D, ReLU, D→D); the text side is the precomputed, frozen sentence embedding of one caption per
clip (a linear projection when its width differs from D); symmetric InfoNCE over the whole
global batch with a learnable logit scale. Loss = M2D + ``clap_weight``·CLAP.

Stage 2, M2D2 (``method="m2d2"``): the stage-1 encoder (initialised from a stage-1 checkpoint,
frozen or at a lower learning rate through ``optim.lr_mult.encoder``) under an audio-to-semantic
head (a learnable semantic token attending over the encoder's tokens through 1–4 transformer
blocks, layer-normed output) and a trainable text MLP over the sentence embeddings; the same
contrastive loss.

Both expose the joint space for downstream use: ``embed_tokens(tokens_BND, valid_BN)`` (the
unmasked encoder's tokens, CLS dropped) and ``embed_text(sentence_emb_BT)``, both [B, D].
Shapes: B batch, N tokens, D encoder width, T sentence-embedding width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from avpretrain import frontend, method
from avpretrain.models import m2d, vit
from avpretrain.models.m2d import M2D, random_masking
from avpretrain.objectives.contrastive import LOGIT_SCALE_INIT, symmetric_infonce


def _logit_scale():
    return nnx.Param(jnp.asarray(LOGIT_SCALE_INIT, jnp.float32))


def _masked_mean(x_BND, valid_BN):
    if valid_BN is None:
        return x_BND.mean(1)
    w = valid_BN.astype(x_BND.dtype)[..., None]
    return (x_BND * w).sum(1) / jnp.maximum(w.sum(1), 1)


class M2DCLAP(M2D):
    """Stage 1: M2D + CLAP. ``encoder_only`` (exports) keeps the encoder and the CLAP heads."""

    def __init__(self, *, text_dim: int, clap_weight: float = 0.01, rngs: nnx.Rngs, **m2d_kwargs):
        super().__init__(rngs=rngs, **m2d_kwargs)
        width, dtype = self.dims["width"], m2d_kwargs.get("dtype", jnp.float32)
        self.clap_weight, self.text_dim = clap_weight, text_dim
        self.audio_proj = vit.Mlp(width, width, rngs, dtype, activation=jax.nn.relu)
        self.text_proj = None if text_dim == width else vit.dense(text_dim, width, (None, "embed"), rngs, dtype)
        self.logit_scale = _logit_scale()

    def embed_text(self, sentence_emb_BT):
        x = sentence_emb_BT.astype(jnp.float32)
        return x if self.text_proj is None else self.text_proj(x)

    def embed_tokens(self, tokens_BND, valid_BN=None):
        return self.audio_proj(_masked_mean(tokens_BND, valid_BN))

    def loss(self, batch, rng):
        lms = batch["lms"]
        ids_shuffle, _, len_keep = random_masking(rng, lms.shape[0], self.num_patches, self.mask_ratio)
        loss_m2d, online = self.masked_loss(lms, ids_shuffle, len_keep)
        clap, metrics = symmetric_infonce(self.embed_tokens(online[:, 1:]), self.embed_text(batch["text_emb"]),
                                          self.logit_scale[...])
        return loss_m2d + self.clap_weight * clap, {"loss_m2d": loss_m2d, **metrics}


class M2D2(M2D):
    """Stage 2: the stage-1 encoder + an audio-to-semantic head + a trainable text MLP."""

    EMA = False

    def __init__(self, *, text_dim: int, head_depth: int = 2, text_hidden: int | None = None,
                 rngs: nnx.Rngs, **m2d_kwargs):
        m2d_kwargs["encoder_only"] = True  # no target encoder or predictor in stage 2
        super().__init__(rngs=rngs, **m2d_kwargs)
        if not 1 <= head_depth <= 4:
            raise ValueError(f"model.head_depth={head_depth}: the semantic head has 1 to 4 blocks")
        d, dtype = self.dims, m2d_kwargs.get("dtype", jnp.float32)
        width = d["width"]
        self.text_dim = text_dim
        self.semantic_token = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, 1, width)),
                                        out_sharding=(None, None, "embed"))
        self.semantic_blocks = vit.blocks(head_depth, width, d["num_heads"], d["mlp_ratio"], rngs, dtype,
                                          m2d_kwargs.get("attention", "auto"), self.scan_layers)
        self.semantic_norm = vit.layer_norm(width, rngs, dtype)
        self.text_mlp = vit.Mlp(text_dim, text_hidden or 2 * width, rngs, dtype, out_dim=width)
        self.logit_scale = _logit_scale()

    def embed_text(self, sentence_emb_BT):
        return self.text_mlp(sentence_emb_BT.astype(jnp.float32))

    def embed_tokens(self, tokens_BND, valid_BN=None):
        B, _, D = tokens_BND.shape
        x = jnp.concatenate([jnp.broadcast_to(self.semantic_token[...].astype(tokens_BND.dtype), (B, 1, D)),
                             tokens_BND], axis=1)
        valid = None if valid_BN is None else jnp.concatenate([jnp.ones((B, 1), bool), valid_BN], axis=1)
        x = vit.apply_blocks(self.semantic_blocks, x, valid, remat=self.remat)
        return self.semantic_norm(x[:, 0])

    def loss(self, batch, rng):
        del rng  # the whole crop, unmasked
        tokens = self.encode(batch["lms"])[:, 1:]
        return symmetric_infonce(self.embed_tokens(tokens), self.embed_text(batch["text_emb"]),
                                 self.logit_scale[...])

    def flops_per_example(self) -> float:
        """Analytic training FLOPs for one example, the encoder counted frozen (forward only)."""
        d, n = self.dims, self.num_patches
        encoder = m2d.transformer_flops(n + 1, d["width"], d["depth"], d["mlp_ratio"])
        head = m2d.transformer_flops(n + 1, d["width"], len(self.semantic_blocks), d["mlp_ratio"])
        return float(encoder + 3 * head)


def _text_dim(m) -> int:
    if not m.get("text_dim"):
        raise ValueError("config.model.text_dim is not set: the trainer fills it in from the stored caption "
                         "embeddings (`avpretrain data embed-captions --data DATA_DIR`)")
    return int(m.text_dim)


def _kwargs(m, encoder_only):
    return dict(m2d.kwargs_from_config(m, encoder_only), text_dim=_text_dim(m))


def stage1_from_config(model_config, rngs: nnx.Rngs, encoder_only: bool = False) -> M2DCLAP:
    return M2DCLAP(clap_weight=model_config.clap_weight, rngs=rngs, **_kwargs(model_config, encoder_only))


def stage2_from_config(model_config, rngs: nnx.Rngs, encoder_only: bool = False) -> M2D2:
    return M2D2(head_depth=model_config.head_depth, text_hidden=model_config.get("text_hidden"), rngs=rngs,
                **_kwargs(model_config, encoder_only))


# -- the methods ---------------------------------------------------------------------------------
def caption_inputs(config) -> dict:
    """The M2D crop plus one stored caption embedding per clip."""
    return m2d.audio_inputs(config) | {"text_emb": method.Field((_text_dim(config.model),), "float16")}


def resolve_text_targets(config) -> None:
    """With ``data.use_captions``: fills ``data.text_model`` and ``model.text_dim`` from the stored
    caption embeddings of the training split (before config.json is written, so exports know them)."""
    if not config.data.use_captions:
        return
    from avpretrain.data import captions

    store = captions.CaptionEmbeddings.open(config.data.dir, config.data.split, config.data.text_model or None)
    if config.model.get("text_dim") and config.model.text_dim != store.dim:
        raise ValueError(f"config.model.text_dim={config.model.text_dim} but the caption embeddings of "
                         f"{store.model!r} in {config.data.dir} are {store.dim}-d")
    config.data.text_model, config.model.text_dim = store.model, store.dim


for _name, _build in (("m2d_clap", stage1_from_config), ("m2d2", stage2_from_config)):
    method.register(method.Method(
        name=_name, create=lambda config, rngs, encoder_only, build=_build: build(config.model, rngs, encoder_only),
        inputs=caption_inputs, frontend=(frontend.LogMel(),), prepare=resolve_text_targets,
        pretrained=m2d.pretrained_encoder))
