"""Throughput of the audiovisual input pipeline: aligned 2 s crops (32,000 samples + 50 face frames
decoded from JPEG) batched by grain, as a training run reads them.

    python benchmarks/av_pipeline.py --data DATA_DIR [--batch 32 --batches 40 --threads 1 2 4]

Prints, per setting of grain's read threads, clips/s (median over windows of batches after a
warm-up), video-seconds per second, and video-seconds per second per core (the cores this process
may use); last line ``av_pipeline: ...`` for the best setting.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def measure(data_dir: str, *, batch: int, batches: int, threads: int, frames: int, windows: int = 5) -> float:
    from avpretrain import method
    from avpretrain.data import frames as frames_lib, pipeline
    from configs.common import base_config

    config = base_config()
    config.data.dir, config.batch_size, config.data.read_threads = data_dir, batch, threads
    inputs = {"audio": method.Field((frames * frames_lib.SAMPLES_PER_FRAME,)),
              "video": method.Field((frames, frames_lib.FACE_SIZE, frames_lib.FACE_SIZE, 3), "uint8"),
              "label": method.Field((), "int32")}
    iterator = iter(pipeline.train_dataset(config, inputs=inputs))
    for _ in range(2):
        next(iterator)
    per_window, rates = max(1, batches // windows), []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(per_window):
            out = next(iterator)
            assert out["video"].shape == (batch, frames, frames_lib.FACE_SIZE, frames_lib.FACE_SIZE, 3)
        rates.append(per_window * batch / (time.perf_counter() - t0))
    return float(np.median(rates))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="an audiovisual dataset (demo_av, av_folder, ravdess, crema_d)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--frames", type=int, default=50, help="frames per crop (50 = 2 s at 25 fps)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cores = len(os.sched_getaffinity(0))
    seconds = args.frames / 25
    best = None
    for threads in args.threads:
        clips = measure(args.data, batch=args.batch, batches=args.batches, threads=threads, frames=args.frames)
        print(f"read_threads={threads}: {clips:.1f} clips/s, {clips * seconds:.1f} video-s/s, "
              f"{clips * seconds / cores:.1f} video-s/s per core ({cores} cores)")
        best = max(best or (0, 0), (clips, threads))
    clips, threads = best
    print(f"av_pipeline: clips_per_s={clips:.2f} video_seconds_per_s={clips * seconds:.2f} "
          f"per_core={clips * seconds / cores:.2f} read_threads={threads} batch={args.batch}")


if __name__ == "__main__":
    main()
