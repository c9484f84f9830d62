"""The method contract: what a training method provides, and the registry of methods.

A method is one module that builds a ``Method`` and registers it (``register``). It owns its path
from batch to loss; the trainer (``train.py``) owns only what every method shares (mesh, state,
data iterator, jitted step, checkpoint/resume, signals, non-finite stop, logging):

- ``create(config, rngs, encoder_only)``: the model (an ``nnx.Module`` with ``loss(batch, rng) ->
  (loss, metrics)``); ``encoder_only`` builds what an export keeps.
- ``inputs(config)``: the batch fields it needs, name → ``Field`` (per-example shape and dtype). The
  input pipeline reads, crops and batches exactly these (``data.pipeline.FIELDS`` lists the names
  it knows: waveform, aligned video frames, a caption embedding, the label).
- ``frontend``: on-device ops applied to the batch before ``loss`` (``frontend.LogMel``,
  ``PowerSpectrogram``, ``VideoFrames``; none for token inputs). Ops with statistics (the log-mel's
  mean/std) get them computed once and stored in the workdir and the export.
- ``update``: the step body, when the default (``step.default_update``: gradients of the
  trainable params, optimizer at the step's ``lr``, EMA at its ``ema_decay``) does not fit; it gets
  the step's inputs (``step.StepInputs``: step, lr, ema_decay, seed) as traced values.
- ``train_data(config)``: the training stream, when the method reads more than one dataset (several
  corpora, a labelled source and an unlabelled target; ``data.streams``): this process's infinite,
  checkpointable grain ``IterDataset`` of batches with the fields of ``inputs``. Default:
  ``pipeline.train_dataset`` over ``config.data.dir``. The method's ``prepare`` checks its datasets.
- ``init_sources(config)``: what to load before step 0 (zero, one or several exports or workdirs,
  each into a part of the model); default: ``config.init.path`` / ``config.init.params``.
- ``prepare(config)``: fills derived config values before ``config.json`` is written (e.g. the
  caption-embedding width).
- ``pretrained(model, config, meta)``: the export adapter, what ``avpretrain.load_pretrained``
  returns for this method.
- ``images(model, batch)``: optional pictures of what the model does (e.g. a few inputs and their
  reconstructions), name → uint8 RGB [H, W, 3]; a pure, jittable function of the model in eval mode
  (nothing updated) and the front-end-processed batch (what ``loss`` gets), rendered in jnp. The
  trainer writes them every ``image_every`` steps (TensorBoard + ``<workdir>/images/<name>-<step>.png``).
- ``predict(model, batch)``: optional eval-mode class logits, float32 [B, C], jittable; with it the
  trainer validates every ``eval_every`` steps and keeps the best step (``avpretrain/validation.py``),
  and ``avpretrain eval classify`` / ``kfold`` evaluate its exports.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
    """One batch field: its per-example ``shape`` (the batch dimension comes first) and dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int | None = None  # integer fields: values lie in [0, high) (code-book size, classes); synthetic batches use it


@dataclasses.dataclass(frozen=True)
class InitSource:
    """Loads the attributes ``params`` of the model at ``path`` (an export or a training workdir's
    latest checkpoint) into ``model.<into>.<param>`` (``into`` empty: the model's own attributes)."""

    path: str
    params: tuple[str, ...]
    into: tuple[str, ...] = ()


def default_init_sources(config) -> list[InitSource]:
    if not config.init.path:
        return []
    return [InitSource(str(config.init.path), tuple(config.init.params))]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    create: Callable  # (config, rngs, encoder_only: bool) -> nnx.Module
    inputs: Callable  # (config) -> dict[str, Field]
    frontend: tuple = ()  # on-device ops, applied in order (avpretrain.frontend)
    update: Callable | None = None  # (train_state, batch, rng, inputs, config) -> metrics with "loss"
    init_sources: Callable = default_init_sources  # (config) -> list[InitSource]
    train_data: Callable | None = None  # (config) -> grain IterDataset of this process's batches
    prepare: Callable | None = None  # (config) -> None, may fill config values
    pretrained: Callable | None = None  # (model, config, export_meta) -> downstream object
    images: Callable | None = None  # (model, batch) -> dict[str, uint8 [H, W, 3]], jittable
    predict: Callable | None = None  # (model, batch) -> float32 logits [B, C], jittable, eval mode

    @property
    def needs_stats(self) -> bool:
        return any(getattr(op, "needs_stats", False) for op in self.frontend)

    def synthetic_batch(self, config, batch: int, rng: np.random.Generator) -> dict:
        """Random numpy inputs of the declared fields (bench, shape checks)."""
        out = {}
        for name, f in self.inputs(config).items():
            shape = (batch, *f.shape)
            if np.issubdtype(np.dtype(f.dtype), np.integer):
                high = f.high or (256 if f.dtype == "uint8" else 2)
                out[name] = rng.integers(0, high, shape).astype(f.dtype)
            elif name == "audio":
                out[name] = (0.1 * rng.standard_normal(shape)).astype(f.dtype)
            else:
                x = rng.standard_normal(shape)
                out[name] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(f.dtype)
        return out


_REGISTRY: dict[str, Method] = {}
# Built-in methods, imported on first use: name -> module that registers it.
BUILTIN = {"m2d": "avpretrain.models.m2d", "m2d_clap": "avpretrain.models.m2d_clap",
           "m2d2": "avpretrain.models.m2d_clap", "vqvae_audio": "avpretrain.models.vqvae",
           "vqvae_video": "avpretrain.models.vqvae", "vq_mae_av": "avpretrain.models.vq_mae_av",
           "classifier": "avpretrain.models.classifier",
           "distill": "avpretrain.models.distill", "prefinetune": "avpretrain.models.prefinetune",
           "emo_dna": "avpretrain.models.emo_dna"}


def register(method: Method) -> Method:
    """Adds ``method`` under ``method.name`` (replacing an earlier one of that name)."""
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        raise ValueError(f"unknown config.method {name!r}; known: {sorted(set(BUILTIN) | set(_REGISTRY))}")
    return _REGISTRY[name]


def of(config) -> Method:
    return get(config.method)


def clip_seconds(config) -> float:
    """Seconds of signal in one training example: the audio crop, else the video crop, else the code
    window, else 0."""
    from avpretrain.data import frames

    fields = of(config).inputs(config)
    if "audio" in fields:
        return fields["audio"].shape[0] / config.data.sample_rate
    if "video" in fields:
        return fields["video"].shape[0] / frames.VIDEO_FPS
    if "video_codes" in fields:  # code frames at the video frame rate (audio codes: twice as many)
        return fields["video_codes"].shape[0] / frames.VIDEO_FPS
    if "audio_codes" in fields:
        return fields["audio_codes"].shape[0] / (2 * frames.VIDEO_FPS)
    return 0.0
