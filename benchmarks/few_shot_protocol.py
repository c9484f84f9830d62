"""The few-shot protocol at the paper's scale on precomputed features: wall time and trials/s.

    .venv/bin/python benchmarks/few_shot_protocol.py [--encoders 16] [--dim 3840] [--trials 3]

ESD's shape: 20 speakers × 5 emotions, per speaker and emotion 300 train, 20 evaluation and 30 test
clips (35,000 clips per encoder); shots 2, 4, 8, 16, 24, 32, 64; 3 trials: 2,100 trials per
encoder, 33,600 for 16 encoders. The features are synthetic (a class mean per emotion, a speaker
offset, noise) of the width of M2D base's scene embedding (5 × 768 = 3840), generated per encoder
outside the timed part; what is timed is ``few_shot.protocol`` (standardisation, episode
construction, the batched fits, selection and scores) for each encoder, the first including the
compilation of one program per k. Prints per-encoder seconds, the total, trials/s, and the
scaling with the number of trials (``--scaling``: the protocol of one encoder at 1, 3 and 9 trials).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def synthetic_clips(seed: int, dim: int, speakers: int = 20, emotions: int = 5, per=(300, 20, 30)):
    from avpretrain.evaluate import few_shot

    rng = np.random.default_rng(seed)
    means = rng.normal(scale=0.05, size=(emotions, dim)).astype(np.float32)
    n_per = sum(per)
    feats = np.empty((speakers * emotions * n_per, dim), np.float32)
    labels, spk, splits = [], [], []
    row = 0
    for s in range(speakers):
        offset = rng.normal(scale=0.3, size=dim).astype(np.float32)
        for e in range(emotions):
            feats[row:row + n_per] = means[e] + offset + rng.standard_normal((n_per, dim), np.float32)
            row += n_per
            for split, n in zip(("train", "validation", "test"), per):
                labels += [e] * n
                spk += [f"{s:04d}"] * n
                splits += [split] * n
    return few_shot.Clips(feats, np.asarray(labels), np.asarray(spk), np.asarray(splits))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", type=int, default=16)
    p.add_argument("--dim", type=int, default=3840)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--scaling", action="store_true", help="also time one encoder at 1, 3 and 9 trials")
    p.add_argument("--json-out", default="")
    args = p.parse_args()

    import jax

    from avpretrain.evaluate import few_shot

    seconds, trials, macro = [], 0, {}
    for i in range(args.encoders):
        clips = synthetic_clips(i, args.dim)
        t0 = time.perf_counter()
        result = few_shot.protocol(clips, list(range(5)), trials=args.trials)
        seconds.append(time.perf_counter() - t0)
        trials += sum(v["trials"] for v in result.values())
        macro = {k: v["macro_f1"] for k, v in result.items()}
        print(f"encoder {i}: {seconds[-1]:.1f} s", flush=True)
    total = sum(seconds)
    out = {"encoders": args.encoders, "dim": args.dim, "trials": trials, "seconds_total": total,
           "seconds_first_encoder": seconds[0], "seconds_per_encoder_median": statistics.median(seconds[1:] or seconds),
           "trials_per_s": trials / total, "device": jax.devices()[0].device_kind,
           "macro_f1_last_encoder": macro}
    if args.scaling:
        clips = synthetic_clips(0, args.dim)
        out["scaling"] = {}
        for t in (1, 3, 9):
            t0 = time.perf_counter()
            r = few_shot.protocol(clips, list(range(5)), trials=t)
            dt = time.perf_counter() - t0
            out["scaling"][t] = {"trials": sum(v["trials"] for v in r.values()), "seconds": dt}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
