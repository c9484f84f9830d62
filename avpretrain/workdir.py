"""Readers of training workdirs and exported models, in one place (no trainer import).

A **training workdir** holds ``config.json`` (the training config), ``checkpoints/`` (Orbax) and,
once computed, ``norm_stats.json`` (and ``config_history.jsonl``: the config changes of resumed
runs). An **export** (``avpretrain export``) holds ``config.json``
(``{"config": ..., "norm_stats": [mean, std], "sample_rate": ..., "format": ...}``) and
``params/``. Everything that asks "what is at this path" or "which statistics does it use" asks
here, so export and downstream code never import the trainer.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import pathlib

from avpretrain import config as config_lib

CONFIG_NAME = "config.json"
NORM_STATS_NAME = "norm_stats.json"
EXPORT_FORMAT = "avpretrain-encoder-v1"


def read_json(path) -> dict:
    """A JSON object from ``path``; a missing, unreadable or corrupt file is a ValueError naming it."""
    path = pathlib.Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def kind(path) -> str | None:
    """``"export"``, ``"workdir"`` (a training workdir) or None, from what ``path`` holds."""
    path = pathlib.Path(path)
    if (path / "params").is_dir():
        return "export"
    if (path / "checkpoints").is_dir() or ((path / CONFIG_NAME).is_file() and not (path / "params").exists()
                                           and (path / NORM_STATS_NAME).is_file()):
        return "workdir"
    return None


def training_config(workdir):
    """The ConfigDict stored in ``<workdir>/config.json`` (None when there is none)."""
    path = pathlib.Path(workdir) / CONFIG_NAME
    if not path.is_file():
        return None
    meta = read_json(path)
    if "config" in meta and "norm_stats" in meta:
        raise ValueError(f"{workdir} is an exported model, not a training workdir")
    return config_lib.from_json(json.dumps(meta))


def stored_norm_stats(config, workdir) -> tuple[float, float] | None:
    """config.data.norm_stats if given, else ``<workdir>/norm_stats.json`` if present, else None."""
    if config.data.norm_stats:
        return tuple(float(v) for v in config.data.norm_stats)
    path = pathlib.Path(workdir) / NORM_STATS_NAME
    if path.exists():
        stats = read_json(path)
        try:
            return float(stats["mean"]), float(stats["std"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: expected {{\"mean\": <float>, \"std\": <float>}}, got {stats}") from None
    return None


def write_norm_stats(workdir, mean: float, std: float, data_dir: str) -> pathlib.Path:
    path = pathlib.Path(workdir) / NORM_STATS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mean": mean, "std": std, "data_dir": data_dir}))
    return path


# -- resuming with a changed config ------------------------------------------------------------
CONFIG_HISTORY_NAME = "config_history.jsonl"
CHECKPOINTS_NAME = "checkpoints"
ABSENT = "<absent>"
# The keys a resume may change (glob patterns over dotted keys): cadence, schedule length and
# optimiser hyperparameters (batch_size too: nothing checkpointed has a batch dimension, the grain
# position counts clips, and lr = base_lr·batch/256 follows from the resumed step), data location
# and read-ahead, placement (restores reshard), the RNG seed and init.* (used only before the first
# checkpoint). Every other key is refused: the model and method (param and optimizer-state shapes,
# what an export builds), the input (data.sample_rate, model.input_frames, data.norm_stats,
# captions), optim.lr_mult (frozen groups have no optimizer state), data.num_workers (grain's
# multiprocess iterator checkpoints a different structure) and any key not listed here.
RESUMABLE_KEYS = ("config_spec", "seed", "total_steps", "batch_size", "log_every", "checkpoint_every", "image_every",
                  "eval_every", "eval.patience", "eval.batch_size",
                  "keep_checkpoints", "mesh", "sharding_rules", "init.*", "ema.*", "optim.base_lr", "optim.b1",
                  "optim.b2", "optim.weight_decay", "optim.warmup_fraction", "optim.grad_clip", "data.dir",
                  "data.split", "data.read_threads", "data.prefetch_batches", "data.stats_batches", "data.max_bad_fraction",
                  # how the step computes, not what it learns: a run may move to a GPU, bf16 or remat
                  "model.dtype", "model.attention", "model.remat")


def resumable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


def checkpointed_steps(workdir) -> list[int]:
    """The finished checkpoints of a training workdir (Orbax names them by step; unfinished saves
    are ``<step>.orbax-checkpoint-tmp*``)."""
    directory = pathlib.Path(workdir) / CHECKPOINTS_NAME
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(workdir, config) -> dict[str, tuple]:
    """``key -> (stored, new)`` for every key where ``config`` differs from ``<workdir>/config.json``
    (empty for a new workdir). Raises ValueError, before anything is written, when a key outside
    ``RESUMABLE_KEYS`` changed and the workdir has a checkpoint (without one, nothing was trained
    with the stored config and any change is allowed)."""
    path = pathlib.Path(workdir) / CONFIG_NAME
    if not path.is_file():
        return {}
    stored = read_json(path)
    if "config" in stored and "norm_stats" in stored:
        raise ValueError(f"{workdir} is an exported model, not a training workdir")
    old, new = _flat(stored), _flat(json.loads(config_lib.to_json(config)))
    added = _base_defaults()  # a key absent from an older config.json at its default value is no change
    changes = {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(old.keys() | new.keys())
               if old.get(k, ABSENT) != new.get(k, ABSENT)
               and not (k not in old and k in added and added[k] == new[k])}
    refused = [k for k in changes if not resumable(k)]
    steps = checkpointed_steps(workdir)
    if refused and steps:
        listed = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ValueError(f"cannot resume {workdir} (checkpoint step {steps[-1]}): {listed} differ from its "
                         f"{CONFIG_NAME} and change what its checkpoints hold; keep the stored values or use a new "
                         "--workdir")
    return changes


def _base_defaults() -> dict:
    """The flat defaults every config starts from (``configs/common.py``)."""
    from configs.common import base_config

    return _flat(json.loads(config_lib.to_json(base_config())))


def describe_changes(workdir, changes: dict, kept_norm_stats) -> str:
    """The warning for a resume with ``changes`` (``config_changes``); ``kept_norm_stats``: the
    workdir's statistics that the run keeps (None when there are none yet)."""
    listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    text = f"warning: resuming {workdir} with a changed config ({listed}); recorded in {CONFIG_HISTORY_NAME}"
    if "data.dir" in changes and kept_norm_stats is not None:
        old, new = changes["data.dir"]
        text += (f"\nwarning: data.dir changed from {old} to {new}; keeping the workdir's normalisation statistics "
                 f"(mean={kept_norm_stats[0]:.4f} std={kept_norm_stats[1]:.4f}), not recomputing them on the new data")
    return text


def write_config(workdir, config, changes: dict, step: int) -> None:
    """Writes ``<workdir>/config.json`` (atomically) and appends ``changes`` to config_history.jsonl
    as one line: time, the step the run starts from and ``{key: [old, new]}``."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f"{CONFIG_NAME}.tmp"
    tmp.write_text(config_lib.to_json(config))
    tmp.replace(workdir / CONFIG_NAME)
    if changes:
        record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "step": step,
                  "changes": {k: list(v) for k, v in changes.items()}}
        with open(workdir / CONFIG_HISTORY_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")


def model_norm_stats(path) -> tuple[float, float]:
    """The statistics a model at ``path`` (training workdir or export) was trained with."""
    path = pathlib.Path(path)
    meta_file = path / CONFIG_NAME
    meta = read_json(meta_file) if meta_file.is_file() else {}
    if "norm_stats" in meta:  # an export
        if meta["norm_stats"] is None:
            raise ValueError(f"{path}: an export whose front end has no normalisation statistics")
        return tuple(float(v) for v in meta["norm_stats"])
    if "data" in meta:  # a training workdir: its config's statistics or its norm_stats.json
        stats = stored_norm_stats(config_lib.from_json(json.dumps(meta)), path)
        if stats is not None:
            return stats
    raise FileNotFoundError(f"{path}: not a training workdir with normalisation statistics "
                            "(config.json + norm_stats.json) nor an export (config.json with norm_stats)")


def export_meta(path) -> dict:
    """``<path>/config.json`` of an export (config, norm_stats, sample_rate). A training workdir, a missing
    directory or file and a config.json that is not an export's are errors saying so."""
    path = pathlib.Path(path)
    meta_file = path / CONFIG_NAME
    workdir_hint = f"{path} is a training workdir: export it first with `avpretrain export --workdir={path} --out=E`"
    if kind(path) == "workdir":
        raise ValueError(workdir_hint)
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: is {path} a directory written by `avpretrain export`?")
    meta = read_json(meta_file)
    missing = [k for k in ("config", "norm_stats", "sample_rate") if k not in meta]
    if missing and {"model", "data"} <= meta.keys():  # a training config
        raise ValueError(workdir_hint)
    if missing:
        raise ValueError(f"{meta_file}: not an export's config.json (missing keys {missing})")
    return meta
