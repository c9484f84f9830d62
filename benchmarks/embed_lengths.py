"""Embedding clips of very different lengths: throughput and peak memory, optionally before/after.

    .venv/bin/python benchmarks/embed_lengths.py [--model E] [--before /tmp/before] [--repeats 3]

Two workloads, each measured in a fresh subprocess per repeat (peak RSS = ``ru_maxrss`` of that
process, so every figure includes the import, the model and the clips themselves):

- ``scene``: ``scene_embeddings`` of 200 clips of 1–10 s plus 3 clips of 60 s (seeded noise),
  ``batch_size=16``; the first call (with compilation) and a second one (clips/s) are timed.
- ``probe``: ``downstream.linear_probe`` (``batch_size=8``) on a small audio_folder dataset (3 classes
  × 12 clips of 2 s) that also holds one 10-minute clip; wall time of the whole probe.

Without ``--model`` a random-init export with the width of the demo encoder (128 wide, 4 blocks,
192-frame chunks of 1.92 s) is written to ``--workdir`` first. ``--before DIR`` also runs every
measurement with ``PYTHONPATH=DIR`` (e.g. ``git worktree add /tmp/before HEAD`` of an older
commit) and prints the two side by side. The batch sizes are small because the padding-based code
this replaced held every clip of a batch at the longest clip's length (the 10-minute clip with the
CLI's default batch of 32 reached 13.9 GB). Figures are medians over ``--repeats``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

SR = 16000
SCENE_BATCH, PROBE_BATCH = 16, 8


def mixed_clips():
    import numpy as np

    rng = np.random.default_rng(0)
    seconds = list(rng.uniform(1, 10, 200)) + [60.0] * 3
    return [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in seconds]


def make_model(out: pathlib.Path) -> pathlib.Path:
    from flax import nnx

    from avpretrain import config as config_lib, export, sharding

    config = config_lib.load_config(
        str(pathlib.Path(__file__).resolve().parents[1] / "configs/m2d.py:size=tiny"),
        {"model.width": 128, "model.depth": 4, "model.num_heads": 4, "model.input_frames": 192,
         "data.dir": "", "data.norm_stats": (-7.1, 4.2)})
    model = export._encoder_model(config, sharding.single_device_mesh())
    return export.write_export(out, config, nnx.to_pure_dict(nnx.state(model)), config.data.norm_stats)


def make_dataset(out: pathlib.Path) -> pathlib.Path:
    import numpy as np
    import soundfile as sf

    from data_pipelines import audio_folder

    rng = np.random.default_rng(1)
    src = out.parent / (out.name + "_src")
    for c, freq in enumerate((300, 700, 1500)):
        (src / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(12):
            t = np.arange(2 * SR) / SR
            wave = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) + 0.05 * rng.standard_normal(len(t))
            sf.write(src / f"class{c}" / f"{i}.wav", wave, SR)
    sf.write(src / "class0" / "ten_minutes.wav", 0.1 * rng.standard_normal(600 * SR), SR)
    audio_folder.build(str(src), str(out))
    return out


def measure(kind: str, model: str, data: str) -> dict:
    """One measurement in this (fresh) process."""
    import resource

    import avpretrain

    t0 = time.perf_counter()
    if kind == "scene":
        clips = mixed_clips()
        encoder = avpretrain.load_pretrained(model)
        t0 = time.perf_counter()
        encoder.scene_embeddings(clips, batch_size=SCENE_BATCH)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        encoder.scene_embeddings(clips, batch_size=SCENE_BATCH)
        result = {"first_call_s": first, "clips_per_s": len(clips) / (time.perf_counter() - t0)}
    else:
        from avpretrain.evaluate import downstream

        downstream.linear_probe(model, data, batch_size=PROBE_BATCH)
        result = {"probe_s": time.perf_counter() - t0}
    return result | {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                     "package": str(pathlib.Path(avpretrain.__file__).parent)}


def run(kind, model, data, tree, repeats) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--measure", kind, "--model", str(model),
                              "--data", str(data)], env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"{kind} with PYTHONPATH={tree} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert all(r["package"] == str(pathlib.Path(tree) / "avpretrain") for r in runs), runs[0]["package"]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "package"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an export (default: a random-init demo-width export in --workdir)")
    parser.add_argument("--workdir", default="/tmp/embed_lengths", help="where the model and dataset are made")
    parser.add_argument("--before", help="a tree of the package to compare with (PYTHONPATH)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", choices=("scene", "probe"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.model, args.data)))
        return
    here = pathlib.Path(__file__).resolve().parents[1]
    work = pathlib.Path(args.workdir)
    model = pathlib.Path(args.model) if args.model else work / "model"
    if not args.model and not model.exists():
        make_model(model)
    data = work / "probe_data"
    if not data.exists():
        make_dataset(data)
    trees = {"after": here} | ({"before": pathlib.Path(args.before).resolve()} if args.before else {})
    results = {name: {kind: run(kind, model, data, tree, args.repeats) for kind in ("scene", "probe")}
               for name, tree in reversed(trees.items())}
    print(f"model {model}; medians of {args.repeats} fresh processes each")
    print(f"{'':8}{'scene clips/s':>15}{'first call s':>14}{'scene peak RSS GB':>19}"
          f"{'probe s':>10}{'probe peak RSS GB':>19}")
    for name in trees:
        s, p = results[name]["scene"], results[name]["probe"]
        print(f"{name:8}{s['clips_per_s']:15.1f}{s['first_call_s']:14.1f}{s['peak_rss_gb']:19.2f}"
              f"{p['probe_s']:10.1f}{p['peak_rss_gb']:19.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
