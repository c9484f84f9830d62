"""A distilled student against its teacher: encoder parameters, encoder forward time, and the
fine-tuning step of each, measured side by side in one process.

    .venv/bin/python benchmarks/student_teacher.py --teacher runs/demo_emotion/teacher_export \\
        --student runs/demo_emotion/student_export [--batch 32] [--repeats 7]

- ``forward``: the jitted encoder (``encode``: log-mel → all patch tokens) on ``--batch`` crops of
  the training length, teacher and student alternating, ``--repeats`` timed calls each after a
  warm-up call; the median per model and the ratio student / teacher.
- ``finetune step``: ``avpretrain bench`` figures of ``configs/finetune.py:modalities=audio,task=regress``
  initialised from each export (the regression head, the encoder trained at half the head's lr),
  batch ``--batch`` over ``--data`` (an emotion corpus).

Prints one JSON object (also to ``--json-out``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def encoder_forward(exports: dict, batch: int, repeats: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from avpretrain import audio, export

    fns = {}
    for name, path in exports.items():
        enc = export.load_pretrained(path)
        graphdef, state = nnx.split(enc.model)
        stats = enc.norm_stats

        @jax.jit
        def forward(state, wave, graphdef=graphdef, stats=stats):
            lms = audio.normalize(audio.log_mel(wave), *stats)[:, None]
            return nnx.merge(graphdef, state).encode(lms)

        wave = (0.1 * np.random.default_rng(0).standard_normal(
            (batch, audio.num_samples_for_frames(enc.input_frames)))).astype(np.float32)
        jax.block_until_ready(forward(state, wave))  # compile + warm up
        fns[name] = (forward, state, wave)
    times = {name: [] for name in exports}
    for _ in range(repeats):
        for name, (fn, state, wave) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, wave))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--data", default="", help="an emotion corpus for the fine-tuning step (skipped without)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json-out", default="")
    args = p.parse_args()

    from avpretrain import bench, config as config_lib, workdir as workdir_lib
    from avpretrain.models import distill

    exports = {"teacher": args.teacher, "student": args.student}
    result = {"batch": args.batch, "params": {}}
    for name, path in exports.items():
        cfg = config_lib.from_json(json.dumps(workdir_lib.export_meta(path)["config"]))
        result["params"][name] = distill.encoder_params(cfg.model)
    result["params_ratio"] = result["params"]["student"] / result["params"]["teacher"]
    fwd = encoder_forward(exports, args.batch, args.repeats)
    result["forward_s"] = fwd
    result["forward_ratio"] = fwd["student"] / fwd["teacher"]
    if args.data:
        result["finetune_step_s"] = {}
        for name, path in exports.items():
            cfg = config_lib.load_config("configs/finetune.py:modalities=audio,task=regress",
                                         {"init.path": path, "data.dir": args.data, "batch_size": args.batch})
            r = bench.run(cfg, steps=10, warmup=2, quiet=True)
            result["finetune_step_s"][name] = r["step_time_s"]
        step = result["finetune_step_s"]
        result["finetune_step_ratio"] = step["student"] / step["teacher"]
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
