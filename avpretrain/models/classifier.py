"""Supervised fine-tuning: a pretrained encoder + a classification or regression head (``method="classifier"``).

The encoder is any registered backbone (``BACKBONES``; today the VQ-MAE-AV encoder over token
datasets), built from the architecture of the run it is initialised from (``config.init.path``,
an export or a training workdir: ``prepare`` copies its method and model config into
``config.encoder``) or, without one, from ``config.encoder`` as written (random init). Heads
(``model.head``):

- ``"attention"``: a learned-query attention pool per modality → concatenated → LayerNorm →
  dropout → linear (the VQ-MAE-AV fine-tuning head).
- ``"query"``: ``model.num_queries`` learned query tokens prepended to the joint token sequence,
  ``model.head_depth`` transformer blocks over both, the queries' outputs averaged → LayerNorm →
  dropout → linear (a small query transformer).

Loss (``model.task="classify"``): cross-entropy with label smoothing (``model.label_smoothing``)
and the focal factor ``(1 − p)^γ`` (``model.focal_gamma``, 0: plain CE), averaged over the batch.
``model.task="regress"``: one output per ``model.dimensions`` (arousal, valence, dominance of an
emotion corpus) and ``model.regression_loss`` "ccc" (1 − the batch's concordance correlation
coefficient, averaged over the dimensions) or "ccc+mse"; unrated (NaN) targets are masked out.

Audio-text fusion (``model.text_dim`` > 0, ``configs/finetune.py:text=1``): the clip's transcript as a
stored sentence embedding (``text_emb``, ``avpretrain data embed-captions --field transcript``) →
linear → LayerNorm, concatenated with the pooled audio features before the head; in training the
text is zeroed for a random ``model.text_dropout`` share of the examples (modality dropout), so
the audio path keeps learning what the words do not say. The encoder is the
"encoder" parameter group: ``--config.optim.lr_mult.encoder=0`` freezes it, 0.1 trains it at a
tenth of the head's learning rate. ``predict`` (eval mode, no dropout) gives the logits that
validation (``eval_every``), ``avpretrain eval classify`` and ``avpretrain kfold`` use.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import method
from avpretrain.data import pipeline
from avpretrain.models import vit
from avpretrain.models import vq_mae_av as vq_mae_av_lib

HEADS = ("attention", "query")
TASKS = ("classify", "regress")
REGRESSION_LOSSES = ("ccc", "ccc+mse")


# -- backbones ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Backbone:
    """How the classifier uses a pretrained method's encoder."""

    create: Callable       # (encoder ConfigDict, rngs) -> nnx.Module, the encoder only
    inputs: Callable       # (encoder ConfigDict, modalities) -> dict[str, method.Field] (no label)
    tokens: Callable       # (encoder, batch, modalities, norm_stats) -> dict modality -> [B, N, D]
    width: Callable        # (encoder ConfigDict) -> D
    modalities: Callable   # (encoder ConfigDict) -> the modalities the encoder knows
    params: Callable       # (encoder ConfigDict) -> its top-level attributes (loaded from init.path)


def _vq_kwargs(enc):
    # the encoder without the contrastive pools: the head has its own
    return vq_mae_av_lib.kwargs_from_config(enc.model, encoder_only=True) | {"contrastive_weight": 0.0}


def _vq_tokens(encoder, batch, modalities, norm_stats=None):
    x = {m: encoder.embed_tokens(m, encoder.layout.to_tokens(m, batch[vq_mae_av_lib.FIELD[m]].astype(jnp.int32)))
         for m in modalities}
    return encoder.encode(x)


def _vq_params(enc):
    mods = tuple(enc.model.get("modalities", vq_mae_av_lib.MODALITIES))
    return tuple(f"{m}_{p}" for m in vq_mae_av_lib.MODALITIES if m in mods for p in ("embed", "pos")) + (
        "modality_embed", "blocks", "norm")


def _m2d_kwargs(enc):
    from avpretrain.models import m2d

    return m2d.kwargs_from_config(enc.model, encoder_only=True)


def _m2d_create(enc, rngs):
    from avpretrain.models import m2d

    return m2d.M2D(rngs=rngs, **_m2d_kwargs(enc))


def _m2d_inputs(enc, mods):
    from avpretrain import audio

    return {"audio": method.Field((audio.num_samples_for_frames(int(enc.model.input_frames)),))}


def _m2d_tokens(encoder, batch, modalities, norm_stats=None):
    """The normalised log-mel of the waveform window (on device) → the encoder's patch tokens (CLS dropped)."""
    from avpretrain import audio

    lms = audio.normalize(audio.log_mel(batch["audio"]), *(norm_stats or (audio.M2D_NORM_MEAN, audio.M2D_NORM_STD)))
    return {"audio": encoder.encode(lms[:, None])[:, 1:]}


BACKBONES = {
    "vq_mae_av": Backbone(
        create=lambda enc, rngs: vq_mae_av_lib.VQMAEAV(rngs=rngs, **_vq_kwargs(enc)),
        inputs=lambda enc, mods: {vq_mae_av_lib.FIELD[m]: f for m, f in zip(
            vq_mae_av_lib.MODALITIES, _vq_fields(enc)) if m in mods},
        tokens=_vq_tokens,
        width=lambda enc: int(enc.model.width),
        modalities=lambda enc: tuple(m for m in vq_mae_av_lib.MODALITIES
                                     if m in tuple(enc.model.get("modalities", vq_mae_av_lib.MODALITIES))),
        params=_vq_params),
    # M2D (audio): waveform windows of the pretraining crop length; the log-mel statistics of the
    # export (config.encoder.norm_stats, copied by ``prepare``).
    "m2d": Backbone(
        create=_m2d_create, inputs=_m2d_inputs, tokens=_m2d_tokens, width=lambda enc: int(_m2d_kwargs(enc)["width"]),
        modalities=lambda enc: ("audio",), params=lambda enc: ("patch_embed", "cls_token", "pos_embed", "blocks", "norm")),
}
# A distilled student (models/distill.py) and a pre-finetuned encoder (models/prefinetune.py) export
# as M2D encoders.
BACKBONES["distill"] = BACKBONES["prefinetune"] = BACKBONES["m2d"]


def _vq_fields(enc):
    L = vq_mae_av_lib.TokenLayout.from_config(enc.model)
    return (method.Field((L.frames, L.grid, L.grid), "int32", L.video_vocab),
            method.Field((2 * L.frames, L.audio_codes), "int32", L.audio_vocab))


def backbone(config) -> Backbone:
    name = str(config.encoder.method)
    if name not in BACKBONES:
        raise ValueError(f"config.encoder.method={name!r}: the classifier fine-tunes {sorted(BACKBONES)} encoders")
    return BACKBONES[name]


# -- the model ----------------------------------------------------------------------------------
class Classifier(nnx.Module):
    @classmethod
    def param_group(cls, path: tuple) -> str:
        """``optim.lr_mult`` groups: "encoder" (the pretrained part) and "head"."""
        return "encoder" if str(path[0]) == "encoder" else "head"

    def __init__(self, *, encoder, backbone: str, modalities, width: int, num_classes: int, norm_stats=(),
                 head: str = "attention", num_heads: int = 4, num_queries: int = 4, head_depth: int = 1,
                 mlp_ratio: float = 2.0, dropout: float = 0.1, label_smoothing: float = 0.0,
                 focal_gamma: float = 0.0, task: str = "classify", dimensions=(), regression_loss: str = "ccc",
                 target_mean=(), text_dim: int = 0, text_dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        if head not in HEADS:
            raise ValueError(f"model.head={head!r}: choose one of {HEADS}")
        if task not in TASKS or regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"model.task={task!r} / model.regression_loss={regression_loss!r}: choose one of "
                             f"{TASKS} / {REGRESSION_LOSSES}")
        if task == "classify" and num_classes < 2:
            raise ValueError(f"model.num_classes={num_classes}: a classifier needs at least 2 classes")
        if task == "regress" and not dimensions:
            raise ValueError("model.dimensions is empty: regression needs the rating fields to predict")
        if not 0 <= dropout < 1 or not 0 <= label_smoothing < 1 or focal_gamma < 0:
            raise ValueError(f"model.dropout={dropout} and model.label_smoothing={label_smoothing} must be in [0, 1), "
                             f"model.focal_gamma={focal_gamma} >= 0")
        self.encoder, self.backbone = encoder, str(backbone)  # a BACKBONES name (static)
        self.norm_stats = tuple(float(v) for v in norm_stats)  # the encoder's input statistics, if it has any
        self.modalities, self.head_kind, self.num_classes = tuple(modalities), head, int(num_classes)
        self.task, self.dimensions, self.regression_loss = task, tuple(dimensions), regression_loss
        outputs = self.num_classes if task == "classify" else len(self.dimensions)
        self.dropout, self.label_smoothing, self.focal_gamma = float(dropout), float(label_smoothing), float(focal_gamma)
        if head == "attention":
            self.pools = nnx.Dict({m: vq_mae_av_lib.AttentionPool(width, num_heads, rngs, dtype) for m in self.modalities})
            feat = width * len(self.modalities)
        else:
            self.queries = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, num_queries, width)),
                                     out_sharding=(None, None, "embed"))
            self.head_blocks = vit.blocks(head_depth, width, num_heads, mlp_ratio, rngs, dtype)
            feat = width
        self.head_norm = vit.layer_norm(feat, rngs, dtype)
        self.text_dim, self.text_dropout = int(text_dim), float(text_dropout)
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"model.text_dropout={text_dropout} must be in [0, 1)")
        if self.text_dim:  # the transcript's sentence embedding, projected to the audio features' width
            self.text_proj = vit.dense(self.text_dim, feat, (None, "embed"), rngs, dtype)
            self.text_norm = vit.layer_norm(feat, rngs, dtype)
        self.head = vit.dense(feat * (2 if self.text_dim else 1), outputs, ("embed", None), rngs, dtype)
        if task == "regress" and len(target_mean):  # start at the training ratings' means, not at 0
            if len(target_mean) != outputs:
                raise ValueError(f"model.target_mean={tuple(target_mean)} does not match model.dimensions={dimensions}")
            self.head.bias[...] = jnp.asarray(target_mean, self.head.bias.dtype)

    def features(self, batch, text_keep_B=None):
        """The head's input [B, F] (before dropout): the pooled audio, and with text the transcript's [B, 2F]
        (zeros for the examples where ``text_keep_B`` is False: modality dropout in training)."""
        tokens = BACKBONES[self.backbone].tokens(self.encoder, batch, self.modalities, self.norm_stats)
        if self.head_kind == "attention":
            x = jnp.concatenate([self.pools[m](tokens[m]) for m in self.modalities], axis=-1)
        else:
            seq = jnp.concatenate([tokens[m] for m in self.modalities], axis=1)
            q = jnp.broadcast_to(self.queries[...].astype(seq.dtype), (seq.shape[0], *self.queries.shape[1:]))
            h = vit.apply_blocks(self.head_blocks, jnp.concatenate([q, seq], axis=1))
            x = h[:, :q.shape[1]].mean(1)
        x = self.head_norm(x)
        if self.text_dim:
            text = self.text_norm(self.text_proj(batch["text_emb"].astype(x.dtype)))
            if text_keep_B is not None:
                text = jnp.where(text_keep_B[:, None], text, 0)
            x = jnp.concatenate([x, text.astype(x.dtype)], axis=-1)
        return x

    def predict(self, batch):
        """Eval mode: logits float32 [B, num_classes], or the predicted ratings [B, len(dimensions)]."""
        return self.head(self.features(batch)).astype(jnp.float32)

    def loss(self, batch, rng):
        rng, text_rng = jax.random.split(rng)
        text_keep = (jax.random.bernoulli(text_rng, 1 - self.text_dropout, (batch["text_emb"].shape[0],))
                     if self.text_dim and self.text_dropout else None)
        x = self.features(batch, text_keep)
        if self.dropout:
            keep = jax.random.bernoulli(rng, 1 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1 - self.dropout), 0).astype(x.dtype)
        logits = self.head(x).astype(jnp.float32)
        if self.task == "regress":
            targets = jnp.stack([batch[d].astype(jnp.float32) for d in self.dimensions], axis=-1)
            loss, per_dim = regression_loss(logits, targets, self.regression_loss)
            return loss, {"loss": loss, **{f"ccc_{d}": c for d, c in zip(self.dimensions, per_dim)}}
        labels = batch["label"].astype(jnp.int32)
        loss = classification_loss(logits, labels, self.num_classes, self.label_smoothing, self.focal_gamma)
        acc = (logits.argmax(-1) == labels).mean()
        return loss, {"loss": loss, "accuracy": acc}


def classification_loss(logits_BC, labels_B, num_classes: int, label_smoothing: float = 0.0, focal_gamma: float = 0.0):
    """Mean over the batch of −Σ_c q_c (1 − p_c)^γ log p_c with q the smoothed one-hot target."""
    q = jax.nn.one_hot(labels_B, num_classes) * (1 - label_smoothing) + label_smoothing / num_classes
    logp = jax.nn.log_softmax(logits_BC, axis=-1)
    if focal_gamma:
        q = q * (1 - jnp.exp(logp)) ** focal_gamma
    return -(q * logp).sum(-1).mean()


def concordance(pred_BD, target_BD, valid_BD):
    """Lin's concordance correlation coefficient per dimension over the valid rows:
    2·cov / (var_pred + var_target + (mean_pred − mean_target)²) [D]."""
    w = valid_BD.astype(jnp.float32)
    n = jnp.maximum(w.sum(0), 1.0)
    t = jnp.where(valid_BD, target_BD, 0.0)
    mp, mt = (pred_BD * w).sum(0) / n, (t * w).sum(0) / n
    dp, dt = (pred_BD - mp) * w, (t - mt) * w
    cov, vp, vt = (dp * dt).sum(0) / n, (dp * dp).sum(0) / n, (dt * dt).sum(0) / n
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)


def regression_loss(pred_BD, target_BD, kind: str = "ccc"):
    """(1 − mean CCC [+ the mean squared error], the CCC per dimension); NaN targets masked out."""
    valid = jnp.isfinite(target_BD)
    ccc = concordance(pred_BD, target_BD, valid)
    loss = 1 - ccc.mean()
    if kind == "ccc+mse":
        err = jnp.where(valid, pred_BD - jnp.where(valid, target_BD, 0.0), 0.0)
        loss = loss + (err ** 2).sum() / jnp.maximum(valid.sum(), 1)
    return loss, ccc


# -- the method ---------------------------------------------------------------------------------
def create(config, rngs: nnx.Rngs, encoder_only: bool = False) -> Classifier:
    bb, m = backbone(config), config.model
    known = bb.modalities(config.encoder)
    mods = tuple(m.modalities)
    if not mods or any(x not in known for x in mods):
        raise ValueError(f"model.modalities={mods!r}: the {config.encoder.method} encoder has {known}")
    return Classifier(encoder=bb.create(config.encoder, rngs), backbone=str(config.encoder.method), modalities=mods,
                      width=bb.width(config.encoder), num_classes=int(m.num_classes),
                      norm_stats=tuple(config.encoder.get("norm_stats", ())), head=str(m.head),
                      num_heads=int(m.num_heads), num_queries=int(m.num_queries), head_depth=int(m.head_depth),
                      mlp_ratio=float(m.mlp_ratio), dropout=float(m.dropout),
                      label_smoothing=float(m.label_smoothing), focal_gamma=float(m.focal_gamma),
                      task=str(m.get("task", "classify")), dimensions=tuple(m.get("dimensions", ())),
                      regression_loss=str(m.get("regression_loss", "ccc")),
                      target_mean=tuple(float(v) for v in m.get("target_mean", ())),
                      text_dim=int(m.get("text_dim", 0) or 0), text_dropout=float(m.get("text_dropout", 0.0)),
                      dtype=jnp.dtype(config.encoder.model.get("dtype", "float32")), rngs=rngs)


def inputs(config) -> dict:
    fields = backbone(config).inputs(config.encoder, tuple(config.model.modalities))
    if int(config.model.get("text_dim", 0) or 0):
        fields |= {"text_emb": method.Field((int(config.model.text_dim),), "float16")}
    if config.model.get("task", "classify") == "regress":
        return fields | {d: method.Field((), "float32") for d in config.model.dimensions}
    return fields | {"label": method.Field((), "int32", int(config.model.num_classes) or None)}



def init_sources(config) -> list:
    if not config.init.path:
        return []
    params = tuple(config.init.params) or backbone(config).params(config.encoder)
    return [method.InitSource(str(config.init.path), params, into=("encoder",))]


def source_config(path) -> dict:
    """The config (a dict) of an export or a training workdir."""
    from avpretrain import workdir as workdir_lib

    path = pathlib.Path(path)
    kind = workdir_lib.kind(path)
    if kind == "export":
        return workdir_lib.export_meta(path)["config"]
    if kind == "workdir" or (path / workdir_lib.CONFIG_NAME).is_file():
        return workdir_lib.read_json(path / workdir_lib.CONFIG_NAME)
    raise FileNotFoundError(f"config.init.path={path}: neither an export nor a training workdir")


def _source_norm_stats(path):
    """The log-mel statistics of an export or workdir (None when it has none)."""
    from avpretrain import workdir as workdir_lib

    if workdir_lib.kind(path) == "export":
        return workdir_lib.export_meta(path).get("norm_stats")
    cfg = workdir_lib.training_config(path)
    return workdir_lib.stored_norm_stats(cfg, path) if cfg is not None else None


def prepare(config) -> None:
    """Fills ``config.encoder`` from ``config.init.path`` and the classes from the dataset."""
    import ml_collections

    from avpretrain import metrics as metrics_lib
    from avpretrain.data import folds

    if config.init.path:
        src = source_config(config.init.path)
        if src.get("method") not in BACKBONES:
            raise ValueError(f"config.init.path={config.init.path} is a {src.get('method')!r} model; the classifier "
                             f"fine-tunes {sorted(BACKBONES)} encoders")
        metrics_lib.log(f"encoder: {src['method']} architecture of {config.init.path}")
        stats = _source_norm_stats(config.init.path)
        if src.get("data", {}).get("sample_rate", config.data.sample_rate) != config.data.sample_rate:
            raise ValueError(f"config.init.path={config.init.path} was trained at {src['data']['sample_rate']} Hz, "
                             f"config.data.sample_rate is {config.data.sample_rate}")
        with config.unlocked():
            config.encoder.method = src["method"]
            config.encoder.model = ml_collections.ConfigDict(src["model"])
            config.encoder.norm_stats = tuple(stats or ())
    if config.model.get("text_fusion", False):
        _prepare_text(config)
    if config.model.get("task", "classify") == "regress":
        means = _check_training_ratings(config)
        with config.unlocked():
            config.model.target_mean = tuple(means)
        return
    names = folds.class_names(config.data)
    if config.model.num_classes and int(config.model.num_classes) != len(names):
        raise ValueError(f"config.model.num_classes={config.model.num_classes} but {config.data.dir} has "
                         f"{len(names)} classes {names}")
    _check_training_classes(config, names)
    with config.unlocked():
        config.model.num_classes = len(names)
        config.model.class_names = tuple(names)


def _prepare_text(config) -> None:
    """Audio-text fusion: the stored transcript embeddings of the dataset fill ``data.text_model`` and
    ``model.text_dim``; a training split with a clip without transcript is refused here, before
    anything is built (``pipeline.with_text``)."""
    from avpretrain import metrics as metrics_lib
    from avpretrain.data import folds

    if config.data.get("text_field", "captions") != "transcript":
        raise ValueError(f"model.text_fusion reads the clips' transcripts: set data.text_field='transcript' (it is "
                         f"{config.data.get('text_field')!r}); configs/finetune.py:text=1 does")
    if config.data.get("asr_model"):
        _transcribe(config)
    src = pipeline.with_text(config.data, config.data.split, folds.split_source(config.data, config.data.split),
                             {"text_emb": None})
    with config.unlocked():
        config.data.text_model, config.model.text_dim = src.store.model, src.store.dim
    metrics_lib.log(f"audio-text fusion: the transcripts' {src.store.dim}-d embeddings of {src.store.model} "
                    f"({len(src)} training clips)")


def _transcribe(config) -> None:
    """``data.asr_model``: embeds the dataset's transcripts, those of clips without one from the local
    speech recogniser (``captions.embed_captions``; a no-op once stored)."""
    from avpretrain.data import captions

    if jax.process_count() > 1:
        raise ValueError("config.data.asr_model: transcribe before a multi-process run, one shard per host: "
                         f"avpretrain data embed-captions --data {config.data.dir} --field transcript "
                         f"--asr-model {config.data.asr_model} --shard i/n")
    captions.embed_captions(config.data.dir, model=config.data.text_model or captions.DEFAULT_TEXT_MODEL,
                            field="transcript", asr_model=str(config.data.asr_model))


def _check_training_ratings(config) -> list[float]:
    """Refuses a dataset without the rating fields, or a training split with fewer than two ratings
    of a dimension (ESD, say, has none): nothing to regress on. Returns each dimension's mean rating
    over the training split (the regression head's initial bias)."""
    from avpretrain.data import folds, source as source_lib

    features = source_lib.open_builder(config.data.dir).info.features
    dims = tuple(config.model.dimensions)
    missing = [d for d in dims if d not in features]
    if missing:
        raise ValueError(f"{config.data.dir} has no {missing} ratings (an emotion corpus has them: "
                         f"data_pipelines/emotion.py); model.dimensions={dims}")
    src = folds.split_source(config.data, config.data.split)
    rated, total = np.zeros(len(dims), int), np.zeros(len(dims))
    for i in range(len(src)):
        values = np.array([float(src[i][d]) for d in dims])
        rated += np.isfinite(values)
        total += np.nan_to_num(values)
    if (rated < 2).any():
        bad = [d for d, n in zip(dims, rated) if n < 2]
        raise ValueError(f"{config.data.dir}: training split {config.data.split!r} ({len(src)} examples) has fewer than "
                         f"2 rated examples of {bad}: nothing to regress on (set model.dimensions to the rated ones)")
    return list(total / rated)


def _check_training_classes(config, names) -> None:
    """Refuses a training split (or fold) without an example of some class: its head could not learn it."""
    from avpretrain.data import folds

    src = folds.split_source(config.data, config.data.split)
    seen = np.zeros(len(names), bool)
    for i in range(len(src)):
        label = int(src[i]["label"])
        if not 0 <= label < len(names):
            raise ValueError(f"{config.data.dir}: label {label} of training record {i} is outside the {len(names)} "
                             f"classes {names}")
        seen[label] = True
    if not seen.all():
        where = f"fold {config.data.fold} of {config.data.folds}" if config.data.get("folds") else config.data.dir
        missing = ", ".join(f"{names[c]!r} (label {c})" for c in np.flatnonzero(~seen))
        raise ValueError(f"{where}: training split {config.data.split!r} ({len(src)} examples) has no example of "
                         f"class {missing}: the head cannot learn it")


class Predictor:
    """The export adapter: ``predict(batch)`` → float32 logits [B, C] (``class_names``) or ratings
    [B, D] (``dimensions``, ``task == "regress"``) for a dict of the input fields (``inputs``, e.g.
    ``audio`` or ``audio_codes`` / ``video_codes``)."""

    def __init__(self, model, config, meta=None):
        self.model, self.config, self.meta = model, config, meta
        self.task = str(config.model.get("task", "classify"))
        if self.task == "classify":
            self.class_names = list(config.model.class_names)
        else:
            self.dimensions = list(config.model.dimensions)
        self.inputs = pipeline.model_fields(method.of(config).inputs(config))
        graphdef, state = nnx.split(model)
        self._state = state
        self._predict = jax.jit(lambda state, batch: nnx.merge(graphdef, state).predict(batch))

    @property
    def reads_text(self) -> bool:
        """Whether the model fuses a transcript (``text_emb``, see ``embed_text``) with the audio."""
        return "text_emb" in self.inputs

    def embed_text(self, transcripts) -> np.ndarray:
        """float16 [N, text_dim]: the ``text_emb`` input of an audio-text model for N transcripts, by the
        sentence-embedding model it was trained with (``config.data.text_model``)."""
        from avpretrain.data import captions

        if not self.reads_text:
            raise ValueError("embed_text: this model reads audio only (fine-tuned without text=1)")
        if getattr(self, "_sentence_encoder", None) is None:
            self._sentence_encoder = captions.SentenceEncoder(self.config.data.text_model)
        return captions.l2_normalize_f16(self._sentence_encoder.encode([str(t) for t in transcripts]))

    def predict(self, batch: dict) -> np.ndarray:
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise ValueError(f"predict: the batch lacks {missing} (this model reads {sorted(self.inputs)})")
        return np.asarray(self._predict(self._state, {k: jnp.asarray(batch[k]) for k in self.inputs}))


METHOD = method.register(method.Method(
    name="classifier", create=create, inputs=inputs, init_sources=init_sources, prepare=prepare,
    pretrained=Predictor, predict=lambda model, batch: model.predict(batch)))
