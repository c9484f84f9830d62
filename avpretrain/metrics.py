"""Training metrics to the console (progress line + ETA), TensorBoard event files and metrics.jsonl;
images (``Method.images``) to TensorBoard and PNG files."""
from __future__ import annotations

import json
import pathlib
import shutil
import sys
import time

import jax
import numpy as np


def summary_writer(logdir):
    """tensorboardX's ``SummaryWriter`` for ``logdir``, imported without torch.

    tensorboardX imports torch, when it is installed, only to accept torch tensors; we pass
    floats and numpy arrays, and that import cost ~2.3 s of every run's start. It is hidden for
    the duration of the first import of tensorboardX (never when torch is already loaded).
    """
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # "import torch" raises ImportError: tensorboardX falls back to numpy
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(logdir))


class MetricWriter:
    """Writes on process 0 only; every record has ``step`` and is one JSON line in metrics.jsonl.

    A run starting at ``resumed_step`` first drops the records after it (written by a run killed
    after its last checkpoint; their steps run again), so each step has one record. TensorBoard
    event files are append-only: there a replayed step appears twice.
    """

    def __init__(self, workdir, total_steps: int, resumed_step: int = 0):
        self.active = jax.process_index() == 0
        self.total_steps = total_steps
        self.start = time.time()
        self.start_step = None
        if self.active:
            path = pathlib.Path(workdir)
            path.mkdir(parents=True, exist_ok=True)
            truncate_jsonl(path / "metrics.jsonl", resumed_step)
            self.jsonl = open(path / "metrics.jsonl", "a")
            self.images_dir = path / "images"
            self.tb = summary_writer(path / "tensorboard")

    def write_scalars(self, step: int, metrics: dict) -> dict:
        """One metrics.jsonl record and TensorBoard scalars, nothing printed (e.g. validation's ``val_*``)."""
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        if not self.active:
            return record
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(key, value, step)
        self.tb.flush()
        return record

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        record = self.write_scalars(step, metrics)
        if self.start_step is None:
            self.start_step, self.start = step, time.time()
        done = step - self.start_step
        eta = (time.time() - self.start) / done * (self.total_steps - step) if done else float("nan")
        shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k in
                         ("loss", "loss_m2d", "clap_loss", "clap_a2t_acc", "lr", "grad_norm", "step_time",
                          "examples_per_s", "audio_hours_per_s"))
        print(f"[{step}/{self.total_steps}] {100 * step / self.total_steps:5.1f}% {shown} "
              f"eta={_fmt(eta)}", flush=True)

    def write_images(self, step: int, images: dict) -> None:
        """``name -> uint8 [H, W, 3]`` (host arrays): TensorBoard images (tag ``name``) and
        ``images/<name>-<step:07d>.png``, copied atomically to ``images/<name>-latest.png``."""
        if not self.active:
            return
        from PIL import Image

        self.images_dir.mkdir(exist_ok=True)
        for name, image in images.items():
            image = np.asarray(image, np.uint8)
            self.tb.add_image(name, image, step, dataformats="HWC")
            stem = name.replace("/", "_")
            Image.fromarray(image).save(self.images_dir / f"{stem}-{int(step):07d}.png")
            tmp = self.images_dir / f"{stem}-latest.png.tmp"
            shutil.copyfile(self.images_dir / f"{stem}-{int(step):07d}.png", tmp)
            tmp.replace(self.images_dir / f"{stem}-latest.png")
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()


def truncate_jsonl(path: pathlib.Path, last_step: int) -> None:
    """Keeps the records of ``path`` with ``step <= last_step`` (and drops a line cut short by a kill),
    atomically: a temporary file renamed over it."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    tmp.replace(path)


def _fmt(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stdout, flush=True)
