"""Faults a pod job meets, injected for real: SIGKILLs at random moments, damaged checkpoints (files
truncated or deleted after the save completed), corrupt records in the dataset, a full disk."""
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kill_campaign
from avpretrain import checkpoint, cli, train
from helpers import REPO, TINY_CONFIG, final_state, tiny_config, tiny_overrides

STATS = {"data.norm_stats": (-8.0, 3.6)}  # fixed statistics: no stats pass


def _config(data_dir, **extra):
    return tiny_config(data_dir, total_steps=6, log_every=1, checkpoint_every=2, **STATS, **extra)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """An uninterrupted run of 6 steps, and a run stopped at step 4 (checkpoints 2 and 4) to damage."""
    root = tmp_path_factory.mktemp("faults")
    full = train.train(_config(data_dir), root / "full").losses
    assert train.train(_config(data_dir), root / "stopped", stop_at=4).step == 4
    return root, full


def _copy(runs, tmp_path):
    root, _ = runs
    shutil.copytree(root / "stopped", tmp_path / "w")
    return tmp_path / "w"


def _largest_file(step_dir):
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _logged_steps(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_every_completed_save_records_its_files(runs):
    root, _ = runs
    for step in (2, 4):
        step_dir = root / "stopped" / "checkpoints" / str(step)
        record = json.loads((step_dir / checkpoint.FILES_NAME).read_text())
        assert record and all((step_dir / name).stat().st_size == size for name, size in record.items())
        assert checkpoint.step_problem(step_dir) is None


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(runs, data_dir, tmp_path, capsys):
    workdir = _copy(runs, tmp_path)
    victim = _largest_file(workdir / "checkpoints" / "4")
    os.truncate(victim, victim.stat().st_size // 2)
    resumed = train.train(_config(data_dir), workdir)
    out = capsys.readouterr().out
    assert f"warning: checkpoint step 4 is damaged ({workdir / 'checkpoints' / '4'}: {victim.relative_to(workdir / 'checkpoints' / '4')} is" in out
    assert "truncated?" in out and "resumed from" in out and "at step 2" in out
    # steps 3-6 again, exactly as the uninterrupted run; one metrics record per step
    _, full = runs
    assert sorted(resumed.losses) == [3, 4, 5, 6]
    assert [resumed.losses[s] for s in (3, 4, 5, 6)] == [full[s] for s in (3, 4, 5, 6)]
    assert _logged_steps(workdir) == [1, 2, 3, 4, 5, 6]
    # the damaged step is kept aside with its reason, and step 4 was saved anew
    aside = workdir / checkpoint.REJECTED_NAME / "4"
    assert "truncated?" in (aside / "REJECTED.txt").read_text()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 6
    assert checkpoint.step_problem(workdir / "checkpoints" / "4") is None


def test_deleted_files_are_found_without_a_record_too(runs, data_dir, tmp_path, capsys):
    """A step saved before records existed (no avpretrain_files.json): its metadata is still checked."""
    workdir = _copy(runs, tmp_path)
    step4 = workdir / "checkpoints" / "4"
    os.remove(step4 / checkpoint.FILES_NAME)
    os.remove(step4 / "state" / "_METADATA")
    assert train.train(_config(data_dir), workdir, stop_at=3).step == 3
    out = capsys.readouterr().out
    assert "checkpoint step 4 is damaged" in out and "state/_METADATA is missing" in out


def test_no_usable_checkpoint_is_refused_and_nothing_is_touched(runs, data_dir, tmp_path, capsys):
    workdir = _copy(runs, tmp_path)
    os.remove(workdir / "checkpoints" / "4" / "state" / "_METADATA")
    victim = _largest_file(workdir / "checkpoints" / "2")
    os.truncate(victim, 100)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    overrides = tiny_overrides(data_dir, total_steps=6, log_every=1, checkpoint_every=2, **STATS)
    code = cli.main(["train", f"--config={REPO / TINY_CONFIG}", f"--workdir={workdir}",
                     *(f"--config.{k}={v}" for k, v in overrides.items())])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: no usable checkpoint in {workdir / 'checkpoints'}: step 4: state/_METADATA is "
                          "missing; step 2: "), err
    assert "move the checkpoints directory away" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before  # nothing moved, nothing written


# ----------------------------------------------------------------------------- hard kills


def train_command(workdir, overrides):
    return [sys.executable, "-m", "avpretrain", "train", f"--config={REPO / TINY_CONFIG}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def test_a_campaign_of_sigkills_at_random_moments_ends_bit_identical(data_dir, tmp_path):
    """The CLI run is SIGKILLed during start-up, compilation, a step, an asynchronous checkpoint
    write and after a checkpoint (random moments within each; ``AVP_KILL_SEED`` repeats a campaign),
    relaunched after each kill, and finally run to the end: per-step losses and every array of the
    final state equal the uninterrupted run's, and metrics.jsonl has one record per step."""
    cadence = dict(total_steps=8, log_every=1, checkpoint_every=4, **STATS)  # steps without a save in flight
    config = tiny_config(data_dir, **cadence)
    full = train.train(config, tmp_path / "full").losses
    seed = int(os.environ.get("AVP_KILL_SEED") or random.randrange(10_000))
    rng = random.Random(seed)
    workdir = tmp_path / "w"
    command = train_command(workdir, tiny_overrides(data_dir, **cadence))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kills = [kill_campaign.run_killed(command, workdir, "compile", rng, env=env, cwd=REPO)]
    start_up_s = 0.6 * kills[0].start_up_s  # the compile starts early (it overlaps start-up): a margin
    for phase, step in [("start-up", None), ("step", rng.randint(1, 3)), ("write", None), ("after-checkpoint", None)]:
        kills.append(kill_campaign.run_killed(command, workdir, phase, rng, step=step, start_up_s=start_up_s,
                                              env=env, cwd=REPO))
    report = f"AVP_KILL_SEED={seed}: " + "; ".join(map(str, kills))
    assert {"start-up", "compile", "step", "write"} <= {k.landed for k in kills}, report
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, report + "\n" + done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9)), report
    assert {r["step"]: r["loss"] for r in records} == full, report
    for mine, theirs in zip(final_state(workdir, config, 8), final_state(tmp_path / "full", config, 8), strict=True):
        np.testing.assert_array_equal(mine, theirs, err_msg=report)


# ----------------------------------------------------------------------------- bad records


def _flip_records(data_dir, tmp_path):
    """A copy of the dataset with bytes flipped inside two records of its train shard; returns it and
    the indices of the records that no longer read."""
    from avpretrain.data import source

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    shard = sorted(data.rglob("*-train.array_record-*"))[0]
    raw = bytearray(shard.read_bytes())
    for at in (len(raw) // 3, len(raw) // 2):
        raw[at:at + 16] = bytes(b ^ 0xA5 for b in raw[at:at + 16])
    shard.write_bytes(bytes(raw))
    src, bad = source.data_source(data, "train"), []
    for i in range(len(src)):
        try:
            src[i]
        except RuntimeError:
            bad.append(i)
    assert bad  # the flips hit at least one record (ArrayRecord checksums every chunk)
    return data, bad


def test_corrupt_records_are_skipped_counted_and_logged_then_too_many_stop_the_run(data_dir, tmp_path, capsys):
    data, bad = _flip_records(data_dir, tmp_path)
    result = train.train(tiny_config(data, total_steps=4, log_every=1, **STATS), tmp_path / "w")
    out = capsys.readouterr().out
    assert result.step == 4 and all(np.isfinite(list(result.losses.values())))
    for i in bad:  # 16 records, 32 read: each bad one is met at least once
        assert f"warning: skipped a bad record of {data} split 'train': record {i}: RuntimeError: Corrupted Riegeli" in out
    assert "bad of" in out and "read by process 0" in out
    # a share of 0 tolerates none: one line naming the dataset, the count and the setting; exit 2
    overrides = tiny_overrides(data, total_steps=4, **STATS, **{"data.max_bad_fraction": 0})
    code = cli.main(["train", f"--config={REPO / TINY_CONFIG}", f"--workdir={tmp_path / 'strict'}",
                     *(f"--config.{k}={v}" for k, v in overrides.items())])
    err = capsys.readouterr().err
    assert code == 2, err
    # the first bad read stops it; the read-ahead threads may each have met one by then (a race:
    # a cold-cache suite once reported 2)
    met = re.match(rf"error: {re.escape(str(data))} split 'train': (\d+) bad records of ", err)
    assert met and 1 <= int(met.group(1)) <= len(bad) and "data.max_bad_fraction=0 allows" in err, err


# ----------------------------------------------------------------------------- another process count


def test_process_blocks_make_every_global_batch_independent_of_the_process_count():
    import grain

    from avpretrain.data import order

    stream = grain.MapDataset.range(1000).shuffle(seed=3).repeat(None)

    def rows(start, batch, count, steps):
        """The global batches of ``steps`` steps as the processes' blocks, concatenated in process order."""
        parts = [order.ProcessBlocks(stream, start=start, global_batch=batch, process_index=p, process_count=count)
                 for p in range(count)]
        b = batch // count
        return [sum(([part[s * b + i] for i in range(b)] for part in parts), []) for s in range(steps)]

    one = rows(0, 8, 1, 130)  # past the first epoch of 1000 too
    assert rows(0, 8, 2, 130) == one == rows(0, 8, 4, 130) == rows(0, 8, 8, 130)
    assert [x for batch in one for x in batch] == [stream[i] for i in range(130 * 8)]  # nothing skipped or repeated
    # resumed after 3 steps on another process count, then with a larger batch: the stream continues
    assert rows(24, 8, 4, 2) == one[3:5]
    assert sum(rows(24, 16, 2, 2), []) == sum(one[3:7], [])
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        order.ProcessBlocks(stream, start=0, global_batch=8, process_index=0, process_count=3)


# ----------------------------------------------------------------------------- a full disk


def test_a_really_full_filesystem_stops_the_run_at_the_failed_save_and_loses_nothing(data_dir, tmp_path):
    """The workdir on a 5 MiB tmpfs (mounted in a user and mount namespace: no root needed where the
    kernel allows them): checkpoints 2 and 4 fit, 6 does not."""
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a small tmpfs")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    overrides = tiny_overrides(data_dir, total_steps=8, log_every=1, checkpoint_every=2, **STATS)
    train_cmd = " ".join([sys.executable, "-m", "avpretrain", "train", f"--config={REPO / TINY_CONFIG}",
                          f"--workdir={mnt / 'run'}", *(f"'--config.{k}={v}'" for k, v in overrides.items())])
    script = (f"mount -t tmpfs -o size=5m tmpfs {mnt} || exit 99\n"
              f"{train_cmd} > {tmp_path / 'log.txt'} 2>&1; echo $? > {tmp_path / 'code'}\n"
              f"cp -a {mnt / 'run'} {out}\n")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
    if proc.returncode == 99 or not (tmp_path / "code").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()[-200:]}")
    log = (tmp_path / "log.txt").read_text()
    assert (tmp_path / "code").read_text().strip() == "4", log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: checkpoint save at step 6 failed: No space left on "
                                                     "device (errno 28; "), log[-3000:]
    assert "ERROR:absl" not in log  # Orbax's own tracebacks are not repeated
    # nothing partial: the two good checkpoints, no temporary directory; step 4 restores and the run finishes
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "4"]
    resumed = train.train(tiny_config(data_dir, total_steps=8, log_every=1, checkpoint_every=2, **STATS), out)
    assert sorted(resumed.losses) == [5, 6, 7, 8]
