"""Readers of training workdirs and exported models, in one place (no trainer import).

A **training workdir** holds ``config.json`` (the training config), ``checkpoints/`` (Orbax) and,
once computed, ``norm_stats.json``. An **export** (``avpretrain export``) holds ``config.json``
(``{"config": ..., "norm_stats": [mean, std], "sample_rate": ..., "format": ...}``) and
``params/``. Everything that asks "what is at this path" or "which statistics does it use" asks
here, so export and downstream code never import the trainer.
"""
from __future__ import annotations

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


def model_norm_stats(path) -> tuple[float, float]:
    """The statistics a model at ``path`` (training workdir or export) was trained with."""
    path = pathlib.Path(path)
    meta_file = path / CONFIG_NAME
    meta = read_json(meta_file) if meta_file.is_file() else {}
    if "norm_stats" in meta:  # an export
        return tuple(float(v) for v in meta["norm_stats"])
    if "data" in meta:  # a training workdir: its config's statistics or its norm_stats.json
        stats = stored_norm_stats(config_lib.from_json(json.dumps(meta)), path)
        if stats is not None:
            return stats
    raise FileNotFoundError(f"{path}: not a training workdir with normalisation statistics "
                            "(config.json + norm_stats.json) nor an export (config.json with norm_stats)")
