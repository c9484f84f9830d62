"""Two JAX processes on 127.0.0.1 (launch/cpu_multiprocess.sh 2 4): train to a --stop-at
checkpoint, resume to the end, then restore the 2-process checkpoint in this one process (8 devices);
the same step-3 checkpoint resumed on 1 and on 4 processes reads the same batches (data.order).

Slow (two launches, each compiling in two processes); run alone with
``pytest -m multiprocess`` or skip with ``-m 'not multiprocess'``.
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from avpretrain import checkpoint, step as step_lib, train
from helpers import REPO, TINY_CONFIG, final_state, tiny_config, tiny_overrides

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("multiprocess")]

LAUNCHER = REPO / "launch" / "cpu_multiprocess.sh"
LAUNCH_TIMEOUT_S = 420

GLOBAL_BATCH = tiny_overrides("")["batch_size"]


def _env():
    """The children's environment: each forces its own CPU devices (no XLA_FLAGS), and conftest's
    JAX_COMPILATION_CACHE_DIR is inherited."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _overrides(data_dir):
    return tiny_overrides(data_dir, total_steps=6, log_every=1, checkpoint_every=3)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """Launches the 2-process job in one workdir (from a directory other than the repository)."""
    root = tmp_path_factory.mktemp("multiprocess")
    workdir = root / "workdir"
    env = _env()

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
    """The 2-process run stopped at step 3, and a copy of its workdir then (to resume elsewhere)."""
    workdir, launch = run
    out = launch("--stop-at=3")
    shutil.copytree(workdir, workdir.parent / "at_step_3")
    return workdir, out


@pytest.fixture(scope="module")
def resumed(run, stopped):
    workdir, launch = run
    return workdir, launch()


def _position(workdir, step):
    mngr = checkpoint.manager(workdir / "checkpoints", async_save=False)
    try:
        return checkpoint.saved_data(mngr, step)
    finally:
        mngr.close()


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


def test_two_processes_stop_at_checkpoint(stopped):
    workdir, out = stopped
    assert "train done: step 3" in out
    assert sorted((workdir / "logs").iterdir()) == [workdir / "logs" / "process_0.log",
                                                    workdir / "logs" / "process_1.log"]
    assert "train done: step 3" in (workdir / "logs" / "process_1.log").read_text()
    step_dir = workdir / "checkpoints" / "3"
    assert (step_dir / "state").is_dir() and not (step_dir / "iter").exists()
    # The input position is global (data.order): 3 steps of 8 examples, whatever the process count.
    assert _position(workdir, 3) == {"examples": 3 * GLOBAL_BATCH, "batch_size": GLOBAL_BATCH, "process_count": 2}


def test_two_processes_resume_and_finish(resumed):
    workdir, out = resumed
    assert "resumed from" in out and "at step 3" in out
    assert "train done: step 6" in out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert _position(workdir, 6) == {"examples": 6 * GLOBAL_BATCH, "batch_size": GLOBAL_BATCH, "process_count": 2}


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    """The same config trained in this one process (8 devices), uninterrupted."""
    return train.train(tiny_config(data_dir, total_steps=6, log_every=1, checkpoint_every=3),
                       tmp_path_factory.mktemp("single") / "w").losses


def test_two_processes_train_on_the_batches_of_one(resumed, single):
    """Every global batch is the same examples in the same rows on 2 processes as on 1 (data.order)."""
    workdir, _ = resumed
    two = _losses(workdir)
    np.testing.assert_allclose([two[s] for s in range(1, 7)], [single[s] for s in range(1, 7)], rtol=1e-5)


def test_a_two_process_checkpoint_resumes_on_one_process(stopped, resumed, single, data_dir, tmp_path):
    """Resumed in this process at the 2-process run's step 3: the same batches follow, so steps 4-6
    match both the 2-process continuation and the uninterrupted single-process run."""
    workdir = tmp_path / "w"
    shutil.copytree(stopped[0].parent / "at_step_3", workdir)
    result = train.train(tiny_config(data_dir, total_steps=6, log_every=1, checkpoint_every=3), workdir)
    assert sorted(result.losses) == [4, 5, 6]
    two = _losses(resumed[0])
    np.testing.assert_allclose([result.losses[s] for s in (4, 5, 6)], [two[s] for s in (4, 5, 6)], rtol=1e-5)
    np.testing.assert_allclose([result.losses[s] for s in (4, 5, 6)], [single[s] for s in (4, 5, 6)], rtol=1e-5)
    assert _position(workdir, 6) == {"examples": 6 * GLOBAL_BATCH, "batch_size": GLOBAL_BATCH, "process_count": 1}


def test_a_two_process_checkpoint_resumes_on_four_processes(stopped, resumed, run, data_dir):
    workdir, _ = run
    four = workdir.parent / "four"
    shutil.copytree(workdir.parent / "at_step_3", four)
    env = _env()
    proc = subprocess.run(["bash", str(LAUNCHER), "4", "2", TINY_CONFIG, str(four),
                           *(f"--config.{k}={v}" for k, v in _overrides(data_dir).items())],
                          cwd=four.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=LAUNCH_TIMEOUT_S, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "at step 3 (after 24 examples; saved by 2 processes, now 4)" in proc.stdout
    two, on_four = _losses(resumed[0]), _losses(four)
    np.testing.assert_allclose([on_four[s] for s in (4, 5, 6)], [two[s] for s in (4, 5, 6)], rtol=1e-5)
    assert _position(four, 6)["process_count"] == 4


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


def test_a_dead_peer_ends_the_other_process_in_bounded_time_and_a_restart_resumes(data_dir, tmp_path):
    """Process 1 of 2 is SIGKILLed mid-run: process 0 exits within the heartbeat timeout
    (AVP_HEARTBEAT_TIMEOUT=10 here; JAX's default 100 s otherwise) naming the lost task, instead of
    waiting in a collective; relaunching both resumes from the last complete checkpoint."""
    import socket
    import sys
    import time

    workdir = tmp_path / "w"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = tiny_overrides(data_dir, total_steps=100_000, log_every=1, checkpoint_every=3)
    env = dict(_env(), AVP_HEARTBEAT_TIMEOUT="10")
    procs, logs = [], []
    for i in range(2):
        logs.append(open(tmp_path / f"p{i}.log", "w"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "avpretrain", "train", f"--config={REPO / TINY_CONFIG}", f"--workdir={workdir}",
             f"--coordinator=127.0.0.1:{port}", "--num-processes=2", f"--process-id={i}", "--local-devices=4",
             *(f"--config.{k}={v}" for k, v in overrides.items())],
            cwd=REPO, env=env, stdout=logs[i], stderr=subprocess.STDOUT, start_new_session=True))
    try:
        deadline = time.time() + LAUNCH_TIMEOUT_S
        while time.time() < deadline and not (workdir / "checkpoints" / "3" / checkpoint.FILES_NAME).exists():
            assert procs[0].poll() is None, (tmp_path / "p0.log").read_text()[-3000:]
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        code = procs[0].wait(timeout=120)
        waited = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for f in logs:
            f.close()
    log = (tmp_path / "p0.log").read_text()
    assert code != 0 and waited < 60, (code, waited)
    assert "The following tasks are unhealthy (stopped sending heartbeats)" in log and "Terminating process" in log
    # a relaunch of both processes resumes from the last complete checkpoint
    last = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    env.pop("AVP_HEARTBEAT_TIMEOUT")
    proc = subprocess.run(["bash", str(LAUNCHER), "2", "4", TINY_CONFIG, str(workdir), f"--stop-at={last + 1}",
                           *(f"--config.{k}={v}" for k, v in overrides.items())],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=LAUNCH_TIMEOUT_S, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"at step {last} (after {last * GLOBAL_BATCH} examples)" in proc.stdout
    assert f"train done: step {last + 1}" in proc.stdout


# ----------------------------------------------------------------------------- hard kills, full disks


def _launch_command(workdir, overrides, *args):
    return ["bash", str(LAUNCHER), "2", "4", TINY_CONFIG, str(workdir),
            *(f"--config.{k}={v}" for k, v in overrides.items()), *args]


def test_sigkills_of_the_whole_job_resume_bit_identical(resumed, data_dir, tmp_path):
    """Both processes (the launcher's whole process group, as a preempted job) are SIGKILLed while
    the step-3 checkpoint is being written; the next launch finishes. Losses and the final state
    equal the uninterrupted 2-process run's exactly. (Kills at the other moments are the
    single-process campaign's, test_faults; a 2-process resume from a complete checkpoint is
    test_two_processes_resume_and_finish.)"""
    import random

    import kill_campaign

    seed = int(os.environ.get("AVP_KILL_SEED") or random.randrange(10_000))
    rng = random.Random(seed)
    workdir = tmp_path / "w"
    command = _launch_command(workdir, _overrides(data_dir))
    kills = [kill_campaign.run_killed(command, workdir, phase, rng, env=_env(), cwd=tmp_path, timeout=LAUNCH_TIMEOUT_S)
             for phase in ("write",)]
    report = f"AVP_KILL_SEED={seed}: " + "; ".join(map(str, kills))
    assert [k.landed for k in kills][0] == "write", report
    done = subprocess.run(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=LAUNCH_TIMEOUT_S, start_new_session=True)
    assert done.returncode == 0, report + "\n" + done.stdout[-4000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6], report
    assert _losses(workdir) == _losses(resumed[0]), report
    config = tiny_config(data_dir, total_steps=6, log_every=1, checkpoint_every=3)
    for mine, theirs in zip(final_state(workdir, config, 6), final_state(resumed[0], config, 6), strict=True):
        np.testing.assert_array_equal(mine, theirs, err_msg=report)


STATS = {"data.norm_stats": (-8.0, 3.6)}  # fixed statistics: no stats pass


def _save_failure(log: str) -> list[str]:
    return [line.strip(" |") for line in log.splitlines() if "error: checkpoint save" in line]


def test_a_save_that_fails_on_one_process_stops_both_at_one_step(data_dir, tmp_path):
    """Process 1's array writes of checkpoint 4 fail (ENOSPC, injected); process 0's succeed and its
    save thread waits for process 1. Both stop at the same step with the same message naming
    process 1 (step 5, or 6 when the failure surfaced only after step 5's exchange), and nothing of
    step 4 is left."""
    workdir = tmp_path / "w"
    env = dict(_env(), AVP=f"{sys.executable} {REPO / 'tests' / 'inject_save_failure.py'} 4 1")
    overrides = tiny_overrides(data_dir, total_steps=8, log_every=1, checkpoint_every=2, **STATS)
    proc = subprocess.run(_launch_command(workdir, overrides), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=LAUNCH_TIMEOUT_S, start_new_session=True)
    assert proc.returncode == 1, proc.stdout[-4000:]
    logs = [(workdir / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    errors = [_save_failure(log) for log in logs]
    assert len(errors[0]) == 1 and errors[0] == errors[1], proc.stdout[-4000:]
    assert re.fullmatch(r"error: checkpoint save at step 4 failed: OSError: \[Errno 28\] No space left on device "
                        r"\(process 1 of 2\); stopped at step [56]; the latest good checkpoint is step 2 \(.*\)",
                        errors[0][0]), errors[0][0]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]


def test_a_really_full_filesystem_stops_both_processes_at_one_step_and_loses_nothing(data_dir, tmp_path):
    """The workdir on a 5 MiB tmpfs that both processes share (one user and mount namespace): the
    checkpoints of steps 2 and 4 fit, 6 does not. Both processes stop at one step with one message;
    step 4 stays the latest and the run resumes from it (here in one process)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a small tmpfs")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    overrides = tiny_overrides(data_dir, total_steps=8, log_every=1, checkpoint_every=2, **STATS)
    launch = " ".join(f"'{a}'" for a in _launch_command(mnt / "run", overrides))
    script = (f"mount -t tmpfs -o size=5m tmpfs {mnt} || exit 99\n"
              f"{launch} > {tmp_path / 'out.txt'} 2>&1; echo $? > {tmp_path / 'code'}\n"
              f"cp -a {mnt / 'run'} {out}\n")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if proc.returncode == 99 or not (tmp_path / "code").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()[-200:]}")
    text = (tmp_path / "out.txt").read_text()
    assert (tmp_path / "code").read_text().strip() == "1", text[-4000:]
    # process 0's own lines from the launcher's stdout: its log file (through tee) is on the full
    # disk, and tee stops writing a file after its first failed write
    errors = [[line for line in text.splitlines() if line.startswith("error: checkpoint save")],
              _save_failure((out / "logs" / "process_1.log").read_text())]
    assert len(errors[0]) == 1 and errors[0] == errors[1], errors
    assert re.fullmatch(r"error: checkpoint save at step 6 failed: No space left on device \(errno 28; .*\) "
                        r"\(process \d of 2\); stopped at step [78]; the latest good checkpoint is step 4 \(.*\)",
                        errors[0][0]), errors[0][0]
    assert "never retrieved" not in text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "4"]
    resumed = train.train(tiny_config(data_dir, total_steps=8, log_every=1, checkpoint_every=2, **STATS), out)
    assert sorted(resumed.losses) == [5, 6, 7, 8]
