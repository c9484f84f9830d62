"""Config files, their argument strings, command-line overrides and sweeps.

A config file defines ``get_config(arg: str) -> ml_collections.ConfigDict`` and may define
``get_sweep(arg: str[, config]) -> list[dict]`` (each dict: dotted key -> value overrides for one
run; with a second parameter it gets the config with the command line's overrides)::

    avpretrain train --config=configs/m2d.py:size=tiny,runlocal --config.optim.base_lr=1e-4

Unknown keys are rejected, with the nearest full key, and values out of range (``batch_size``,
``total_steps``, cadences, ...) are refused, before anything compiles. ``configs/...`` paths are
looked up in the working directory, then in the installed project.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib

import ml_collections


def parse_arg(arg: str | None, **defaults):
    """``"size=base,runlocal"`` -> ConfigDict(size='base', runlocal=True), typed like ``defaults``."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, raw = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not _:
            value = True
        elif isinstance(default, bool):
            value = raw.lower() in ("1", "true", "yes")
        else:
            value = type(default)(raw) if default is not None else raw
        out[key] = value
    return out


def _installed_configs_dir() -> pathlib.Path | None:
    spec = importlib.util.find_spec("configs")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def resolve_path(path: str) -> pathlib.Path:
    """``path`` as given (relative to the working directory), else ``configs/<name>`` of the
    installed project; a FileNotFoundError says where it looked."""
    file = pathlib.Path(path)
    if file.is_file():
        return file
    looked = [str(file.absolute())]
    installed = _installed_configs_dir()
    if installed is not None and not file.is_absolute() and file.parts[:1] == ("configs",):
        candidate = installed.joinpath(*file.parts[1:])
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    raise FileNotFoundError(f"config file not found: {path} (looked at {' and '.join(looked)})")


def _load_module(path: str):
    file = resolve_path(path)
    spec = importlib.util.spec_from_file_location(f"avp_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config(arg)")
    return module


def split_spec(spec: str) -> tuple[str, str]:
    path, _, arg = spec.partition(":")
    return path, arg


def load_config(spec: str, overrides: list[str] | dict | None = None) -> ml_collections.ConfigDict:
    """Loads ``path.py[:arg]``, applies overrides and locks the result (no new keys)."""
    path, arg = split_spec(spec)
    config = _load_module(path).get_config(arg)
    config.config_spec = spec
    apply_overrides(config, overrides or [])
    validate(config)
    config.lock()
    return config


# Range checks of the keys most configs share (a config without the key skips its check).
_CHECKS = {
    "seed": (lambda v: 0 <= v < 2**31, "an integer in [0, 2**31) (a 32-bit step input)"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "total_steps": (lambda v: v >= 1, "a positive integer"),
    "log_every": (lambda v: v >= 1, "a positive integer"),
    "checkpoint_every": (lambda v: v >= 1, "a positive integer"),
    "keep_checkpoints": (lambda v: v >= 1, "a positive integer"),
    "image_every": (lambda v: v >= 0, ">= 0 (0: at each checkpoint)"),
    "eval_every": (lambda v: v >= 0, ">= 0 (0: no validation)"),
    "eval.patience": (lambda v: v >= 0, ">= 0 (0: no early stopping)"),
    "eval.batch_size": (lambda v: v >= 0, ">= 0 (0: batch_size)"),
    "optim.base_lr": (lambda v: v >= 0, ">= 0"),
    "optim.warmup_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.grad_clip": (lambda v: v > 0, "> 0"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
    "data.read_threads": (lambda v: v >= 1, "a positive integer"),
    "data.prefetch_batches": (lambda v: v >= 1, "a positive integer"),
    "data.stats_batches": (lambda v: v >= 1, "a positive integer"),
    "data.max_bad_fraction": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "data.sample_rate": (lambda v: v >= 1, "a positive integer"),
    "model.input_frames": (lambda v: v >= 1, "a positive integer"),
    "model.mask_ratio": (lambda v: 0 < v < 1, "in (0, 1)"),
    "model.dtype": (lambda v: v in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
    "model.attention": (lambda v: v in ("auto", "plain", "xla", "cudnn"), "auto, plain, xla or cudnn"),
    "model.remat": (lambda v: v in ("none", "dots", "full"), "none, dots or full"),
    "model.scan_layers": (lambda v: isinstance(v, bool), "true or false"),
}


def validate(config) -> None:
    """Range checks of ``_CHECKS``: a ValueError naming the key, its value and what it must be."""
    for key, (ok, what) in _CHECKS.items():
        value = _get(config, key)
        if value is not None and not ok(value):
            raise ValueError(f"config key {key!r} = {value!r}: must be {what} "
                             f"({config.get('config_spec', 'config')})")


def _get(config, key):
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    return node


def load_sweep(spec: str, overrides=()) -> list[dict]:
    """The runs of the config file's ``get_sweep(arg)``; a ``get_sweep(arg, config)`` also gets the
    config with the command line's ``overrides`` (e.g. the corpora whose subsets it sweeps)."""
    import inspect

    path, arg = split_spec(spec)
    module = _load_module(path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"config file {path} declares no sweep (define get_sweep(arg))")
    if len(inspect.signature(module.get_sweep).parameters) > 1:
        return list(module.get_sweep(arg, load_config(spec, list(overrides))))
    return list(module.get_sweep(arg))


def _all_keys(config, prefix=""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        yield name
        if isinstance(value, ml_collections.ConfigDict):
            yield from _all_keys(value, name + ".")


def nearest_key(key: str, config) -> str | None:
    """The settable (leaf) key nearest to ``key``: among the keys of the same parent the nearest
    name (a shared word counts: ``optim.lr`` -> ``optim.base_lr``), else the nearest full key,
    else the nearest name anywhere."""
    leaves = [k for k in _all_keys(config) if not isinstance(_get(config, k), ml_collections.ConfigDict)]
    parent, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in leaves if k.rpartition(".")[0] == parent}

    def score(other):
        shared_word = bool(set(name.split("_")) & set(other.split("_")))
        return difflib.SequenceMatcher(None, name, other).ratio() + 0.5 * shared_word

    best = max(siblings, key=score, default=None)
    if best is not None and score(best) >= 0.6:
        return siblings[best]
    hint = difflib.get_close_matches(key, leaves, n=1)
    if hint:
        return hint[0]
    best = max(leaves, key=lambda k: score(k.rpartition(".")[2]), default=None)  # e.g. lr -> optim.base_lr
    return best if best is not None and score(best.rpartition(".")[2]) >= 0.6 else None


def _parse_value(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str] | dict) -> None:
    """Applies ``["a.b=1", ...]`` or ``{"a.b": 1}``; an unknown key raises KeyError naming it."""
    items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
    known = list(_all_keys(config))
    for key, value in items:
        if key not in known:
            hint = nearest_key(key, config)
            raise KeyError(f"unknown config key {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                           + f" in {config.get('config_spec', 'config')}")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        current = node[leaf]
        if isinstance(current, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"  # JSON/YAML spelling too, not only Python's True/False
        if isinstance(value, str) and not isinstance(current, str):
            value = _parse_value(value)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, tuple) and isinstance(value, str):  # a,b,c of words (e.g. paths): strings
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        try:
            node[leaf] = value
        except TypeError as e:
            field_type = node.get_ref(leaf).get_type() if current is None else type(current)
            raise TypeError(f"config key {key!r}: cannot set {value!r} on a {field_type.__name__} field") from e


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"config override {item!r} is not of the form key=value")
    return key.removeprefix("--").removeprefix("config."), value


def to_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_tuplify(json.loads(text)))


def _tuplify(value):
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
