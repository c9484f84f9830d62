"""Multi-corpus pre-finetuning of an exported encoder for few-shot emotion recognition (``method="prefinetune"``).

The recipe of Chen & Yu (Interspeech 2023) on our encoders: one shared encoder (any M2D-family
export, ``config.init.path``) and one linear classification head per emotion corpus
(``config.data.dirs``). Each batch comes from one corpus, corpus k with probability n_k / Σ n
(its share of the training clips; ``data.streams.TaskMixture``, the same draw on every process),
and is scored by that corpus's head only; the cross-entropy is divided by ln(C_k), the loss of a
uniform guess over that corpus's C_k classes, so corpora with many and few classes weigh alike.
Every head is a parameter of the model and is trained (the public code builds its heads outside
the optimizer's parameters, so they never learn: DESIGN §5).

The head reads the clip's scene embedding, the mean over time of the encoder's frame embeddings
(what ``load_pretrained(...).scene_embeddings`` gives a downstream user and the few-shot protocol
reads), so pre-finetuning shapes exactly the features that are evaluated.

The model is the encoder itself (an ``M2D`` subclass) with the heads as extra attributes;
``encoder_only`` (exports) drops the heads, so an export is an M2D encoder: the few-shot protocol,
probes, ``eval layers`` and fine-tuning take it as they take the encoder it started from.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import frontend, method
from avpretrain.models import m2d, vit

NEG = -1e9  # the logit of a class the batch's corpus does not have


class PreFinetune(m2d.M2D):
    """The encoder (its own M2D attributes) + ``heads``: one linear head per corpus on the scene embedding."""

    TRAINABLE = nnx.Param
    EMA = False

    def __init__(self, *, num_classes, scale_loss: bool = True, encoder_only: bool = False, rngs: nnx.Rngs,
                 **encoder):
        """``num_classes``: each corpus's number of classes, in the order of the batch's ``task`` index."""
        super().__init__(encoder_only=True, rngs=rngs, **encoder)
        self.encoder_only = encoder_only
        self.num_classes, self.scale_loss = tuple(int(c) for c in num_classes), bool(scale_loss)
        if encoder_only:
            return
        if not self.num_classes or min(self.num_classes) < 2:
            raise ValueError(f"pre-finetuning needs at least one corpus of at least 2 classes, got {self.num_classes}")
        features = self.grid[0] * self.dims["width"]
        dtype = encoder.get("dtype", jnp.float32)
        self.heads = nnx.List([vit.dense(features, c, ("embed", None), rngs, dtype) for c in self.num_classes])

    def scene_embedding(self, lms):
        """[B, gF·D]: the frame embeddings averaged over time (``PretrainedEncoder.scene_embeddings``)."""
        return self.frame_embeddings(lms).mean(1)

    def task_logits(self, x_BF, task_B):
        """float32 [B, max C]: each example's logits from its corpus's head (classes it lacks at ``NEG``)."""
        width = max(self.num_classes)
        every = jnp.stack([jnp.pad(head(x_BF).astype(jnp.float32), ((0, 0), (0, width - c)), constant_values=NEG)
                           for head, c in zip(self.heads, self.num_classes)])      # [K, B, max C]
        return jnp.take_along_axis(every, task_B[None, :, None], axis=0)[0]

    def loss(self, batch, rng):
        task, labels = batch["task"].astype(jnp.int32), batch["label"].astype(jnp.int32)
        logits = self.task_logits(self.scene_embedding(batch["lms"]), task)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], axis=1)[:, 0]
        scale = jnp.log(jnp.asarray(self.num_classes, jnp.float32))[task] if self.scale_loss else 1.0
        loss = (ce / scale).mean()
        return loss, {"loss": loss, "ce": ce.mean(), "accuracy": (logits.argmax(-1) == labels).mean()}

    def flops_per_example(self) -> float:
        """Encoder forward and backward (3×) over every patch (no masking) + the heads."""
        d, n = self.dims, self.num_patches
        encoder = 2 * n * self.patch ** 2 * d["width"] + m2d.transformer_flops(1 + n, d["width"], d["depth"],
                                                                              d["mlp_ratio"])
        return float(3 * (encoder + 2 * self.grid[0] * d["width"] * sum(self.num_classes)))


# -- the method ---------------------------------------------------------------------------------
def create(config, rngs: nnx.Rngs, encoder_only: bool = False):
    if not config.model:
        raise ValueError("config.model is empty: it is read from config.init.path when a run starts")
    encoder = m2d.kwargs_from_config(config.model, encoder_only=True)
    encoder.pop("encoder_only")
    return PreFinetune(num_classes=tuple(config.prefinetune.num_classes), scale_loss=bool(config.prefinetune.scale_loss),
                       encoder_only=encoder_only, rngs=rngs, **encoder)


def inputs(config) -> dict:
    fields = m2d.audio_inputs(config)
    classes = tuple(config.prefinetune.num_classes) or (2,)
    return fields | {"label": method.Field((), "int32", min(classes)),
                     "task": method.Field((), "int32", max(len(classes), 1))}


def init_sources(config) -> list:
    if not config.init.path:
        raise ValueError("config.init.path is empty: name the exported encoder to pre-finetune")
    return [method.InitSource(str(config.init.path), m2d.M2D.ENCODER)]


def corpus_names(dirs, names=()) -> list[str]:
    """``names`` when given (one per directory), else each directory's name; they must be distinct."""
    import pathlib

    names = list(names) or [pathlib.Path(str(d).rstrip("/")).name for d in dirs]
    if len(names) != len(dirs):
        raise ValueError(f"config.data.names={tuple(names)}: one name per corpus of config.data.dirs ({len(dirs)})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"config.data.dirs: corpora named alike ({', '.join(dupes)}); name them with "
                         "--config.data.names=a,b,...")
    bad = [n for n in names if not n or "+" in n]
    if bad:
        raise ValueError(f"corpus names {bad}: a name is non-empty and has no '+' (data.use joins names with '+')")
    return names


def selected(config) -> list[tuple[str, str]]:
    """(name, directory) of the corpora this run pre-finetunes on: ``data.use`` ("a+b") of ``data.dirs``, or all."""
    dirs = [str(d) for d in config.data.dirs]
    if not dirs:
        raise ValueError("config.data.dirs is empty: list the emotion corpora to pre-finetune on "
                         "(--config.data.dirs=/data/crema_d,/data/ravdess,...)")
    names = corpus_names(dirs, tuple(config.data.names))
    use = [u for u in str(config.data.use or "").split("+") if u]
    unknown = [u for u in use if u not in names]
    if unknown:
        raise ValueError(f"config.data.use={config.data.use!r}: {unknown} not among the corpora {names}")
    if len(set(use)) != len(use):
        raise ValueError(f"config.data.use={config.data.use!r} names a corpus twice")
    return [(n, d) for n, d in zip(names, dirs) if not use or n in use]


def prepare(config) -> None:
    """Fills the encoder's architecture and statistics (from ``init.path``) and each corpus's classes and size."""
    import ml_collections

    from avpretrain import metrics as metrics_lib
    from avpretrain.data import folds, source as source_lib

    src, stats = m2d.encoder_source(config.init.path, "init.path", config.data.sample_rate)
    chosen = selected(config)
    corpora, classes, sizes = [], [], []
    for name, d in chosen:
        source_lib.find_dataset_dir(d)
        features = source_lib.open_builder(d).info.features
        if "label" not in features or not hasattr(features["label"], "names"):
            raise ValueError(f"{d} (corpus {name!r}) has no class labels: pre-finetuning trains a classifier per corpus")
        source_lib.require_single_label(d, f"pre-finetuning (corpus {name!r})")
        labels = tuple(features["label"].names)
        if len(labels) < 2:
            raise ValueError(f"{d} (corpus {name!r}) has {len(labels)} class {list(labels)}: a head needs at least 2")
        data = ml_collections.ConfigDict({"dir": d, "folds": "", "fold": -1})
        n = len(folds.split_source(data, str(config.data.split)))
        if n < 1:
            raise ValueError(f"{d} (corpus {name!r}): split {config.data.split!r} is empty")
        corpora.append(name)
        classes.append(labels)
        sizes.append(n)
    with config.unlocked():
        config.model = ml_collections.ConfigDict(src["model"])
        config.prefinetune.init_method = src["method"]
        config.data.norm_stats = stats
        p = config.prefinetune
        p.corpora, p.dirs = tuple(corpora), tuple(d for _, d in chosen)
        p.num_classes, p.sizes = tuple(len(c) for c in classes), tuple(sizes)
        p.class_names = tuple(",".join(c) for c in classes)
    total = sum(sizes)
    metrics_lib.log("pre-finetuning on " + "; ".join(
        f"{n} ({len(c)} classes, {s} clips, p={s / total:.3f}, loss / ln {len(c)} = {math.log(len(c)):.3f})"
        for n, c, s in zip(corpora, classes, sizes)))


def train_data(config):
    """One ``pipeline.train_dataset`` per corpus (its own shuffle seed), mixed batch by batch in
    proportion to the corpora's sizes (``streams.TaskMixture``)."""
    from avpretrain.data import pipeline, streams

    fields = {k: v for k, v in inputs(config).items() if k != "task"}
    parents = []
    for k, d in enumerate(config.prefinetune.dirs):
        c = config.copy_and_resolve_references()
        with c.unlocked():
            c.data.dir = str(d)
        parents.append(pipeline.train_dataset(c, seed=config.seed + 1009 * (k + 1), inputs=fields))
    return streams.TaskMixture(parents, np.asarray(config.prefinetune.sizes, np.float64), seed=config.seed)


METHOD = method.register(method.Method(
    name="prefinetune", create=create, inputs=inputs, frontend=(frontend.LogMel(),), init_sources=init_sources,
    prepare=prepare, train_data=train_data, pretrained=m2d.pretrained_encoder))
