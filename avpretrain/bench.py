"""``avpretrain bench``: the trainer's own jitted step on synthetic waveforms, and the input pipeline.

Reports compile time, median step time, examples/s and audio-hours/s, model FLOPs (analytic, and
XLA's cost analysis for comparison), achieved TFLOP/s and MFU against the device's stated peak
(``hardware_peak``: a datasheet figure for accelerators, cores × clock × FMA width for CPUs, printed
with its derivation), a measured matmul for comparison, parameter counts, and, when
``config.data.dir`` (or ``data.dirs``) is set, the host pipeline's clips/s. No dataset is needed for the step figures.
"""
from __future__ import annotations

import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import audio, method as method_lib, metrics as metrics_lib, runtime, sharding, step as step_lib
from avpretrain.data import pipeline


SYNTHETIC_TEXT_DIM = 768  # sentence-embedding width without a dataset (GTE-base, as in M2D-CLAP)

# Dense peak TFLOP/s per device from the vendors' datasheets: (bfloat16 tensor, float32).
# float32 is the non-tensor-core rate on GPUs; TPUs run float32 matmuls as bf16 passes (no fp32 peak).
DATASHEET_TFLOPS = {
    "H200": (989.4, 66.9), "H100": (989.4, 66.9), "A100": (312.0, 19.5), "L4": (121.0, 30.3),
    "TPU v4": (275.0, None), "TPU v5 lite": (197.0, None), "TPU v5e": (197.0, None), "TPU v5p": (459.0, None),
    "TPU v6 lite": (918.0, None), "TPU v6e": (918.0, None),
}


def _cpu_info() -> tuple[set, str, int | None, float | None, str]:
    """(flags, model name, cpu family, max clock GHz, where the clock came from) from /proc/cpuinfo
    and sysfs."""
    flags, model, family, mhz = set(), "unknown CPU", None, None
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        text = ""
    if m := re.search(r"^flags\s*:\s*(.*)$", text, re.M):
        flags = set(m.group(1).split())
    if m := re.search(r"^model name\s*:\s*(.*)$", text, re.M):
        model = m.group(1).strip()
    if m := re.search(r"^cpu family\s*:\s*(\d+)", text, re.M):
        family = int(m.group(1))
    try:  # the rated maximum, where the kernel exposes it
        return flags, model, family, \
            int(open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read()) / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    if m := re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M):
        mhz = float(m.group(1))
    return flags, model, family, mhz and mhz / 1e3, "/proc/cpuinfo 'cpu MHz' (no cpufreq: the nominal clock)"


def cpu_peak(dtype: str = "float32", cores: int | None = None) -> tuple[float | None, str]:
    """(TFLOP/s, derivation) for this CPU: cores × clock × FMA units × SIMD lanes × 2 FLOP per FMA.

    Assumes 2 FMA pipes per core (every AVX2/AVX-512 x86 server core since Haswell / Zen 2). AVX-512
    on Zen 4 (AMD family 25) is two 256-bit halves, counted as 8 lanes; Zen 5 (family 26) has 512-bit
    FMA pipes, counted as 16 (its mobile parts halve that: pass ``--peak-tflops`` there). bfloat16
    counts AMX tiles (1024 FLOP/cycle per core) or AVX512-BF16 dot products (2× float32 lanes) where
    the CPU has them, else the float32 rate.
    """
    flags, model, family, ghz, clock_src = _cpu_info()
    cores = cores or len(os.sched_getaffinity(0))
    if not ghz:
        return None, f"{model}: clock unknown, no peak"
    zen4 = "avx512f" in flags and "AMD" in model and (family is None or family < 26)
    if dtype == "bfloat16" and "amx_bf16" in flags:
        per_cycle, how = 1024, "AMX-BF16 (16x32 bf16 tile FMAs: 1024 FLOP/cycle)"
    else:
        lanes, isa = ((16, "AVX-512") if "avx512f" in flags and not zen4 else (8, "AVX2/FMA") if "fma" in flags
                      else (4, "SSE"))
        if zen4:
            isa = "AVX-512 as 2x256-bit (Zen 4)"
        per_cycle = 2 * lanes * 2
        how = f"2 FMA units x {lanes} fp32 lanes ({isa}) x 2 FLOP"
        if dtype == "bfloat16" and "avx512_bf16" in flags:
            per_cycle, how = per_cycle * 2, how + " x 2 (AVX512-BF16 pairs)"
    tflops = cores * ghz * 1e9 * per_cycle / 1e12
    return tflops, (f"{model}: {cores} cores x {ghz:.2f} GHz ({clock_src}) x {how} = "
                    f"{tflops * 1e3:.1f} GFLOP/s {dtype}")


def hardware_peak(device, dtype: str = "float32") -> tuple[float | None, str]:
    """(per-device TFLOP/s, derivation) from the datasheet table or, on CPUs, ``cpu_peak``."""
    if device.platform == "cpu":
        # The CPU devices of a process share its cores (one device, or several forced ones).
        total, how = cpu_peak(dtype)
        n = len(device.client.local_devices())
        return (total and total / n), (how if n == 1 else f"{how}, shared by {n} devices")
    kind = device.device_kind
    for name, (bf16, fp32) in DATASHEET_TFLOPS.items():
        if name.lower() in kind.lower():
            if dtype == "bfloat16" or fp32 is None:
                return bf16, f"{kind}: {bf16} TFLOP/s dense bfloat16 (datasheet)"
            return fp32, f"{kind}: {fp32} TFLOP/s float32, non-tensor-core (datasheet)"
    return None, f"{kind}: not in the datasheet table; pass --peak-tflops"


def measured_matmul_tflops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """TFLOP/s of one jitted n×n matmul on the default device (median of ``repeats``): for comparison only."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(times)) / 1e12


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
    method = method_lib.of(config)
    norm_stats = (tuple(config.data.norm_stats) or (audio.M2D_NORM_MEAN, audio.M2D_NORM_STD)) if method.needs_stats else None
    train_state = step_lib.create_train_state(config, mesh)
    model = train_state.model
    trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, train_state.opt.wrt)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef, state = nnx.split(train_state)
    step_fn, _, batch_sharding = step_lib.make_train_step(config, mesh, graphdef, state)
    step_inputs = step_lib.StepInputs(config, norm_stats)

    local_batch = pipeline.process_batch_size(config.batch_size)
    rng = np.random.default_rng(config.seed + jax.process_index())
    batch = pipeline.to_global(method.synthetic_batch(config, local_batch, rng), batch_sharding)

    with sharding.mesh_rules(mesh, rules):
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch, step_inputs(0)).compile()
        compile_s = time.perf_counter() - t0
        runtime.release_host_memory()
        times, first_step_unix = [], None
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            state, out = compiled(state, batch, step_inputs(i))
            jax.block_until_ready((state, out))
            first_step_unix = first_step_unix or time.time()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    xla_flops, xla_bytes = _xla_figures(compiled)
    return {"compile_s": compile_s, "step_time_s": float(np.median(times)), "step_times_s": times,
            "first_step_unix": first_step_unix, "loss": float(out["loss"]),
            "flops_per_step": (model.flops_per_example() * config.batch_size
                               if hasattr(model, "flops_per_example") else None),
            "tokens_per_example": model.tokens_per_example() if hasattr(model, "tokens_per_example") else None,
            "xla_flops_per_device_step": xla_flops, "xla_bytes_per_device": xla_bytes,
            "params_trainable": int(trainable), "params_total": int(total)}


def _pipeline_figures(config, batches: int, windows: int = 5) -> dict:
    """This process's clips/s from ``pipeline.train_dataset`` after 2 warm-up batches.

    grain prefetches, so single batches often arrive instantly: the figure is the median over
    ``windows`` windows of ``batches // windows`` batches each (and the overall rate).
    """
    iterator = iter((method_lib.of(config).train_data or pipeline.train_dataset)(config))
    for _ in range(2):
        next(iterator)
    per_window = max(1, batches // windows)
    rates, clips = [], 0
    start = time.perf_counter()
    for _ in range(windows):
        t0, n = time.perf_counter(), 0
        for _ in range(per_window):
            n += len(next(iter(next(iterator).values())))
        rates.append(n / max(time.perf_counter() - t0, 1e-9))
        clips += n
    return {"pipeline_clips_per_s": float(np.median(rates)),
            "pipeline_clips_per_s_total": clips / max(time.perf_counter() - start, 1e-9)}


def prepare_without_data(config) -> bool:
    """The method's ``prepare`` when the config names its data (e.g. the stored caption embeddings'
    width); without data, a stand-in text width for a model that reads text. Whether it has data."""
    method = method_lib.of(config)
    has_data = bool(config.data.dir or config.data.get("dirs"))
    if has_data and method.prepare:
        method.prepare(config)
    if ("text_dim" in config.model and not config.model.get("text_dim")
            and config.model.get("text_fusion", True)):  # a model that reads text, no dataset: a stand-in width
        config.model.text_dim = SYNTHETIC_TEXT_DIM
    return has_data


def run(config, *, steps: int = 10, warmup: int = 2, peak_tflops: float = 0.0, data_batches: int = 20,
        quiet: bool = False) -> dict:
    """Benchmarks ``config``; prints a block of figures ending in one ``bench:`` line; returns them.

    ``peak_tflops`` (per device) overrides the stated hardware peak that MFU is taken against.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    method = method_lib.of(config)
    has_data = prepare_without_data(config)
    mesh = sharding.make_mesh(config.mesh)
    clip_seconds = method_lib.clip_seconds(config)
    r = {"batch_size": config.batch_size, "num_devices": jax.device_count(),
         "device": jax.devices()[0].device_kind, "clip_seconds": clip_seconds}
    r.update(_step_figures(config, mesh, steps, warmup))
    step_s = r["step_time_s"]
    r["examples_per_s"] = config.batch_size / step_s
    r["audio_hours_per_s"] = r["examples_per_s"] * clip_seconds / 3600
    r["tokens_per_s"] = r["tokens_per_example"] and r["examples_per_s"] * r["tokens_per_example"]
    r["tflops"] = r["flops_per_step"] and r["flops_per_step"] / step_s / 1e12
    dtype = str(config.model.get("dtype", "float32"))
    if peak_tflops > 0:
        peak, how = peak_tflops, f"{peak_tflops} TFLOP/s per device (--peak-tflops)"
    else:
        peak, how = hardware_peak(jax.devices()[0], dtype)
    r["peak_tflops_per_device"], r["peak_derivation"] = peak, how
    r["mfu"] = r["tflops"] / (peak * r["num_devices"]) if peak and r["tflops"] else None
    if not quiet:  # a matmul as fast as XLA runs it here: context for the MFU, never its denominator
        n = 4096 if jax.devices()[0].platform != "cpu" else 2048
        r["matmul_tflops"] = measured_matmul_tflops(n, jnp.dtype(dtype))
        r["matmul_n"] = n
    if has_data and data_batches > 0:
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
        f"throughput         {r['examples_per_s']:.1f} examples/s, {r['audio_hours_per_s']:.4f} audio-hours/s"
        + (f", {r['tokens_per_s']:.0f} tokens/s ({r['tokens_per_example']} per example)" if r["tokens_per_s"] else ""),
        f"model FLOPs/step   {fmt(r['flops_per_step'], '.4g')} analytic; XLA cost analysis {fmt(xla_total, '.4g')} "
        f"(all devices{'; a scanned stack counted once, not per layer' if config.model.get('scan_layers') else ''})",
        f"achieved           {fmt(r['tflops'], '.3f')} TFLOP/s; MFU {fmt(r['mfu'], '.1%')} of the stated peak",
        f"peak               {how}",
        f"XLA memory/device  {fmt(r['xla_bytes_per_device'] and r['xla_bytes_per_device'] / 2**30, '.3f')} GiB "
        f"(arguments + temporaries)",
    ]
    if "matmul_tflops" in r:
        lines.append(f"measured matmul    {r['matmul_tflops']:.3f} TFLOP/s ({r['matmul_n']}x{r['matmul_n']} {dtype}, "
                     f"one device; for comparison, not the MFU's peak)")
    if "pipeline_clips_per_s" in r:
        lines.append(f"input pipeline     {r['pipeline_clips_per_s']:.1f} clips/s (median of 5 windows), "
                     f"{r['pipeline_clips_per_s_total']:.1f} overall over {data_batches} batches "
                     f"({r['pipeline_audio_hours_per_s']:.4f} audio-hours/s per process, "
                     f"{config.data.num_workers} workers)")
    lines.append(f"bench: step_time_ms={1e3 * step_s:.3f} examples_per_s={r['examples_per_s']:.2f} "
                 f"tflops={fmt(r['tflops'], '.4f')} mfu={fmt(r['mfu'], '.4f')} "
                 f"pipeline_clips_per_s={fmt(r.get('pipeline_clips_per_s'), '.2f')}")
    if not quiet:
        metrics_lib.log("\n".join(lines))
    return r


def run_tokenize(data_dir, *, audio_vq=None, video_vq=None, examples: int = 128, read_threads: int = 8) -> dict:
    """``avpretrain bench --tokenize``: the offline tokenization job's clips/s and signal-seconds/s
    (host alone, device alone, end to end; ``data.tokenize.benchmark``); prints a block ending in a
    ``bench-tokenize:`` line."""
    from avpretrain.data import tokenize

    r = tokenize.benchmark(data_dir, audio_vq=audio_vq, video_vq=video_vq, examples=examples,
                           read_threads=read_threads)
    what = r["signal"]
    frames = ", ".join(f"{m} {n} frames" for m, n in r["frames"].items() if n)
    lines = [
        f"tokenize           {r['examples']} training clips of {data_dir} ({r['signal_seconds']:.1f} {what}-seconds; "
        f"{frames})",
        f"devices            {jax.local_device_count()} x {jax.devices()[0].device_kind}; rows per call "
        f"{r['rows_per_call']}",
        f"compile            {r['compile_s']:.1f} s",
        f"host alone         {r['host_clips_per_s']:.1f} clips/s, {r['host_signal_per_s']:.1f} {what}-s/s "
        f"(read + JPEG decode, {r['read_threads']} threads)",
        f"device alone       {r['device_clips_per_s']:.1f} clips/s, {r['device_signal_per_s']:.1f} {what}-s/s "
        f"(median of {len(r['device_times_s'])})",
        f"end to end         {r['clips_per_s']:.1f} clips/s, {r['signal_per_s']:.1f} {what}-s/s (waiting for the host "
        f"{r['timings']['host_wait']:.1f} s, device {r['timings']['device']:.1f} s, writing "
        f"{r['timings']['write']:.1f} s)",
        f"bench-tokenize: clips_per_s={r['clips_per_s']:.2f} {what}_seconds_per_s={r['signal_per_s']:.2f} "
        f"host_clips_per_s={r['host_clips_per_s']:.2f} device_clips_per_s={r['device_clips_per_s']:.2f}",
    ]
    metrics_lib.log("\n".join(lines))
    return r
