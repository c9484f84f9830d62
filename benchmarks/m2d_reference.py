"""The official M2D PyTorch training step against avpretrain's, side by side, pair by pair.

Given a local checkout of https://github.com/nttcslab/m2d set up as its README says (the MAE files
fetched and ``patch_m2d.diff`` applied) and timm importable, this runs, alternately and one
process at a time, the reference step (its ``train_one_epoch`` loop body: forward with the EMA
target encoder, ``NativeScalerWithGradNormCount`` backward + clip 3.0 + AdamW over timm's weight-
decay param groups, ``update_target_network``) and ours (the trainer's jitted step, as ``avpretrain
bench`` runs it, log-mel front end included) at the same shapes, and prints per pair: median step
time, the ratio ours / reference, process start to the end of the first step, and peak RSS::

  .venv/bin/python benchmarks/m2d_reference.py --m2d-dir ~/m2d --size base --batch 8 --pairs 3

Extra environment for our side only: ``--ours-env XLA_FLAGS=...`` (repeatable); ``--ours-set``
passes config overrides (``--ours-set model.dtype=bfloat16``). ``--ref-bf16`` runs the reference
under ``torch.autocast('cpu', bfloat16)``, as its ``--bf16`` flag does on GPUs.

timm imports torchvision at import time (image transforms, FrozenBatchNorm2d) though the step never
uses it; PyPI has only CUDA builds of torchvision, which do not load against a CPU torch. When
torchvision cannot be imported, the reference worker puts an empty stand-in module in its place
(said in its output); nothing of it runs in the step.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (width, depth, heads, predictor width, depth, heads): avpretrain's models/m2d.py SIZES.
SIZES = {"tiny": (192, 12, 3, 192, 4, 6), "small": (384, 12, 6, 256, 8, 8),
         "base": (768, 12, 12, 512, 8, 16), "large": (1024, 24, 16, 512, 8, 16)}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _stub_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:
        pass
    import importlib.abc
    import importlib.machinery
    import types

    class _Any(types.ModuleType):
        __path__: list = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            return _Any(spec.name)

        def exec_module(self, module):
            pass

    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _Finder())
    return True


def worker_ref(args) -> dict:
    """The reference step, from the m2d checkout's own modules."""
    import torch

    m2d_dir = pathlib.Path(args.m2d_dir).resolve()
    for needed in ("m2d/models_mae.py", "m2d/pos_embed.py", "util/misc.py"):
        if not (m2d_dir / needed).is_file():
            raise SystemExit(f"--m2d-dir {m2d_dir}: no {needed}; set the checkout up as its README says "
                             f"(fetch the MAE files, patch -p1 < patch_m2d.diff)")
    stubbed = _stub_torchvision()
    sys.path[:0] = [str(m2d_dir), str(m2d_dir / "m2d")]
    import timm
    import timm.optim.optim_factory as optim_factory
    from m2d import models_mae
    from util.misc import NativeScalerWithGradNormCount

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    width, depth, heads, pw, pd, ph = SIZES[args.size]
    from functools import partial
    model = models_mae.M2DViT(img_size=[80, args.frames], patch_size=16, in_chans=1, embed_dim=width, depth=depth,
                              num_heads=heads, decoder_embed_dim=pw, decoder_depth=pd, decoder_num_heads=ph,
                              mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), norm_pix_loss=True)
    model.train(True)
    groups = (optim_factory.param_groups_weight_decay(model, 0.05) if hasattr(optim_factory, "param_groups_weight_decay")
              else optim_factory.add_weight_decay(model, 0.05))
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler on a machine without CUDA: disabled, as on any CPU run
        scaler = NativeScalerWithGradNormCount()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    x = torch.randn(args.batch, 1, 80, args.frames)
    autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=args.ref_bf16)

    times, first_done = [], None
    optimizer.zero_grad()
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with torch.autocast(**autocast):
            loss, *_ = model(x, mask_ratio=0.7)
        loss_value = loss.item()
        scaler(loss, optimizer, parameters=model.parameters(), clip_grad=3.0, update_grad=True)
        optimizer.zero_grad()
        model.update_target_network(0.99995)
        dt = time.perf_counter() - t0
        if i == 0:
            first_done = time.time()
        if i >= args.warmup:
            times.append(dt)
    return {"side": "reference", "step_s": statistics.median(times), "steps_s": times, "first_step_unix": first_done,
            "peak_rss_gib": _peak_rss_gib(), "loss": loss_value, "params_trainable": trainable,
            "versions": f"torch {torch.__version__}, timm {timm.__version__}"
                        + (", torchvision stand-in" if stubbed else ""), "threads": torch.get_num_threads()}


def worker_ours(args) -> dict:
    root = pathlib.Path(args.ours_root or ROOT).resolve()
    sys.path.insert(0, str(root))
    from avpretrain import bench, config as config_lib

    overrides = [f"batch_size={args.batch}", f"model.input_frames={args.frames}", *args.ours_set]
    config = config_lib.load_config(f"{root}/configs/m2d.py:size={args.size}", overrides)
    try:
        r = bench.run(config, steps=args.steps, warmup=args.warmup, quiet=True)
    except TypeError:  # an older checkout (--ours-root): no quiet mode, fewer figures
        r = bench.run(config, steps=args.steps, warmup=args.warmup)
    import jax
    return {"side": "avpretrain", "step_s": r["step_time_s"], "steps_s": r.get("step_times_s", [r["step_time_s"]]),
            "first_step_unix": r.get("first_step_unix"), "compile_s": r["compile_s"], "peak_rss_gib": _peak_rss_gib(),
            "loss": r["loss"], "params_trainable": r["params_trainable"],
            "versions": f"jax {jax.__version__}", "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _run_worker(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--size", args.size, "--batch", str(args.batch),
           "--frames", str(args.frames), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    env = dict(os.environ)
    if side == "reference":
        cmd += ["--m2d-dir", args.m2d_dir] + (["--ref-bf16"] if args.ref_bf16 else [])
        if args.ref_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.ref_pythonpath, env.get("PYTHONPATH")]))
    else:
        for item in args.ours_set:
            cmd += ["--ours-set", item]
        if args.ours_root:
            cmd += ["--ours-root", args.ours_root]
        env.update(dict(kv.split("=", 1) for kv in args.ours_env))
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"the {side} worker failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    first = result.pop("first_step_unix")
    result["start_to_first_step_s"] = first - start if first else float("nan")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m2d-dir", help="local checkout of nttcslab/m2d, set up per its README")
    p.add_argument("--ref-pythonpath", help="where the reference's packages are (e.g. pip install --target DIR "
                   "timm==0.4.5), if not in this interpreter")
    p.add_argument("--size", default="base", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=608, help="input frames (80 x frames log-mel)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per process (median taken)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ours-root", help="another avpretrain checkout to run as our side (e.g. a worktree "
                   "of an older commit, for before/after)")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--ref-bf16", action="store_true")
    p.add_argument("--order", default="ref-first", choices=("ref-first", "ours-first", "alternate"))
    p.add_argument("--json", help="write all results here")
    p.add_argument("--worker", choices=("reference", "avpretrain"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = worker_ref(args) if args.worker == "reference" else worker_ours(args)
        print(json.dumps(result))
        return
    if not args.m2d_dir:
        p.error("--m2d-dir is required (a checkout of nttcslab/m2d set up per its README)")

    pairs = []
    for i in range(args.pairs):
        ours_first = args.order == "ours-first" or (args.order == "alternate" and i % 2)
        order = ("avpretrain", "reference") if ours_first else ("reference", "avpretrain")
        pair = {side: _run_worker(side, args) for side in order}
        pairs.append(pair)
        ref, ours = pair["reference"], pair["avpretrain"]
        print(f"pair {i + 1}: reference {ref['step_s']:.3f} s  avpretrain {ours['step_s']:.3f} s  "
              f"ratio {ours['step_s'] / ref['step_s']:.3f}  | start->first step {ref['start_to_first_step_s']:.1f} / "
              f"{ours['start_to_first_step_s']:.1f} s  | peak RSS {ref['peak_rss_gib']:.2f} / "
              f"{ours['peak_rss_gib']:.2f} GiB", flush=True)
    ratios = [pr["avpretrain"]["step_s"] / pr["reference"]["step_s"] for pr in pairs]
    med = lambda side, key: statistics.median(pr[side][key] for pr in pairs)  # noqa: E731
    ref0, ours0 = pairs[0]["reference"], pairs[0]["avpretrain"]
    print(f"reference : {ref0['versions']}, {ref0['threads']} threads; {ref0['params_trainable']:,} trainable params")
    print(f"avpretrain: {ours0['versions']}; {ours0['params_trainable']:,} trainable params"
          + (f"; XLA_FLAGS={ours0['xla_flags']}" if ours0["xla_flags"] else "")
          + (f"; {' '.join(args.ours_set)}" if args.ours_set else ""))
    print(f"m2d_reference: size={args.size} batch={args.batch} frames={args.frames} pairs={args.pairs} "
          f"ref_step_s={med('reference', 'step_s'):.3f} ours_step_s={med('avpretrain', 'step_s'):.3f} "
          f"ratio_median={statistics.median(ratios):.3f} ratios={','.join(f'{r:.3f}' for r in ratios)} "
          f"ref_first_step_s={med('reference', 'start_to_first_step_s'):.1f} "
          f"ours_first_step_s={med('avpretrain', 'start_to_first_step_s'):.1f} "
          f"ref_rss_gib={med('reference', 'peak_rss_gib'):.2f} ours_rss_gib={med('avpretrain', 'peak_rss_gib'):.2f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "pairs": pairs, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
