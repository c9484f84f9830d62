"""Trainer robustness: resuming with a changed config, Ctrl-C, a failed checkpoint save, metrics
after a resume. Every in-process run shares one schedule (``STEPS``) and fixed statistics, so the
train step compiles once (XLA's persistent cache)."""
import errno
import json
import os
import shutil
import signal
import time

import jax
import pytest
from orbax.checkpoint import type_handlers
from orbax.checkpoint._src.futures import future

from avpretrain import checkpoint, cli, metrics as metrics_lib, train, workdir as workdir_lib
from helpers import REPO, TINY_CONFIG, start_training, tiny_config, tiny_overrides

MEAN, STD = -8.0, 3.6
STATS = {"data.norm_stats": (MEAN, STD)}
STEPS = 30


def _overrides(data_dir, **extra):
    return tiny_overrides(data_dir, **{"total_steps": STEPS, "log_every": 1, **STATS, **extra})


def _config(data_dir, **extra):
    return tiny_config(data_dir, **_overrides(data_dir, **extra))


def _cli_train(workdir, overrides):
    return cli.main(["train", f"--config={REPO / TINY_CONFIG}", *(f"--config.{k}={v}" for k, v in overrides.items()),
                     f"--workdir={workdir}"])


def _logged_steps(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _files(workdir):
    return {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}


def test_resume_config_classification(data_dir, tmp_path):
    workdir_lib.write_config(tmp_path, _config(data_dir), {}, 0)

    def changes(**extra):
        return workdir_lib.config_changes(tmp_path, _config(data_dir, **extra))

    assert changes() == {}
    assert changes(**{"model.width": 128}) == {"model.width": (64, 128)}  # nothing trained yet: allowed
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    allowed = {"batch_size": 16, "total_steps": 60, "checkpoint_every": 7, "keep_checkpoints": 1, "seed": 3,
               "optim.base_lr": 1e-3, "ema.end": 0.9999, "data.dir": "/elsewhere", "data.read_threads": 2,
               "mesh": (("data", 2), ("fsdp", 4), ("tensor", 1)),
               # how the step computes (params and optimizer state stay float32): a run may move to bf16
               "model.dtype": "bfloat16", "model.attention": "xla", "model.remat": "full"}
    assert sorted(changes(**allowed)) == sorted(allowed)
    for key, value in {"model.width": 128, "model.input_frames": 192,
                       "data.sample_rate": 8000, "data.norm_stats": (0.0, 1.0), "data.num_workers": 2,
                       "optim.lr_mult.encoder": 0.0}.items():
        with pytest.raises(ValueError, match=f"cannot resume .*checkpoint step 3.*{key}: .* -> "):
            changes(**{key: value, "total_steps": 60})


def test_incompatible_resume_is_refused_before_writing_anything(data_dir, tmp_path, capsys):
    workdir = tmp_path / "w"
    train.train(_config(data_dir, checkpoint_every=3), workdir, stop_at=3)
    before = _files(workdir)
    assert _cli_train(workdir, _overrides(data_dir, checkpoint_every=3, **{"model.width": 128})) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume") and "model.width: 64 -> 128" in err
    assert "config_spec" not in err and "more characters" not in err and len(err.splitlines()) == 1
    assert _files(workdir) == before  # config.json and all else untouched
    assert train.train(_config(data_dir, checkpoint_every=3), workdir, stop_at=4).step == 4  # still resumable


def test_compatible_resume_warns_records_and_keeps_norm_stats(data_dir, tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir_lib.write_norm_stats(workdir, MEAN, STD, data_dir)  # the values of STATS: the same compiled step
    stats_file = (workdir / workdir_lib.NORM_STATS_NAME).read_bytes()
    no_stats = {"data.norm_stats": ()}
    train.train(_config(data_dir, checkpoint_every=3, **no_stats), workdir, stop_at=3)
    moved = tmp_path / "moved_data"
    shutil.copytree(data_dir, moved)
    resumed = _config(moved, checkpoint_every=2, log_every=2, keep_checkpoints=1, **no_stats)
    capsys.readouterr()
    assert train.train(resumed, workdir, stop_at=4).step == 4
    out = capsys.readouterr().out
    assert "checkpoint_every: 3 -> 2" in out and "log_every: 1 -> 2" in out
    assert (f"data.dir changed from {data_dir} to {moved}; keeping the workdir's normalisation statistics "
            f"(mean={MEAN:.4f} std={STD:.4f})") in out
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["step"] == 3
    assert history[0]["changes"] == {"checkpoint_every": [3, 2], "data.dir": [data_dir, str(moved)],
                                     "keep_checkpoints": [3, 1], "log_every": [1, 2]}
    assert workdir_lib.training_config(workdir).data.dir == str(moved)
    assert (workdir / workdir_lib.NORM_STATS_NAME).read_bytes() == stats_file
    train.train(resumed, workdir, stop_at=6)  # the same config again: nothing to record
    assert len((workdir / "config_history.jsonl").read_text().splitlines()) == 1



@pytest.fixture
def sigint_default():
    """Python's own SIGINT handler, whatever this process inherited: a suite started in the background
    (`make test &`) inherits an ignored SIGINT, which the trainer rightly leaves ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_saves_a_checkpoint_and_exits_zero_then_resumes(sigint_default, data_dir, tmp_path):
    workdir = tmp_path / "w"
    proc, overrides = start_training(data_dir, workdir, **STATS)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in out, out
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and f"SIGINT: saving a checkpoint at step {saved[0]} and exiting" in out
    assert out.splitlines()[-1].startswith(f"train stopped (SIGINT), checkpoint saved: step {saved[0]} ")
    config = tiny_config(data_dir, **overrides)
    assert train.train(config, workdir, stop_at=saved[0] + 1).step == saved[0] + 1


def test_second_ctrl_c_interrupts_at_once(sigint_default, data_dir, tmp_path, monkeypatch, capsys):
    write = metrics_lib.MetricWriter.write

    def ctrl_c_twice_at_step_2(self, step, record):
        write(self, step, record)
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # checkpoint at the end of this step...
            signal.raise_signal(signal.SIGINT)  # ...no: stop now

    monkeypatch.setattr(metrics_lib.MetricWriter, "write", ctrl_c_twice_at_step_2)
    handler = signal.getsignal(signal.SIGINT)
    assert _cli_train(tmp_path, _overrides(data_dir, checkpoint_every=STEPS)) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert signal.getsignal(signal.SIGINT) is handler
    assert not any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())


def test_failed_checkpoint_save_stops_the_run(data_dir, tmp_path, monkeypatch, capfd):
    arrays = type_handlers.get_type_handler(jax.Array)
    serialize = arrays.serialize

    async def disk_full_at_step_20(values, infos, args=None):
        commits = await serialize(values, infos, args)
        if infos[0].parent_dir.parent.name.split(".")[0] != "20":
            return commits

        async def write():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return [*commits, future.CommitFuture(write())]  # fails in the background, as a full disk does

    write = metrics_lib.MetricWriter.write

    def slow_after_step_20(self, step, record):  # CPU steps starve Orbax's background thread of the cores
        write(self, step, record)
        if step > 20:
            time.sleep(0.5)

    monkeypatch.setattr(arrays, "serialize", disk_full_at_step_20)
    monkeypatch.setattr(metrics_lib.MetricWriter, "write", slow_after_step_20)
    workdir = tmp_path / "w"
    config = _config(data_dir, checkpoint_every=10)
    with pytest.raises(checkpoint.SaveFailedError, match=r"checkpoint save at step 20 failed: OSError: \[Errno 28\] "
                       r".*; the latest good checkpoint is step 10 "):
        train.train(config, workdir)
    assert max(_logged_steps(workdir)) < 30  # stopped soon after the failed save, not at the next one
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10"]  # no temporary directory left
    assert "Event loop is closed" not in "".join(capfd.readouterr())
    monkeypatch.undo()
    assert train.train(config, workdir, stop_at=11).step == 11  # resumes from step 10


def test_metrics_have_one_record_per_step_after_a_resume(data_dir, tmp_path, monkeypatch):
    class Killed(Exception):
        pass

    write = metrics_lib.MetricWriter.write

    def killed_after_step_5(self, step, record):
        write(self, step, record)
        if step == 5:
            self.jsonl.write('{"step": 6, "lo')  # cut short mid-line
            raise Killed

    monkeypatch.setattr(metrics_lib.MetricWriter, "write", killed_after_step_5)
    workdir = tmp_path / "w"
    config = _config(data_dir, checkpoint_every=3)
    with pytest.raises(Killed):
        train.train(config, workdir)
    monkeypatch.undo()
    assert train.train(config, workdir, stop_at=7).step == 7  # resumes at 3: steps 4 and 5 run again
    assert _logged_steps(workdir) == [1, 2, 3, 4, 5, 6, 7]
