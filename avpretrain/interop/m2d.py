"""Weights in and out of the PyTorch M2D reference (``{'model': state_dict}`` checkpoints).

One name table maps each of our variables to its official name and layout change, and serves both
directions::

    model = load_state_dict('m2d_vit_base.pth', num_heads=12, decoder_num_heads=16, input_size=(80, 608))
    tokens = encoder_tokens(model, lms)          # [B, 1+N, D], CLS first, patches frequency-major
    sd = to_state_dict(model)                    # official names, torch layouts, float32 numpy

A checkpoint's ``norm_stats`` entry (the input normalisation, not a weight) is kept on the loaded model
as ``model.norm_stats`` (a ``NormStats`` variable, exactly as stored) and given back by
``to_state_dict`` / ``save_pth``, so ``to_state_dict(load_state_dict(sd))`` has the keys of ``sd``.

Everything but the head counts and the input size is read off the shapes. Torch Linear weights are
[out, in] (ours [in, out]); the stride-p patch conv [D, 1, p, p] is our Linear(p·p → D) over
``vit.patchify``; LayerNorm ``weight`` is our ``scale``; ``pos_embed`` / ``decoder_pos_embed`` are
loaded into the fixed position buffers as they are.

Encoder-only checkpoints (no ``target_*`` keys) get the online blocks and norm copied into the target
encoder. With no ``decoder_*`` / ``mask_token`` keys either, the predictor keeps its fresh random init
(width / depth of the size preset with that encoder width, else base's 512 / 8) — fine for feature
extraction, not for resuming pre-training.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from avpretrain import sharding
from avpretrain.models import vit
from avpretrain.models.m2d import M2D, SIZES

NORM_STATS_KEY = "norm_stats"  # the input normalisation (mean, std): kept beside the weights
# Not model weights: skipped when loading (name endings).
IGNORED_SUFFIXES = (".num_batches_tracked",)
# Keys that an encoder-only release may lack (filled in as the module docstring says).
TARGET_PREFIXES = ("target_blocks.", "target_norm.")
PREDICTOR_PREFIXES = ("decoder_", "mask_token")

# Layout change per kind: (ours → torch, torch → ours); p is the patch size.
_LAYOUTS = {
    "same": (lambda x, p: x, lambda x, p: x),
    "linear": (lambda k, p: k.T, lambda w, p: w.T),  # [in, out] ↔ [out, in]
    "conv": (lambda k, p: k.T.reshape(-1, 1, p, p), lambda w, p: w.reshape(w.shape[0], -1).T),
}


def _name_table(model: M2D):
    """[(variable, official name, layout kind)] for every parameter and position buffer of ``model``."""
    rows = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, vit.Buffer))):
        *head, leaf = (str(k) for k in path)
        if head == ["patch_embed"]:
            head = ["patch_embed", "proj"]
        kind = ("conv" if head[0] == "patch_embed" else "linear") if leaf == "kernel" else "same"
        leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
        rows.append((var, ".".join(head + [leaf]), kind))
    return rows


class NormStats(nnx.Variable):
    """The ``norm_stats`` array of a loaded checkpoint, as stored (not a parameter or position buffer)."""


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x)


def _read(state_dict_or_path) -> dict[str, np.ndarray]:
    if isinstance(state_dict_or_path, Mapping):
        sd = state_dict_or_path
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {state_dict_or_path!r} needs PyTorch (pip install torch); "
                              "or pass a mapping of names to numpy arrays") from e
        sd = torch.load(state_dict_or_path, map_location="cpu", weights_only=False)["model"]
    return {k: _to_numpy(v) for k, v in sd.items()}


def norm_stats_of(state_dict) -> tuple[float, float] | None:
    """(mean, std) of the input normalisation stored with a checkpoint, or None."""
    sd = state_dict.get("model", state_dict) if isinstance(state_dict, Mapping) else state_dict
    if NORM_STATS_KEY not in sd:
        return None
    mean, std = _to_numpy(sd[NORM_STATS_KEY]).reshape(-1)[:2]
    return float(mean), float(std)


def _count(sd, prefix) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))})


def _dims(sd, num_heads, decoder_num_heads):
    if "patch_embed.proj.weight" not in sd:
        raise ValueError("missing key patch_embed.proj.weight (needed to infer the width and patch size)")
    width, channels, p, p2 = sd["patch_embed.proj.weight"].shape
    if channels != 1 or p != p2:
        raise ValueError(f"patch_embed.proj.weight has shape {sd['patch_embed.proj.weight'].shape}; "
                         "expected [D, 1, p, p]")
    if "blocks.0.mlp.fc1.weight" not in sd:
        raise ValueError("missing key blocks.0.mlp.fc1.weight (needed to infer mlp_ratio)")
    dims = dict(patch=p, width=width, depth=_count(sd, "blocks"), num_heads=num_heads,
                mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width, pred_heads=decoder_num_heads)
    if "decoder_embed.weight" in sd:
        dims.update(pred_width=sd["decoder_embed.weight"].shape[0], pred_depth=_count(sd, "decoder_blocks"))
    else:
        preset = next((s for s in SIZES.values() if s["width"] == width), SIZES["base"])
        dims.update(pred_width=preset["pred_width"], pred_depth=preset["pred_depth"])
    return dims


def load_state_dict(state_dict_or_path, *, num_heads: int, decoder_num_heads: int,
                    input_size: tuple[int, int] = (80, 608), ignore_prefixes: tuple[str, ...] = ()) -> M2D:
    """An M2D holding the weights of an official state dict (or ``.pth`` checkpoint path).

    ``input_size`` = (n_mels, frames) the model is built for; ``pos_embed`` must fit it.
    ``ignore_prefixes`` skips further keys (e.g. the CLAP heads of an M2D-CLAP checkpoint).
    """
    sd = _read(state_dict_or_path)
    norm_stats = sd.pop(NORM_STATS_KEY, None)
    sd = {k: v for k, v in sd.items() if not k.endswith(IGNORED_SUFFIXES)
          and not (ignore_prefixes and k.startswith(tuple(ignore_prefixes)))}
    dims = _dims(sd, num_heads, decoder_num_heads)
    n_mels, frames = input_size
    p, width = dims["patch"], dims["width"]
    if n_mels % p or frames % p:
        raise ValueError(f"input_size {tuple(input_size)} is not a multiple of the patch size {p}")
    want = (1, 1 + (n_mels // p) * (frames // p), width)
    got = tuple(sd["pos_embed"].shape) if "pos_embed" in sd else None
    if got is not None and got != want:
        hint = ""
        if len(got) == 3 and (got[1] - 1) % (n_mels // p) == 0:
            hint = f"; with n_mels={n_mels} it fits input_size=({n_mels}, {(got[1] - 1) // (n_mels // p) * p})"
        raise ValueError(f"pos_embed has shape {list(got)} but input_size {tuple(input_size)} with patch {p} "
                         f"needs {list(want)}{hint}")

    has = lambda prefixes: any(k.startswith(prefixes) for k in sd)  # noqa: E731
    optional = (TARGET_PREFIXES if not has(TARGET_PREFIXES) else ()) + \
               (PREDICTOR_PREFIXES if not has(PREDICTOR_PREFIXES) else ())
    # Only a fresh predictor needs a real (random) init; otherwise every array comes from the state dict.
    build = (lambda f: f()) if not has(PREDICTOR_PREFIXES) else nnx.eval_shape
    mesh = sharding.single_device_mesh()
    with sharding.mesh_rules(mesh):
        model = build(lambda: M2D(input_frames=frames, n_mels=n_mels, rngs=nnx.Rngs(0), **dims))
    table = _name_table(model)

    names = {name for _, name, _ in table}
    missing = sorted(n for n in names - sd.keys() if not n.startswith(optional))
    unexpected = sorted(sd.keys() - names)
    if missing or unexpected:
        raise ValueError(f"state dict does not match M2D{dims}: missing keys {missing}, unexpected keys {unexpected}")

    for var, name, kind in table:
        if name not in sd:
            continue
        value, old = _LAYOUTS[kind][1](sd[name], p), var.get_raw_value()  # old: array or ShapeDtypeStruct
        if value.shape != old.shape:
            raise ValueError(f"{name} has shape {list(sd[name].shape)}, which does not fit the model "
                             f"(our {kind} layout {list(old.shape)}); check the shapes of the state dict")
        spec = getattr(getattr(old, "sharding", None), "spec", PartitionSpec())
        var.set_value(jax.device_put(np.asarray(value, old.dtype), NamedSharding(mesh, spec)))
    if not has(TARGET_PREFIXES):  # encoder-only release: the target starts as the online encoder
        nnx.update(model.target_blocks, nnx.state(model.blocks, nnx.Param))
        nnx.update(model.target_norm, nnx.state(model.norm, nnx.Param))
    if norm_stats is not None:
        model.norm_stats = NormStats(norm_stats)
    return model


def to_state_dict(model: M2D) -> dict[str, np.ndarray]:
    """The official names and torch layouts, float32 numpy; plus ``norm_stats`` as loaded, if the model
    came from a checkpoint that had it."""
    sd = {name: np.ascontiguousarray(_LAYOUTS[kind][0](np.asarray(jax.device_get(var[...]), np.float32),
                                                        model.patch))
          for var, name, kind in _name_table(model)}
    if isinstance(getattr(model, NORM_STATS_KEY, None), NormStats):
        sd[NORM_STATS_KEY] = np.array(model.norm_stats[...])
    return sd


def save_pth(model: M2D, path, norm_stats: tuple[float, float] | None = None) -> None:
    """Writes ``{'model': state_dict}`` with torch; ``norm_stats`` = (mean, std) replaces the model's own
    (kept from the checkpoint it was loaded from), if any."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("save_pth needs PyTorch (pip install torch); to_state_dict gives numpy arrays") from e
    sd = {k: torch.from_numpy(np.array(v)) for k, v in to_state_dict(model).items()}
    if norm_stats is not None:
        sd[NORM_STATS_KEY] = torch.tensor(list(norm_stats), dtype=torch.float32)
    torch.save({"model": sd}, path)


@nnx.jit
def _encode(model, lms):
    return model.encode(lms)


@functools.partial(nnx.jit, static_argnums=3)
def _masked_loss(model, lms, ids_restore, len_keep):
    return model.masked_loss(lms, jnp.argsort(ids_restore, axis=1), len_keep)[0]


def encoder_tokens(model: M2D, lms) -> jax.Array:
    """Online encoder on normalised log-mel [B, 1, F, T], no masking: [B, 1+N, D], CLS first, then the
    patches frequency-major (index = f·T/p + t). Same as ``model.encode(lms)``."""
    return _encode(model, jnp.asarray(lms, jnp.float32))


def masked_loss(model: M2D, lms, ids_restore, len_keep: int) -> jax.Array:
    """The M2D loss for an explicit masking: ``ids_restore`` [B, N] as in MAE, the visible patches are the
    first ``len_keep`` of ``ids_shuffle = argsort(ids_restore)``; ``model.masked_loss(lms, ids_shuffle, len_keep)``."""
    return _masked_loss(model, jnp.asarray(lms, jnp.float32), jnp.asarray(ids_restore), int(len_keep))
