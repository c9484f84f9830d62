"""Classification over a whole split: every window of every clip → class probabilities averaged per clip.

Shared by validation during training (``avpretrain/validation.py``), ``avpretrain eval classify``
and ``avpretrain kfold``. A clip is read once; its evaluation windows (``Crop.eval_windows``:
consecutive windows of the training length, the last one ending at the clip's end) are packed
with other clips' windows into batches of one fixed size (one compiled shape; the last batch is
padded with copies of its last window, which are dropped), and the softmax of each window's logits
is averaged over the clip.
"""
from __future__ import annotations

import pathlib

import numpy as np

from avpretrain.data import pipeline


def predict_source(src, inputs: dict, predict, *, batch_size: int, class_names, what: str) -> dict:
    """Clip-level class probabilities of every record of ``src``.

    ``inputs``: the model's batch fields (``label`` is ignored); ``predict(batch)``: numpy batch
    of ``batch_size`` windows → logits [batch_size, C]. Returns ``probs`` [N, C] float64, ``labels``
    [N] int and ``ids``. A label outside [0, C) is a ValueError naming it and its record.
    """
    crop = pipeline.Crop({k: v for k, v in inputs.items() if k != "label"})
    C, N = len(class_names), len(src)
    sums, counts = np.zeros((N, C)), np.zeros(N)
    labels, ids = np.zeros(N, np.int64), []
    rows, owners = [], []

    def flush():
        if not rows:
            return
        n = len(rows)
        batch = {k: np.stack([r[k] for r in rows] + [rows[-1][k]] * (batch_size - n)) for k in rows[0]}
        logits = np.asarray(predict(batch), np.float64)[:n]
        if logits.shape[1] != C:
            raise ValueError(f"{what}: the model predicts {logits.shape[1]} classes, the data has {C} {list(class_names)}")
        p = np.exp(logits - logits.max(1, keepdims=True))
        np.add.at(sums, owners, p / p.sum(1, keepdims=True))
        np.add.at(counts, owners, 1)
        rows.clear()
        owners.clear()

    for i in range(N):
        example = src[i]
        label = int(example["label"])
        ident = example.get("id", b"")
        ident = ident.decode() if isinstance(ident, bytes) else str(ident)
        if not 0 <= label < C:
            raise ValueError(f"{what}: label {label} of record {i} (id {ident!r}) is outside the model's {C} classes "
                             f"{list(class_names)}")
        labels[i] = label
        ids.append(ident)
        for window in crop.eval_windows(example):
            rows.append(window)
            owners.append(i)
            if len(rows) == batch_size:
                flush()
    flush()
    return {"probs": sums / np.maximum(counts, 1)[:, None], "labels": labels, "ids": ids}


def scores(predicted: dict, class_names) -> dict:
    """``classify.metrics`` of the argmax of ``predict_source``'s probabilities, plus ``loss`` (mean NLL)."""
    from avpretrain.evaluate import classify

    if not len(predicted["labels"]):
        raise ValueError("nothing to evaluate: the split is empty")
    probs, labels = predicted["probs"], predicted["labels"]
    result = classify.metrics(labels, probs.argmax(1), len(class_names), list(class_names))
    result["loss"] = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
    return result


def data_config(data_dir, folds_file: str = "", fold: int = -1):
    """A ``config.data`` for ``folds.split_source`` (a dataset's splits, or one fold's)."""
    import ml_collections

    return ml_collections.ConfigDict({"dir": str(data_dir), "folds": str(folds_file or ""), "fold": int(fold)})


def classify(model_dir, data_dir, *, split: str = "test", batch_size: int = 64, png: str | None = None,
             folds_file: str = "", fold: int = -1, title: str = "") -> dict:
    """Evaluates an exported classifier on ``split`` of ``data_dir`` (or of a fold): the metrics of
    ``classify.metrics`` + ``loss``, and a confusion-matrix PNG (default ``<model>/eval/confusion-<split>.png``)."""
    from avpretrain import export
    from avpretrain.data import folds, source as source_lib
    from avpretrain.evaluate import classify as classify_lib

    model = export.load_pretrained(str(model_dir))
    if not hasattr(model, "class_names"):
        raise ValueError(f"{model_dir} is a {model.config.method!r} export, not a classifier: fine-tune one with "
                         "configs/finetune.py")
    names = list(source_lib.open_builder(data_dir).info.features["label"].names)
    if names[:len(model.class_names)] != model.class_names:
        raise ValueError(f"{data_dir}: its classes {names} are not the model's {model.class_names}")
    src = folds.split_source(data_config(data_dir, folds_file, fold), split)
    predicted = predict_source(src, model.inputs, model.predict, batch_size=batch_size, class_names=model.class_names,
                               what=f"{data_dir} split {split!r}")
    result = scores(predicted, model.class_names)
    png = pathlib.Path(png) if png else pathlib.Path(model_dir) / "eval" / f"confusion-{split}.png"
    classify_lib.confusion_png(np.asarray(result["confusion"]), model.class_names, png,
                               title=title or f"{pathlib.Path(model_dir).name} on {split} (n={len(predicted['labels'])})")
    return result | {"model": str(model_dir), "data": str(data_dir), "split": split, "confusion_png": str(png)}
