"""Two JAX processes on 127.0.0.1 (launch/cpu_multiprocess.sh 2 4): train to a --stop-at
checkpoint, resume to the end, then restore the 2-process checkpoint in this one process (8 devices).

Slow (two launches, each compiling in two processes); run alone with
``pytest -m multiprocess`` or skip with ``-m 'not multiprocess'``.
"""
import json
import math
import os
import signal
import subprocess

import numpy as np
import pytest
from flax import nnx

from avpretrain import checkpoint, step as step_lib, train
from helpers import REPO, TINY_CONFIG, tiny_config, tiny_overrides

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("multiprocess")]

LAUNCHER = REPO / "launch" / "cpu_multiprocess.sh"
LAUNCH_TIMEOUT_S = 420

PER_PROCESS_BATCH = tiny_overrides("")["batch_size"] // 2  # the global batch over 2 processes


def _overrides(data_dir):
    return tiny_overrides(data_dir, total_steps=6, log_every=1, checkpoint_every=3)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """Launches the 2-process job in one workdir (from a directory other than the repository)."""
    root = tmp_path_factory.mktemp("multiprocess")
    workdir = root / "workdir"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # each child forces 4 devices itself
    env.update(JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")  # and conftest's JAX_COMPILATION_CACHE_DIR

    def launch(*args):
        command = ["bash", str(LAUNCHER), "2", "4", TINY_CONFIG, str(workdir),
                   *(f"--config.{k}={v}" for k, v in _overrides(data_dir).items()), *args]
        # Own session: on a timeout the launcher and both trainers are killed together.
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"cpu_multiprocess.sh timed out after {LAUNCH_TIMEOUT_S}s:\n{out[-4000:]}")
        assert proc.returncode == 0, f"cpu_multiprocess.sh exited {proc.returncode}:\n{out[-4000:]}"
        return out

    return workdir, launch


@pytest.fixture(scope="module")
def stopped(run):
    workdir, launch = run
    return workdir, launch("--stop-at=3")


@pytest.fixture(scope="module")
def resumed(run, stopped):
    workdir, launch = run
    return workdir, launch()


def _iter_files(step_dir):
    return sorted(p.name for p in (step_dir / "iter").iterdir() if p.suffix == ".json")


def test_two_processes_stop_at_checkpoint(stopped):
    workdir, out = stopped
    assert "train done: step 3" in out
    assert sorted((workdir / "logs").iterdir()) == [workdir / "logs" / "process_0.log",
                                                    workdir / "logs" / "process_1.log"]
    assert "train done: step 3" in (workdir / "logs" / "process_1.log").read_text()
    step_dir = workdir / "checkpoints" / "3"
    assert (step_dir / "state").is_dir()
    # One grain iterator state per process: each read 3 batches of 4 clips (8 over 2 processes) of
    # its own shard; the state counts clips (batching follows the per-clip prefetch).
    assert _iter_files(step_dir) == ["process_0-of-2.json", "process_1-of-2.json"]
    for name in _iter_files(step_dir):
        assert json.loads((step_dir / "iter" / name).read_text()) == {"next_index": 3 * PER_PROCESS_BATCH}


def test_two_processes_resume_and_finish(resumed):
    workdir, out = resumed
    assert "resumed from" in out and "at step 3" in out
    assert "train done: step 6" in out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in records)
    step_dir = workdir / "checkpoints" / "6"
    assert _iter_files(step_dir) == ["process_0-of-2.json", "process_1-of-2.json"]
    for name in _iter_files(step_dir):
        assert json.loads((step_dir / "iter" / name).read_text()) == {"next_index": 6 * PER_PROCESS_BATCH}


def test_two_process_checkpoint_restores_in_one_process(resumed, data_dir):
    """8 devices in this process; only ``state`` (iterator states are per process)."""
    workdir, _ = resumed
    config = tiny_config(data_dir, total_steps=6, log_every=1, checkpoint_every=3)
    mesh = train.make_mesh(config)
    assert mesh.devices.size == 8
    like = nnx.to_pure_dict(nnx.state(step_lib.create_train_state(config, mesh)))
    mngr = checkpoint.manager(workdir / "checkpoints", async_save=False)
    assert mngr.all_steps() == [3, 6]
    restored = checkpoint.restore(mngr, 6, like)
    mngr.close()

    assert int(restored["opt"]["step"]) == 6
    kernel = restored["model"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.mesh.devices.size == 8 and kernel.is_fully_addressable
    assert np.all(np.isfinite(np.asarray(kernel)))
    assert not np.allclose(np.asarray(kernel), np.asarray(like["model"]["blocks"][0]["mlp"]["fc1"]["kernel"]))
    params = checkpoint.restore_params(workdir / "checkpoints", like["model"])
    np.testing.assert_array_equal(np.asarray(params["blocks"][0]["mlp"]["fc1"]["kernel"]), np.asarray(kernel))
