"""Will one host's input pipeline keep up with M2D base on a v5e-256 (v5e:16x16)?

    .venv/bin/python benchmarks/pod_input_throughput.py [--clips 600 --workers 0,1,2 --repeats 3]
        [--data DIR] [--batch 32] [--mfu 0.5] [--flops-per-step F | --aot] [--out result.json]

Supply: an AudioSet-like dataset of 10 s, 16 kHz clips (procedural WAVs in 4 class folders, built
by ``data_pipelines.audio_folder.build``; train split = 80 %), or ``--data DIR`` (built there when
DIR holds none). What the host does per clip for M2D (``configs/m2d.py``): read one record from
ArrayRecord (10 s of int16, 320 KB) and decode the TFDS example, crop a random 97,120-sample window
(608 log-mel frames, 6.07 s), int16 -> float32 into a fresh array (``pipeline.Crop``), stack the
batch. The log-mel is computed on the device (``frontend.LogMel`` inside the jitted step). The
records sit in the page cache here: this measures CPU cost, not storage (a pod reads GCS or disk).

Measured at the pod's per-process batch (2048 / 64 hosts = 32; ``--batch``), each configuration once
per repeat in turn (load from other jobs shows as spread between repeats), the medians over repeats
of: (1) one thread, no grain: ``pipeline.training_source`` + ``pipeline.Crop`` + ``np.stack``;
clips per wall second and per CPU second of the thread (``time.thread_time``: blind to other jobs);
(2) ``pipeline.train_dataset`` for each ``--workers`` x ``--read-threads`` via
``bench._pipeline_figures`` (median of 5 windows after 2 warm-up batches), with the CPU time of this
process over the call (with workers: the main process alone, i.e. its cost of receiving batches).
The verdict takes the costliest per-CPU-second figure as clips/s per core.

Demand: FLOPs per step at the config's global batch (2048) from ``--flops-per-step``, else
``aot.compile_step`` on v5e:16x16 with ``--aot`` (libtpu, minutes; README's AOT table: XLA
1.782e14, analytic 1.737e14), else ``model.flops_per_example()`` x batch. Steps/s = MFU x 197
TFLOP/s (v5e bf16 peak per chip, cloud.google.com/tpu/docs/v5e) x 256 chips / FLOPs per step;
per host over 64 hosts of 4 chips (ct5lp-hightpu-4t: 112 vCPUs, 192 GB, same page; its slice table
counts 32 hosts for 16x16, i.e. 8-chip machines of 224 vCPUs: 28 vCPUs per chip either way). The config's
model.dtype is float32: on TPU, float32 matmuls at default precision run as single bf16 MXU passes,
so the bf16 peak is the ceiling either way; the host emits float32 audio regardless.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time

import numpy as np

CONFIG = "configs/m2d.py:size=base"
V5E_PEAK_TFLOPS = 197.0          # bf16 per chip, Google Cloud TPU v5e docs
TOPOLOGY, CHIPS, CHIPS_PER_HOST, HOST_VCPUS = "v5e:16x16", 256, 4, 112   # 64 x ct5lp-hightpu-4t


def build_dataset(out: pathlib.Path, clips: int, seconds: float = 10.0, sr: int = 16000) -> None:
    """``clips`` procedural WAVs (tone + noise; 4 classes) built into a TFDS dataset at ``out``."""
    import soundfile as sf
    from data_pipelines import audio_folder

    src = pathlib.Path(tempfile.mkdtemp(prefix="pod_input_wavs_"))
    try:
        t = np.arange(int(seconds * sr)) / sr
        for i in range(clips):
            rng = np.random.default_rng(i)
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(t.size)
            (src / f"class{i % 4}").mkdir(exist_ok=True)
            sf.write(src / f"class{i % 4}" / f"clip{i:05d}.wav", x.astype(np.float32), sr, subtype="PCM_16")
        audio_folder.build(str(src), str(out), sample_rate=sr, num_workers=os.cpu_count())
    finally:
        shutil.rmtree(src, ignore_errors=True)


def load(spec: str, **overrides):
    from avpretrain import config as config_lib
    return config_lib.load_config(spec, overrides)


def single_thread(config, clips: int, seed: int) -> dict:
    """One thread, no grain: read + decode + crop + stack, in a shuffled order (the host's work per clip)."""
    from avpretrain import method
    from avpretrain.data import pipeline

    inputs = method.of(config).inputs(config)
    src, crop = pipeline.training_source(config, inputs), pipeline.Crop(inputs)
    rng = np.random.default_rng(seed)
    order = np.resize(rng.permutation(len(src)), clips)
    w0, c0 = time.perf_counter(), time.thread_time()
    for start in range(0, clips, config.batch_size):
        rows = [crop(src[int(i)], rng) for i in order[start:start + config.batch_size]]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    assert batch["audio"].shape[1] == inputs["audio"].shape[0]
    return {"clips_per_s": clips / wall, "clips_per_cpu_s": clips / cpu}


def flops_per_step(args, spec: str) -> tuple[float, str]:
    if args.flops_per_step:
        return args.flops_per_step, "--flops-per-step"
    config = load(spec)
    if args.aot:  # before anything initialises JAX's backends: the TPU topology comes from libtpu
        from avpretrain import aot
        r = aot.compile_step(config, TOPOLOGY)
        return r.xla_flops, f"XLA cost analysis of the compiled step on {r.topology} (avpretrain.aot)"
    from flax import nnx
    from avpretrain import sharding, step
    with sharding.mesh_rules(sharding.make_mesh(config.mesh), config.sharding_rules):  # shapes only, here
        model = nnx.eval_shape(lambda: step.create_model(config, nnx.Rngs(config.seed)))
    return model.flops_per_example() * config.batch_size, f"analytic model.flops_per_example() x {config.batch_size}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--clips", type=int, default=600, help="clips to build (80%% land in the train split)")
    p.add_argument("--data", help="a built dataset to reuse (built there when the folder holds none)")
    p.add_argument("--batch", type=int, default=0, help="per-process batch; 0: global batch / hosts (the pod's)")
    p.add_argument("--batches", type=int, default=100, help="batches per pipeline measurement (5 windows)")
    p.add_argument("--workers", default="0,1,2", help="data.num_workers values (0: threads in this process)")
    p.add_argument("--read-threads", default="16", help="data.read_threads values")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mfu", type=float, default=0.5)
    p.add_argument("--flops-per-step", type=float, default=0.0, help="known FLOPs per global step")
    p.add_argument("--aot", action="store_true", help=f"FLOPs from compiling the step for {TOPOLOGY} (libtpu; minutes)")
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args(argv)

    if not args.aot:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flops, flops_src = flops_per_step(args, args.config)  # first: --aot must precede any JAX backend
    from avpretrain import bench, method

    base = load(args.config)
    global_batch = base.batch_size
    hosts = CHIPS // CHIPS_PER_HOST
    batch = args.batch or global_batch // hosts
    tmp = None
    if args.data and any(pathlib.Path(args.data).rglob("dataset_info.json")):
        data = pathlib.Path(args.data)
    else:
        data = pathlib.Path(args.data or tempfile.mkdtemp(prefix="pod_input_data_"))
        tmp = None if args.data else data
        t0 = time.perf_counter()
        build_dataset(data, args.clips)
        print(f"built {args.clips} clips of 10 s into {data} in {time.perf_counter() - t0:.0f} s")
    try:
        from avpretrain.data import source
        n_train = len(source.data_source(str(data), "train"))
        size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 1e6
        workers, threads = ([int(x) for x in a.split(",")] for a in (args.workers, args.read_threads))
        settings = [("single thread (no grain)", None, None)] + [
            (f"grain workers={w} read_threads={t}", w, t) for w in workers for t in threads]
        runs = {name: [] for name, _, _ in settings}
        cpu = {name: [] for name, _, _ in settings}  # clips per CPU-second of this process (workers: main only)
        consumed = (2 + max(1, args.batches // 5) * 5) * batch  # what _pipeline_figures reads (+ its prefetch)
        for r in range(args.repeats):
            for name, w, t in settings:
                overrides = {"data.dir": str(data), "batch_size": batch}
                if w is None:
                    out = single_thread(load(args.config, **overrides), args.batches * batch, seed=r)
                    runs[name].append(out["clips_per_s"])
                    cpu[name].append(out["clips_per_cpu_s"])
                else:
                    c = load(args.config, **overrides, **{"data.num_workers": w, "data.read_threads": t})
                    c0 = time.process_time()
                    runs[name].append(bench._pipeline_figures(c, args.batches)["pipeline_clips_per_s"])
                    cpu[name].append(consumed / (time.process_time() - c0))
                print(f"  repeat {r + 1}/{args.repeats} {name}: {runs[name][-1]:.1f} clips/s, "
                      f"{cpu[name][-1]:.1f} per CPU-s of this process (load average {os.getloadavg()[0]:.2f})",
                      flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    cores = len(os.sched_getaffinity(0))
    med = {name: statistics.median(v) for name, v in runs.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    steps = args.mfu * V5E_PEAK_TFLOPS * 1e12 * CHIPS / flops
    slice_clips = steps * global_batch
    per_host = slice_clips / hosts
    physical = HOST_VCPUS // 2
    # clips/s per core: CPU-time figures (blind to other jobs on this machine) and the wall rate of the
    # best grain run spread over every core here (a lower bound: other jobs share these cores)
    per_core = {"1 thread, no grain, per CPU-s": med_cpu["single thread (no grain)"]}
    per_core.update({f"grain, 0 workers, {t} threads, per CPU-s": med_cpu[n] for n, w, t in settings if w == 0})
    best = max((n for n, w, _ in settings if w is not None), key=med.get, default=None)
    if best:
        per_core[f"best wall: {best} / {cores} cores"] = med[best] / cores
    basis = min((k for k in per_core if "CPU-s" in k), key=per_core.get)  # the costliest measured way
    need = per_host / per_core[basis]
    clip_bytes = method.of(base).inputs(base)["audio"].shape[0] * 4  # float32 samples per crop

    print(f"\ndata: {data} ({n_train} train clips of 10 s, {size:.0f} MB; in the page cache, so this measures CPU "
          f"cost, not storage); per-process batch {batch}; {cores} cores here ({bench._cpu_info()[1]})")
    print(f"{'host pipeline (median of repeats)':40s} {'clips/s':>8s} {'per CPU-s*':>10s}  clips/s of each repeat")
    for name, v in runs.items():
        print(f"{name:40s} {med[name]:8.1f} {med_cpu[name]:10.1f}  " + " ".join(f"{x:.0f}" for x in v))
    print("  * CPU time of this process (1 thread: of that thread); with workers, of the main process alone")
    for n, w, _ in settings:
        if w:
            print(f"  {n}: the main process spends {1e3 * batch / med_cpu[n]:.1f} ms CPU per batch of {batch} "
                  f"(receiving it; pipeline setup included) vs {1e3 / steps:.1f} ms per step at {steps:.0f} steps/s")
    print(f"FLOPs/step  {flops:.4g} ({flops_src}), global batch {global_batch}")
    print(f"demand      {CHIPS} chips x {V5E_PEAK_TFLOPS:.0f} TFLOP/s x MFU {args.mfu:.2f} -> {steps:.1f} steps/s, "
          f"{slice_clips:,.0f} clips/s per slice; {hosts} hosts of {CHIPS_PER_HOST} chips -> {per_host:,.0f} clips/s "
          f"per host ({per_host * clip_bytes / 1e9:.2f} GB/s of float32 audio to its chips)")
    print(f"{'clips/s per core':48s} {'rate':>7s} {'cores/host':>10s} {'vs ' + str(physical) + ' cores':>12s} "
          f"{'vs ' + str(HOST_VCPUS) + ' vCPUs':>13s}")
    for name, rate in per_core.items():
        n = per_host / rate
        print(f"{name:48s} {rate:7.1f} {n:10.1f} {physical / n:11.2f}x {HOST_VCPUS / n:12.2f}x")
    verdict = ("keeps up" if need <= physical else "keeps up only counting hyperthreads" if need <= HOST_VCPUS
               else "does NOT keep up")
    print(f"verdict: at {per_core[basis]:.0f} clips/s per core ({basis}) a host needs {need:.1f} cores for "
          f"{per_host:,.0f} clips/s: {verdict}; margin {physical / need:.1f}x on {physical} physical cores "
          f"({HOST_VCPUS} vCPUs assumed 2 hyperthreads per core)")
    if args.out:
        result = {"config": args.config, "data": str(data), "train_clips": n_train, "batch": batch,
                  "cores_here": cores, "runs_clips_per_s": runs, "median_clips_per_s": med,
                  "runs_clips_per_cpu_s": cpu, "median_clips_per_cpu_s": med_cpu,
                  "per_core_clips_per_s": per_core, "verdict_basis": basis,
                  "flops_per_step": flops, "flops_source": flops_src,
                  "mfu": args.mfu, "peak_tflops_per_chip": V5E_PEAK_TFLOPS, "chips": CHIPS, "hosts": hosts,
                  "steps_per_s": steps, "slice_clips_per_s": slice_clips, "host_clips_per_s": per_host,
                  "host_vcpus": HOST_VCPUS, "host_physical_cores": physical, "cores_needed": need,
                  "margin_physical": physical / need, "verdict": verdict}
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
