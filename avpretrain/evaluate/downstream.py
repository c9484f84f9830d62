"""Downstream evaluation of exported encoders on a built dataset (train/validation/test splits)."""
from __future__ import annotations

import time

import numpy as np

from avpretrain import export
from avpretrain.data import pipeline, source
from avpretrain.evaluate.linear_probe import train_linear_probe


def embed_split(encoder: export.PretrainedEncoder, data_dir: str, split: str, batch_size: int = 64):
    """Scene embeddings [N, D'] and labels (``pipeline.eval_batches``: [N] int32, or [N, C] float32
    multi-hot for a multi-label dataset) of every example of ``split`` (each exactly once);
    ``batch_size`` clips are read at a time and embedded ``batch_size`` chunks per encoder call."""
    xs, ys = [], []
    for batch in pipeline.eval_batches(data_dir, split, batch_size=batch_size):
        xs.append(encoder.scene_embeddings(batch["audio"], batch_size=batch_size))
        ys.append(batch["label"])
    if not xs:
        return np.zeros((0, encoder.embedding_dim), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys)


def linear_probe(model_dir: str, data_dir: str, *, random_init: bool = False, seed: int = 0,
                 batch_size: int = 64) -> dict:
    """EVAR-style linear evaluation: frozen scene embeddings → standardised → linear classifier.

    The result's ``metric`` is "accuracy" (``test_accuracy``) or, for a multi-label dataset, "mAP"
    (``test_mAP``: sigmoid outputs per class, macro average precision over the classes with a
    positive in test; ``test_classes_without_positives`` counts those left out), with
    ``test_score`` / ``valid_score`` either way. Without a (non-empty) validation split, early
    stopping uses a held-out part of train (``valid_from_train`` in the result); a missing train or
    test split is an error.
    """
    meta = source.dataset_meta(data_dir)
    for required in ("train", "test"):
        if not meta.num_examples.get(required):
            raise ValueError(f"{data_dir} has no {required!r} examples (splits: {meta.num_examples}): the linear "
                             "probe trains on 'train' and reports accuracy (mAP, multi-label) on 'test'")
    encoder = export.load_pretrained(model_dir, random_init=random_init, seed=seed)
    if meta.sample_rate != encoder.sample_rate:
        raise ValueError(f"{data_dir} is at {meta.sample_rate} Hz but the encoder expects {encoder.sample_rate} Hz")
    t0 = time.time()
    present = [s for s in ("train", "validation", "test") if meta.num_examples.get(s)]
    splits = {s: embed_split(encoder, data_dir, s, batch_size) for s in present}
    embed_seconds = time.time() - t0
    result = train_linear_probe(*splits["train"], *splits.get("validation", (None, None)), *splits["test"],
                                num_classes=len(meta.label_names), seed=seed)
    return {"model": str(model_dir), "data": str(data_dir), "random_init": random_init,
            "multi_label": meta.multi_label, "num_classes": len(meta.label_names), **result.as_dict(),
            "embedding_dim": int(splits["train"][0].shape[1]),
            "num_examples": {s: int(len(v[1])) for s, v in splits.items()}, "embed_seconds": embed_seconds}
