"""Classification and regression over a whole split: every window of every clip → class
probabilities (or predicted ratings) averaged per clip.

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


def predict_source(src, inputs: dict, predict, *, batch_size: int, class_names=None, targets=None,
                   what: str) -> dict:
    """Clip-level predictions of every record of ``src``: class probabilities (``class_names``) or
    ratings (``targets``: the rating fields, e.g. ("arousal", "valence", "dominance")).

    ``inputs``: the model's batch fields (``pipeline.TARGET_FIELDS`` are ignored); ``predict(batch)``:
    numpy batch of ``batch_size`` windows → [batch_size, C] (logits, or ratings). Returns ``probs``
    [N, C] float64 and ``labels`` [N] int (classification; a label outside [0, C) is a ValueError
    naming it and its record), or ``preds`` [N, D] and ``targets`` [N, D] (NaN: unrated); and ``ids``.
    """
    if (class_names is None) == (targets is None):
        raise ValueError("predict_source: give class_names (classification) or targets (regression)")
    crop = pipeline.Crop(pipeline.model_fields(inputs))
    names = list(class_names if class_names is not None else targets)
    C, N = len(names), len(src)
    sums, counts = np.zeros((N, C)), np.zeros(N)
    labels, truth, ids = np.zeros(N, np.int64), np.full((N, C), np.nan), []
    rows, owners = [], []

    def flush():
        if not rows:
            return
        n = len(rows)
        batch = {k: np.stack([r[k] for r in rows] + [rows[-1][k]] * (batch_size - n)) for k in rows[0]}
        out = np.asarray(predict(batch), np.float64)[:n]
        if out.shape[1] != C:
            kind = "classes" if class_names is not None else "ratings"
            raise ValueError(f"{what}: the model predicts {out.shape[1]} {kind}, the data has {C} {names}")
        if class_names is not None:
            p = np.exp(out - out.max(1, keepdims=True))
            out = p / p.sum(1, keepdims=True)
        np.add.at(sums, owners, out)
        np.add.at(counts, owners, 1)
        rows.clear()
        owners.clear()

    for i in range(N):
        example = src[i]
        ident = example.get("id", b"")
        ident = ident.decode() if isinstance(ident, bytes) else str(ident)
        if class_names is not None:
            label = int(example["label"])
            if not 0 <= label < C:
                raise ValueError(f"{what}: label {label} of record {i} (id {ident!r}) is outside the model's {C} "
                                 f"classes {names}")
            labels[i] = label
        else:
            truth[i] = [float(example[t]) for t in targets]
        ids.append(ident)
        for window in crop.eval_windows(example):
            rows.append(window)
            owners.append(i)
            if len(rows) == batch_size:
                flush()
    flush()
    mean = sums / np.maximum(counts, 1)[:, None]
    if class_names is not None:
        return {"probs": mean, "labels": labels, "ids": ids}
    return {"preds": mean, "targets": truth, "ids": ids}


def concordance(pred, target) -> float:
    """Lin's concordance correlation coefficient of two 1-d arrays (population moments)."""
    mp, mt = pred.mean(), target.mean()
    cov = np.mean((pred - mp) * (target - mt))
    return float(2 * cov / (pred.var() + target.var() + (mp - mt) ** 2 + 1e-12))


def regression_scores(predicted: dict, dimensions) -> dict:
    """Per dimension over its rated clips: ``ccc_<d>``, ``pearson_<d>``, ``mse_<d>``, ``n_<d>``;
    ``ccc`` their mean, ``loss`` = 1 − ``ccc`` (what validation's ``eval.metric=loss`` minimises)."""
    preds, truth = predicted["preds"], predicted["targets"]
    if not len(preds):
        raise ValueError("nothing to evaluate: the split is empty")
    result = {}
    for j, d in enumerate(dimensions):
        ok = np.isfinite(truth[:, j])
        if ok.sum() < 2:
            raise ValueError(f"{d}: {int(ok.sum())} rated clip(s) in this split; a CCC needs at least 2")
        p, t = preds[ok, j], truth[ok, j]
        result |= {f"ccc_{d}": concordance(p, t), f"mse_{d}": float(np.mean((p - t) ** 2)), f"n_{d}": int(ok.sum()),
                   f"pearson_{d}": float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else 0.0}
    result["ccc"] = float(np.mean([result[f"ccc_{d}"] for d in dimensions]))
    result["loss"] = 1 - result["ccc"]
    return result


def scores(predicted: dict, class_names) -> dict:
    """``classify.metrics`` of the argmax of ``predict_source``'s probabilities, plus ``loss`` (mean NLL)."""
    from avpretrain.evaluate import classify

    if not len(predicted["labels"]):
        raise ValueError("nothing to evaluate: the split is empty")
    probs, labels = predicted["probs"], predicted["labels"]
    result = classify.metrics(labels, probs.argmax(1), len(class_names), list(class_names))
    result["loss"] = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
    return result


def data_config(data_dir, folds_file: str = "", fold: int = -1, text_field: str = "captions", text_model: str = "",
                classes=()):
    """A ``config.data`` for ``folds.split_source`` (a dataset's splits, or one fold's; with ``classes``
    only those, relabelled in that order) and ``pipeline.with_text`` (which stored text embeddings a
    model reads)."""
    import ml_collections

    return ml_collections.ConfigDict({"dir": str(data_dir), "folds": str(folds_file or ""), "fold": int(fold),
                                      "text_field": str(text_field), "text_model": str(text_model),
                                      "classes": tuple(classes)})


def model_source(model, data_dir, split: str, folds_file: str = "", fold: int = -1, classes=()):
    """The records of ``split`` of ``data_dir`` (or of a fold) that an exported model (``Predictor``)
    reads: with its transcripts' (or captions') stored embeddings when it reads text, embedded by the
    model's own text model; with ``classes``, only the records of those classes, relabelled in that order."""
    from avpretrain.data import folds

    trained = model.config.data
    data = data_config(data_dir, folds_file, fold, trained.get("text_field", "captions"), trained.get("text_model", ""),
                       classes)
    return pipeline.with_text(data, split, folds.split_source(data, split), model.inputs,
                              what=f"{data_dir} split {split!r}")


def classify(model_dir, data_dir, *, split: str = "test", batch_size: int = 64, png: str | None = None,
             folds_file: str = "", fold: int = -1, title: str = "") -> dict:
    """Evaluates an exported classifier on ``split`` of ``data_dir`` (or of a fold): the metrics of
    ``classify.metrics`` + ``loss``, and a confusion-matrix PNG (default ``<model>/eval/confusion-<split>.png``)."""
    from avpretrain import export
    from avpretrain.data import source as source_lib
    from avpretrain.evaluate import classify as classify_lib

    source_lib.require_single_label(data_dir, "eval classify")
    model = export.load_pretrained(str(model_dir))
    if getattr(model, "task", "classify") != "classify" or not hasattr(model, "class_names"):
        raise ValueError(f"{model_dir} is a {model.config.method!r} export, not a classifier: fine-tune one with "
                         "configs/finetune.py")
    names = list(source_lib.open_builder(data_dir).info.features["label"].names)
    by_name = ()  # the data's labels are the model's: evaluate as stored
    if names != model.class_names:
        missing = [c for c in model.class_names if c not in names]
        if missing:
            raise ValueError(f"{data_dir}: its classes {names} are not the model's {model.class_names} (it has no "
                             f"{missing})")
        by_name = model.class_names  # another corpus: its clips of the model's classes, matched by name
    src = model_source(model, data_dir, split, folds_file, fold, by_name)
    predicted = predict_source(src, model.inputs, model.predict, batch_size=batch_size, class_names=model.class_names,
                               what=f"{data_dir} split {split!r}")
    result = scores(predicted, model.class_names)
    png = pathlib.Path(png) if png else pathlib.Path(model_dir) / "eval" / f"confusion-{split}.png"
    classify_lib.confusion_png(np.asarray(result["confusion"]), model.class_names, png,
                               title=title or f"{pathlib.Path(model_dir).name} on {split} (n={len(predicted['labels'])})")
    other = {"left_out": {"clips": int(getattr(getattr(src, "src", src), "dropped", 0)), "classes": [n for n in names if n not in model.class_names]}} \
        if by_name else {}
    return result | {"model": str(model_dir), "data": str(data_dir), "split": split, "confusion_png": str(png), **other}


def regress(model_dir, data_dir, *, split: str = "test", batch_size: int = 64, folds_file: str = "",
            fold: int = -1, keep_predictions: bool = False) -> dict:
    """Evaluates an exported regression model (``configs/finetune.py:task=regress``) on ``split`` of
    ``data_dir``: ``regression_scores`` per dimension over every window of every clip (and, with
    ``keep_predictions``, ``predictions``: each clip's id, predicted and true ratings, NaN → None)."""
    from avpretrain import export
    from avpretrain.data import source as source_lib

    model = export.load_pretrained(str(model_dir))
    if getattr(model, "task", None) != "regress":
        raise ValueError(f"{model_dir} is not a regression model (fine-tune one with configs/finetune.py:task=regress)")
    features = source_lib.open_builder(data_dir).info.features
    missing = [d for d in model.dimensions if d not in features]
    if missing:
        raise ValueError(f"{data_dir} has no {missing} ratings; the model predicts {model.dimensions}")
    src = model_source(model, data_dir, split, folds_file, fold)
    predicted = predict_source(src, model.inputs, model.predict, batch_size=batch_size, targets=model.dimensions,
                               what=f"{data_dir} split {split!r}")
    result = regression_scores(predicted, model.dimensions) | {
        "model": str(model_dir), "data": str(data_dir), "split": split, "dimensions": list(model.dimensions),
        "clips": len(predicted["ids"])}
    if keep_predictions:
        result["predictions"] = {"ids": predicted["ids"], "preds": predicted["preds"].tolist(),
                                 "targets": [[None if np.isnan(v) else float(v) for v in row]
                                             for row in predicted["targets"]]}
    return result
