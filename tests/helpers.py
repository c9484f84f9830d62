"""Shared test fixtures' building blocks: a tiny demo dataset and a tiny M2D config."""
from __future__ import annotations

import pathlib

TINY_CONFIG = "configs/m2d.py:size=tiny,runlocal"
REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_dataset(out, num_clips: int = 40, seed: int = 0) -> str:
    """Builds the procedural demo corpus (train/validation/test) into ``out``; returns it as a str."""
    from data_pipelines import demo

    demo.build(str(out), num_clips=num_clips, seed=seed)
    return str(out)


def tiny_overrides(data_dir, **extra) -> dict:
    """Overrides that make ``TINY_CONFIG`` a seconds-long run on CPU (4 steps of batch 8)."""
    overrides = {
        "model.width": 64, "model.depth": 2, "model.num_heads": 4,
        "model.pred_width": 32, "model.pred_depth": 1, "model.pred_heads": 2,
        "total_steps": 4, "batch_size": 8, "checkpoint_every": 4, "log_every": 2,
        "data.dir": str(data_dir), "data.stats_batches": 1,
    }
    overrides.update(extra)
    return overrides


def tiny_config(data_dir, **extra):
    """The locked tiny config (``TINY_CONFIG`` + ``tiny_overrides``)."""
    from avpretrain import config as config_lib

    return config_lib.load_config(str(REPO / TINY_CONFIG), tiny_overrides(data_dir, **extra))


def read_all(data_dir) -> dict[str, dict]:
    """id -> example over all splits of the dataset in ``data_dir``, with its ``split`` and the
    captions decoded to str."""
    from avpretrain.data import source

    examples = {}
    for split, n in source.dataset_meta(data_dir).num_examples.items():
        ds = source.data_source(data_dir, split)
        for i in range(n):
            ex = ds[i]
            examples[ex['id'].decode()] = dict(ex, split=split, captions=[c.decode() for c in ex['captions']])
    return examples


def start_training(data_dir, workdir, **overrides):
    """``avpretrain train`` of the tiny config in a subprocess, returned once it has logged two steps
    (a long schedule: it runs until signalled)."""
    import os
    import subprocess
    import sys
    import time

    overrides = tiny_overrides(data_dir, total_steps=10_000, log_every=1, checkpoint_every=10_000, **overrides)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "avpretrain", "train", f"--config={REPO / TINY_CONFIG}",
                             *(f"--config.{k}={v}" for k, v in overrides.items()), f"--workdir={workdir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    return proc, overrides


class HashEncoder:
    """A deterministic stand-in for a sentence model (the real one is tested in test_caption_embeddings):
    the same text gives the same unit vector."""

    name, dim = "hash-encoder", 24

    def encode(self, texts):
        import numpy as np

        out = np.stack([np.random.default_rng(sum(map(ord, t)) * 7919 + len(t)).normal(size=self.dim)
                        for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def random_m2d_export(out, data_dir, norm_stats=(-7.0, 4.0)):
    """A random-init export of the tiny M2D config (64 wide, 2 blocks) at ``out``."""
    from flax import nnx

    from avpretrain import export, sharding

    config = tiny_config(data_dir)
    model = export._encoder_model(config, sharding.single_device_mesh())
    return export.write_export(out, config, nnx.to_pure_dict(nnx.state(model)), norm_stats)


def final_state(workdir, config, step):
    """The whole train state (model, EMA target, optimizer) of checkpoint ``step``, as numpy leaves."""
    import jax
    import numpy as np
    from flax import nnx

    from avpretrain import checkpoint, step as step_lib, train

    like = nnx.to_pure_dict(nnx.state(step_lib.create_train_state(config, train.make_mesh(config))))
    mngr = checkpoint.manager(workdir / "checkpoints", async_save=False)
    try:
        return [np.asarray(x) for x in jax.tree.leaves(checkpoint.restore(mngr, step, like))]
    finally:
        mngr.close()
