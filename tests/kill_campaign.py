"""SIGKILL a training command at random moments of a chosen phase, as a preempted host is killed.

``run_killed(command, workdir, phase, rng)`` starts ``command`` in its own process group and kills the
whole group with SIGKILL:

- ``start-up``: a random moment in the first ``start_up_s`` seconds after launch (imports, data,
  state, restore; pass 0.9 x the ``start_up_s`` that an earlier launch measured);
- ``compile``: a random 0-0.3 s after the trainer logs that it is compiling (or loading from the
  compilation cache) its step;
- ``step``: a random 0-50 ms after the trainer has logged step ``k`` (given by the caller) and no
  save is in flight;
- ``write``: the moment a checkpoint's temporary directory appears (an asynchronous save in flight);
- ``after-checkpoint``: a random 0-0.3 s after a new checkpoint has completed (later steps then run
  again after the resume).

It returns what the process was doing when the kill landed (judged from its output and the
checkpoint directory at that moment, not from the plan): ``start-up``, ``compile``, ``step``,
``write`` (a save in flight, whatever else was running), or ``finished`` when the command ended first.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time

COMPILING = "compiling the train step"
FIRST_STEP = "first step done"
STEP_LINE = re.compile(r"^\s*(?:\|\s*)?\[(\d+)/\d+\]")


@dataclasses.dataclass
class Kill:
    planned: str
    landed: str  # what the process was doing: start-up / compile / step / write / finished
    seconds: float  # after launch
    output: str
    saving: list  # the checkpoints' temporary directories at the kill
    start_up_s: float | None  # when the trainer said it was compiling (None: it did not)

    def __str__(self):
        last = next((line.strip() for line in reversed(self.output.splitlines()) if STEP_LINE.match(line)), "no step")
        return (f"{self.planned} -> {self.landed} at {self.seconds:.1f} s (last step line: {last[:12]}; "
                f"saving: {', '.join(self.saving) or 'nothing'})")


def _tmp_dirs(workdir):
    directory = workdir / "checkpoints"
    try:
        return [p.name for p in directory.iterdir() if "orbax-checkpoint-tmp" in p.name]
    except FileNotFoundError:
        return []


def _completed(workdir) -> int:
    """The latest checkpoint step whose save completed (its file record is written last), else 0."""
    try:
        return max((int(p.name) for p in (workdir / "checkpoints").iterdir()
                    if p.name.isdigit() and (p / "avpretrain_files.json").exists()), default=0)
    except FileNotFoundError:
        return 0


def run_killed(command, workdir, phase: str, rng, *, step: int | None = None, start_up_s: float = 2.0,
               env=None, cwd=None, timeout: float = 420.0) -> Kill:
    lines: list[str] = []
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    started, before = time.monotonic(), _completed(workdir)
    kill_at = started + rng.uniform(0.1, start_up_s) if phase == "start-up" else None
    compiling_at = None
    landed, saving = "finished", []
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                raise TimeoutError(f"{command[:3]}... ran {timeout:.0f} s without reaching {phase}:\n"
                                   + "".join(lines)[-3000:])
            text = list(lines)
            if compiling_at is None and any(COMPILING in line for line in text):
                compiling_at = now - started
            # a temporary directory before the first step is a killed run's leftover, not a save
            stepping = any(FIRST_STEP in line for line in text)
            if kill_at is None:
                if phase == "compile" and any(COMPILING in line for line in text):
                    kill_at = now + rng.uniform(0.0, 0.3)
                elif (phase == "step" and not _tmp_dirs(workdir)
                      and any((m := STEP_LINE.match(line)) and int(m.group(1)) >= step for line in text)):
                    kill_at = now + rng.uniform(0.0, 0.05)
                elif phase == "write" and stepping and _tmp_dirs(workdir):
                    kill_at = now
                elif phase == "after-checkpoint" and stepping and _completed(workdir) > before:
                    kill_at = now + rng.uniform(0.0, 0.3)
            if kill_at is not None and now >= kill_at:
                text = list(lines)
                saving = _tmp_dirs(workdir)
                writing = any(FIRST_STEP in line for line in text) and bool(saving)
                os.killpg(proc.pid, signal.SIGKILL)
                if writing:
                    landed = "write"
                elif not any(COMPILING in line for line in text):
                    landed = "start-up"
                elif not any(FIRST_STEP in line for line in text):
                    landed = "compile"
                else:
                    landed = "step"
                break
            time.sleep(0.003)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        reader.join(timeout=10)
    return Kill(phase, landed, time.monotonic() - started, "".join(lines), saving, compiling_at)
