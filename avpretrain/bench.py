"""``avpretrain bench``: the trainer's own jitted step on synthetic waveforms, and the input pipeline.

Reports compile time, median step time, examples/s and audio-hours/s, model FLOPs (analytic, and
XLA's cost analysis for comparison), achieved TFLOP/s and MFU, parameter counts, and, when
``config.data.dir`` is set, the host pipeline's clips/s. No dataset is needed for the step figures.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import audio, metrics as metrics_lib, sharding, train
from avpretrain.data import pipeline


SYNTHETIC_TEXT_DIM = 768  # sentence-embedding width without a dataset (GTE-base, as in M2D-CLAP)


def _xla_figures(compiled) -> tuple[float | None, float | None]:
    """(FLOPs, bytes of arguments + temporaries) of one device's program, when XLA reports them."""
    flops = memory = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # not every backend implements it
        pass
    try:
        mem = compiled.memory_analysis()
        memory = float(mem.argument_size_in_bytes + mem.temp_size_in_bytes)
    except Exception:
        pass
    return flops, memory


def _step_figures(config, mesh, steps: int, warmup: int) -> dict:
    rules = config.sharding_rules
    norm_stats = tuple(config.data.norm_stats) or (audio.M2D_NORM_MEAN, audio.M2D_NORM_STD)
    if config.data.use_captions:  # audio-language configs: the text width of the stored embeddings
        if config.data.dir:
            train.resolve_text_targets(config)
        elif not config.model.get("text_dim"):
            config.model.text_dim = SYNTHETIC_TEXT_DIM
    train_state = train.create_train_state(config, mesh)
    model = train_state.model
    trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, train_state.opt.wrt)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef, state = nnx.split(train_state)
    step_fn, _, batch_sharding = train.make_train_step(config, mesh, graphdef, state, norm_stats)

    local_batch = pipeline.process_batch_size(config.batch_size)
    rng = np.random.default_rng(config.seed + jax.process_index())
    waves = (0.1 * rng.standard_normal((local_batch, pipeline.clip_samples(config)))).astype(np.float32)
    batch = {"audio": waves}
    if config.data.use_captions:
        text = rng.standard_normal((local_batch, config.model.text_dim))
        batch["text_emb"] = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float16)
    batch = pipeline.to_global(batch, batch_sharding)

    with sharding.mesh_rules(mesh, rules):
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch, jnp.asarray(0, jnp.int32)).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            state, out = compiled(state, batch, jnp.asarray(i, jnp.int32))
            jax.block_until_ready((state, out))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    xla_flops, xla_bytes = _xla_figures(compiled)
    return {"compile_s": compile_s, "step_time_s": float(np.median(times)), "loss": float(out["loss"]),
            "flops_per_step": model.flops_per_example() * config.batch_size,
            "xla_flops_per_device_step": xla_flops, "xla_bytes_per_device": xla_bytes,
            "params_trainable": int(trainable), "params_total": int(total)}


def _pipeline_figures(config, batches: int, windows: int = 5) -> dict:
    """This process's clips/s from ``pipeline.train_dataset`` after 2 warm-up batches.

    grain prefetches, so single batches often arrive instantly: the figure is the median over
    ``windows`` windows of ``batches // windows`` batches each (and the overall rate).
    """
    iterator = iter(pipeline.train_dataset(config))
    for _ in range(2):
        next(iterator)
    per_window = max(1, batches // windows)
    rates, clips = [], 0
    start = time.perf_counter()
    for _ in range(windows):
        t0, n = time.perf_counter(), 0
        for _ in range(per_window):
            n += len(next(iterator)["audio"])
        rates.append(n / max(time.perf_counter() - t0, 1e-9))
        clips += n
    return {"pipeline_clips_per_s": float(np.median(rates)),
            "pipeline_clips_per_s_total": clips / max(time.perf_counter() - start, 1e-9)}


def run(config, *, steps: int = 10, warmup: int = 2, peak_tflops: float = 0.0, data_batches: int = 20) -> dict:
    """Benchmarks ``config``; prints a block of figures ending in one ``bench:`` line; returns them."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    mesh = train.make_mesh(config)
    clip_seconds = pipeline.clip_samples(config) / config.data.sample_rate
    r = {"batch_size": config.batch_size, "num_devices": jax.device_count(),
         "device": jax.devices()[0].device_kind, "clip_seconds": clip_seconds}
    r.update(_step_figures(config, mesh, steps, warmup))
    step_s = r["step_time_s"]
    r["examples_per_s"] = config.batch_size / step_s
    r["audio_hours_per_s"] = r["examples_per_s"] * clip_seconds / 3600
    r["tflops"] = r["flops_per_step"] / step_s / 1e12
    r["mfu"] = r["tflops"] / (peak_tflops * r["num_devices"]) if peak_tflops > 0 else None
    if config.data.dir and data_batches > 0:
        r.update(_pipeline_figures(config, data_batches))
        r["pipeline_audio_hours_per_s"] = r["pipeline_clips_per_s"] * clip_seconds / 3600

    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    xla_total = r["xla_flops_per_device_step"] and r["xla_flops_per_device_step"] * r["num_devices"]
    lines = [
        f"config             {config.get('config_spec', '?')}  batch {config.batch_size}  "
        f"crop {clip_seconds:.2f} s  mesh {dict(mesh.shape)}",
        f"devices            {r['num_devices']} x {r['device']}",
        f"parameters         {r['params_trainable']:,} trainable / {r['params_total']:,} total",
        f"compile            {r['compile_s']:.1f} s",
        f"step time          {1e3 * step_s:.2f} ms (median of {steps} after {warmup} warm-up); loss {r['loss']:.4f}",
        f"throughput         {r['examples_per_s']:.1f} examples/s, {r['audio_hours_per_s']:.4f} audio-hours/s",
        f"model FLOPs/step   {r['flops_per_step']:.4g} analytic; XLA cost analysis {fmt(xla_total, '.4g')} "
        f"(all devices)",
        f"achieved           {r['tflops']:.3f} TFLOP/s; MFU {fmt(r['mfu'], '.3%')} "
        f"(peak {peak_tflops or 'n/a'} TFLOP/s per device)",
        f"XLA memory/device  {fmt(r['xla_bytes_per_device'] and r['xla_bytes_per_device'] / 2**30, '.3f')} GiB "
        f"(arguments + temporaries)",
    ]
    if "pipeline_clips_per_s" in r:
        lines.append(f"input pipeline     {r['pipeline_clips_per_s']:.1f} clips/s (median of 5 windows), "
                     f"{r['pipeline_clips_per_s_total']:.1f} overall over {data_batches} batches "
                     f"({r['pipeline_audio_hours_per_s']:.4f} audio-hours/s per process, "
                     f"{config.data.num_workers} workers)")
    lines.append(f"bench: step_time_ms={1e3 * step_s:.3f} examples_per_s={r['examples_per_s']:.2f} "
                 f"tflops={r['tflops']:.4f} mfu={fmt(r['mfu'], '.4f')} "
                 f"pipeline_clips_per_s={fmt(r.get('pipeline_clips_per_s'), '.2f')}")
    metrics_lib.log("\n".join(lines))
    return r
