"""The generic trainer: sharding invariance, exact resume, SIGTERM, non-finite stop, metrics, CLI."""
import json
import signal

import jax
import numpy as np
import pytest

from avpretrain import cli, sharding, step as step_lib, train
from helpers import REPO, TINY_CONFIG, start_training, tiny_config

STATS = {"data.norm_stats": (-8.0, 3.6)}  # fixed statistics: no stats pass in these tests


def test_eight_devices_equal_one_device(data_dir, tmp_path, monkeypatch):
    cfg8 = tiny_config(data_dir, total_steps=4, log_every=1, **STATS)
    losses8 = train.train(cfg8, tmp_path / "eight").losses
    cfg1 = tiny_config(data_dir, total_steps=4, log_every=1, mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)), **STATS)
    monkeypatch.setattr(train, "make_mesh", lambda c: sharding.make_mesh(c.mesh, devices=jax.devices()[:1]))
    losses1 = train.train(cfg1, tmp_path / "one").losses
    assert sorted(losses8) == [1, 2, 3, 4]
    np.testing.assert_allclose([losses8[s] for s in range(1, 5)], [losses1[s] for s in range(1, 5)], rtol=2e-5)


def _refuse(what):
    def refused(*args, **kwargs):
        raise AssertionError(f"{what} ran")
    return refused


def test_resumed_run_reproduces_uninterrupted_losses_exactly(data_dir, tmp_path, monkeypatch):
    cfg = tiny_config(data_dir, total_steps=6, log_every=1, checkpoint_every=3, **STATS)
    full = train.train(cfg, tmp_path / "full").losses
    first = train.train(cfg, tmp_path / "resumed", stop_at=3)
    assert first.step == 3 and sorted(first.losses) == [1, 2, 3]
    # a resume restores onto the abstract state: the init program never runs
    monkeypatch.setattr(step_lib.StatePlan, "initialize", _refuse("init"))
    second = train.train(cfg, tmp_path / "resumed")
    assert sorted(second.losses) == [4, 5, 6]
    assert [full[s] for s in range(1, 7)] == [first.losses[s] for s in (1, 2, 3)] + [second.losses[s] for s in (4, 5, 6)]
    records = [json.loads(l) for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and all("loss" in r for r in records)
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "resumed" / "tensorboard").iterdir())
    # A finished run resumes into nothing: no step runs again, none is compiled.
    monkeypatch.setattr(train, "_compile", _refuse("the step's compile"))
    assert train.train(cfg, tmp_path / "full").losses == {}


def test_non_finite_loss_stops_without_checkpoint(data_dir, tmp_path):
    cfg = tiny_config(data_dir, total_steps=4, checkpoint_every=1, **{"data.norm_stats": (0.0, 0.0)})
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss"):
        train.train(cfg, tmp_path / "w")
    ckpts = tmp_path / "w" / "checkpoints"
    assert not ckpts.exists() or not any(p.name.isdigit() for p in ckpts.iterdir())


def test_sigterm_saves_a_checkpoint_and_exits_zero(data_dir, tmp_path):
    workdir = tmp_path / "w"
    proc, _ = start_training(data_dir, workdir, **STATS)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM: saving a checkpoint" in out
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) >= 2
    assert f"step {max(saved)}" in out.splitlines()[-1]


def test_unknown_config_key_fails_before_compiling(tmp_path, capsys):
    rc = cli.main(["train", f"--config={REPO / TINY_CONFIG}", "--config.optim.base_lrr=0.1", f"--workdir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown config key 'optim.base_lrr'" in err and "did you mean 'optim.base_lr'" in err
    assert not any(tmp_path.iterdir())  # nothing was written, nothing compiled
    rc = cli.main(["train", f"--config={REPO / TINY_CONFIG}", "--config.model.width=wide", f"--workdir={tmp_path}"])
    assert rc == 2 and "config key 'model.width': cannot set 'wide' on a int field" in capsys.readouterr().err
    rc = cli.main(["train", f"--config={REPO / 'configs/m2d.py:size=huge'}", f"--workdir={tmp_path}"])
    assert rc == 2 and "unknown size 'huge'" in capsys.readouterr().err
    rc = cli.main(["train", f"--config={REPO / TINY_CONFIG}", f"--workdir={tmp_path}"])
    assert rc == 2 and "config.data.dir is empty" in capsys.readouterr().err


def test_sweep_prints_one_command_per_run(capsys):
    assert cli.main(["sweep", f"--config={REPO / TINY_CONFIG}", "--workdir=/tmp/sweep"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("avpretrain train" in l and "--config.optim.base_lr=" in l for l in lines)
