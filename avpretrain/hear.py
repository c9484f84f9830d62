"""The HEAR 2021 API (https://hearbenchmark.com/hear-api.html) over an exported encoder.

    from avpretrain import hear
    model = hear.load_model("E")                              # a directory from `avpretrain export`
    scene = hear.get_scene_embeddings(audio, model)           # [n_sounds, D]
    emb, ts = hear.get_timestamp_embeddings(audio, model)     # [n_sounds, T, D], [n_sounds, T] in ms

``audio`` is [n_sounds, n_samples] at ``model.sample_rate`` (numpy, or anything with
``__array__`` such as a CPU torch tensor). Results are torch tensors when torch is installed (as
HEAR's harness expects), numpy arrays otherwise.
"""
from __future__ import annotations

import numpy as np

from avpretrain import export


class HearModel:
    """An exported encoder with the attributes HEAR asks for."""

    def __init__(self, encoder: export.PretrainedEncoder):
        self.encoder = encoder
        self.sample_rate = encoder.sample_rate
        self.scene_embedding_size = self.timestamp_embedding_size = encoder.embedding_dim


def load_model(model_file_path: str = "", **kwargs) -> HearModel:
    """``model_file_path``: the exported encoder directory; ``kwargs`` go to ``load_pretrained``."""
    if not model_file_path:
        raise FileNotFoundError("load_model needs the directory written by `avpretrain export`")
    return HearModel(export.load_pretrained(model_file_path, **kwargs))


def _audio(audio) -> np.ndarray:
    if hasattr(audio, "detach"):  # torch
        audio = audio.detach().cpu()
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 2:
        raise ValueError(f"audio must be [n_sounds, n_samples], got shape {audio.shape}")
    return audio


def _out(x: np.ndarray):
    try:
        import torch
    except ImportError:
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def get_timestamp_embeddings(audio, model: HearModel):
    """(embeddings [n_sounds, T, D], timestamps [n_sounds, T] in ms, the centres of the columns)."""
    emb, seconds, _ = model.encoder.frame_embeddings(_audio(audio))
    timestamps = np.broadcast_to(1000.0 * seconds, emb.shape[:2]).astype(np.float32)
    return _out(emb.astype(np.float32)), _out(timestamps)


def get_scene_embeddings(audio, model: HearModel):
    """Mean of the timestamp embeddings over each sound: [n_sounds, D]."""
    return _out(model.encoder.scene_embeddings(_audio(audio)).astype(np.float32))
