"""On-device front ends: what a method's step computes from the raw batch fields before the loss.

Each op is a small callable ``op(batch, stats) -> batch`` that adds one key, run inside the jitted
step (datasets store waveforms and JPEG frames, never features). ``LogMel`` has statistics (the
log-mel's mean/std over random training crops): computed once per run, stored in the workdir
(``norm_stats.json``) and carried by exports; the others have none.

    LogMel()            batch["audio"] [B, S]          -> batch["lms"]    [B, 1, 80, S // 160 + 1], normalised
    PowerSpectrogram()  batch["audio"] [B, S]          -> batch["spec"]   [B, S // 320, 513] (VQ-VAE audio)
    VideoFrames()       batch["video"] [B, T, H, W, 3] -> batch["frames"] [B, T, H, W, 3] float, (x/255 - 0.5) / 1
"""
from __future__ import annotations

import dataclasses
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from avpretrain import audio, metrics as metrics_lib
from avpretrain import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class LogMel:
    """M2D's front end: the 80-band log-mel of ``audio`` (16 kHz, 25 ms / 10 ms), normalised."""

    needs_stats = True

    def __call__(self, batch, stats):
        return dict(batch, lms=audio.normalize(audio.log_mel(batch["audio"]), *stats)[:, None])


@dataclasses.dataclass(frozen=True)
class PowerSpectrogram:
    """Power spectrum per frame of ``audio`` (n_fft 1024, Hann 1024, hop 320: 20 ms): one frame per hop,
    frame t centred on sample t·hop, so 2 s (32,000 samples) give 100 frames of 513 bins."""

    n_fft: int = 1024
    hop: int = 320

    def __call__(self, batch, stats):
        del stats
        spec = audio.power_spectrogram(batch["audio"], n_fft=self.n_fft, hop_length=self.hop)
        return dict(batch, spec=spec[:, :batch["audio"].shape[1] // self.hop])


@dataclasses.dataclass(frozen=True)
class VideoFrames:
    """uint8 RGB frames → float ``(x / 255 - mean) / std`` (the VQ-VAE reference: mean 0.5, std 1)."""

    mean: float = 0.5
    std: float = 1.0
    dtype: str = "float32"

    def __call__(self, batch, stats):
        del stats
        frames = (batch["video"].astype(jnp.float32) / 255.0 - self.mean) / self.std
        return dict(batch, frames=frames.astype(self.dtype))


def apply(ops, batch, stats):
    for op in ops:
        batch = op(batch, stats)
    return batch


# -- the log-mel's statistics -------------------------------------------------------------------
def load_or_compute_norm_stats(config, workdir) -> tuple[float, float]:
    """The stored statistics (``workdir.stored_norm_stats``), else those of the first init source (a
    model keeps the statistics it was trained with), else computed from random crops; saved in the workdir."""
    from avpretrain import method as method_lib

    stored = workdir_lib.stored_norm_stats(config, workdir)
    if stored is not None:
        return stored
    sources = method_lib.of(config).init_sources(config)
    if sources:
        (mean, std), origin = workdir_lib.model_norm_stats(sources[0].path), f"those of {sources[0].path}"
    else:
        (mean, std), origin = compute_norm_stats(config), "random crops"
    path = pathlib.Path(workdir) / workdir_lib.NORM_STATS_NAME
    if jax.process_index() == 0:
        workdir_lib.write_norm_stats(workdir, mean, std, config.data.dir)
    metrics_lib.log(f"normalisation statistics ({origin}): mean={mean:.4f} std={std:.4f} -> {path}")
    return mean, std


_STATS_PASSES = itertools.count()  # a barrier's name is used once


def compute_norm_stats(config, num_batches: int | None = None) -> tuple[float, float]:
    """Mean/std of the log-mel over random training crops (all processes contribute)."""
    from jax.experimental import multihost_utils

    from avpretrain.data import pipeline

    num_batches = num_batches or config.data.stats_batches
    it = iter(pipeline.train_dataset(config, seed=config.seed + 7919))
    lms_fn = jax.jit(lambda x: (audio.log_mel(x).mean(), (audio.log_mel(x) ** 2).mean()))
    sums = np.zeros(2)
    for _ in range(num_batches):
        sums += np.array(jax.device_get(lms_fn(next(it)["audio"])))
    # CPU collectives (gloo) connect at the first one with a fixed 30 s timeout, and processes reach
    # this one at different times (the trainer traces and loads the step beside it): together
    from avpretrain import runtime

    runtime.barrier(f"avpretrain-norm-stats-{next(_STATS_PASSES)}")
    sums = multihost_utils.process_allgather(sums).reshape(-1, 2).mean(0) / num_batches
    return float(sums[0]), float(np.sqrt(max(sums[1] - sums[0] ** 2, 1e-12)))
