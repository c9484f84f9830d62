"""Multi-class classification metrics, their text report and a confusion-matrix plot (numpy, host side).

Definitions (C classes, N examples; a class is *present* when its support, its count in y_true, is > 0):
  confusion[t, p]  examples of true class t predicted as p (rows = true, columns = predicted).
  precision_c      tp_c / predicted_c, 0.0 when c is never predicted (sklearn's zero_division=0).
  recall_c         tp_c / support_c; None (undefined) for an absent class.
  f1_c             2·P·R / (P + R), 0.0 when P + R = 0; None for an absent class.
  accuracy = war   Σ tp / N (= support-weighted mean recall).
  uar, macro_f1    unweighted means of recall / f1 over the present classes only.
  weighted_f1      support-weighted mean f1 (absent classes have weight 0).
These match sklearn's balanced_accuracy_score and f1_score(average="macro"|"weighted", labels=present classes).
"""
from __future__ import annotations

import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SUMMARY_KEYS = ("accuracy", "uar", "war", "macro_f1", "weighted_f1")


def _check_labels(what: str, y, num_classes: int) -> np.ndarray:
    """y as an int64 array [N] after checking dtype and range; errors name the first bad value and position."""
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{what} {int(y[i])} at position {i} is outside the {num_classes} classes [0, {num_classes})")
    return y.astype(np.int64)


def metrics(y_true, y_pred, num_classes: int, class_names: list[str] | None = None) -> dict:
    """Confusion matrix, per-class precision/recall/f1 and accuracy (= WAR), UAR, macro/weighted F1.

    y_true, y_pred: integer class indices [N] in [0, num_classes). Returns a JSON-serialisable dict.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    num_classes = int(num_classes)
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
    y_true_N, y_pred_N = np.asarray(y_true), np.asarray(y_pred)
    for what, y in (("y_true", y_true_N), ("y_pred", y_pred_N)):
        if y.ndim != 1:
            raise ValueError(f"{what} must be 1-D [N], got shape {y.shape}")
    if len(y_true_N) != len(y_pred_N):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true_N)} labels vs {len(y_pred_N)} predictions")
    if len(y_true_N) == 0:
        raise ValueError("y_true and y_pred are empty: need at least one example")
    for what, y in (("y_true", y_true_N), ("y_pred", y_pred_N)):
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{what} must hold integer class indices, got dtype {y.dtype}")
    y_true_N = _check_labels("label", y_true_N, num_classes)
    y_pred_N = _check_labels("prediction", y_pred_N, num_classes)

    n = len(y_true_N)
    confusion_CC = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion_CC, (y_true_N, y_pred_N), 1)
    tp_C = np.diag(confusion_CC).astype(np.float64)
    support_C = confusion_CC.sum(axis=1)
    predicted_C = confusion_CC.sum(axis=0)
    present_C = support_C > 0

    precision_C = np.where(predicted_C > 0, tp_C / np.maximum(predicted_C, 1), 0.0)
    recall_C = np.where(present_C, tp_C / np.maximum(support_C, 1), np.nan)
    denom_C = precision_C + recall_C
    f1_C = np.where(denom_C > 0, 2 * precision_C * recall_C / np.where(denom_C > 0, denom_C, 1.0), 0.0)
    f1_C = np.where(present_C, f1_C, np.nan)

    accuracy = float(tp_C.sum() / n)
    per_class = [{"name": class_names[c], "support": int(support_C[c]), "precision": float(precision_C[c]),
                  "recall": float(recall_C[c]) if present_C[c] else None,
                  "f1": float(f1_C[c]) if present_C[c] else None}
                 for c in range(num_classes)]
    return {
        "accuracy": accuracy,
        "war": accuracy,
        "uar": float(recall_C[present_C].mean()),
        "macro_f1": float(f1_C[present_C].mean()),
        "weighted_f1": float((f1_C[present_C] * support_C[present_C]).sum() / n),
        "num_examples": n,
        "confusion": confusion_CC.tolist(),
        "per_class": per_class,
        "class_names": class_names,
        "missing_classes": [class_names[c] for c in range(num_classes) if not present_C[c]],
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_report(result: dict) -> list[str]:
    """Per-class table (n/a for undefined values), then the one-line summary `classify accuracy=... weighted-f1=...`."""
    width = max([len("class")] + [len(row["name"]) for row in result["per_class"]])
    lines = [f"{'class':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>7}  {'f1':>7}"]
    for row in result["per_class"]:
        lines.append(f"{row['name']:<{width}}  {row['support']:>7d}  {_fmt(row['precision']):>9}  "
                     f"{_fmt(row['recall']):>7}  {_fmt(row['f1']):>7}")
    if result["missing_classes"]:
        lines.append("classes absent from y_true (excluded from uar / macro-f1): "
                     + ", ".join(result["missing_classes"]))
    lines.append(f"classify accuracy={result['accuracy']:.4f} uar={result['uar']:.4f} war={result['war']:.4f} "
                 f"macro-f1={result['macro_f1']:.4f} weighted-f1={result['weighted_f1']:.4f}")
    return lines


def _check_confusion(confusion, class_names):
    confusion_CC = np.asarray(confusion)
    if confusion_CC.ndim != 2 or confusion_CC.shape[0] != confusion_CC.shape[1] or not confusion_CC.size:
        raise ValueError(f"confusion must be a non-empty square [C, C] matrix, got shape {confusion_CC.shape}")
    c = confusion_CC.shape[0]
    names = [str(i) for i in range(c)] if class_names is None else [str(name) for name in class_names]
    if len(names) != c:
        raise ValueError(f"got {len(names)} class names for a {c}x{c} confusion matrix")
    return confusion_CC, names


def plot_confusion(ax, confusion, class_names, title: str = ""):
    """Draw the row-normalised confusion heat map on `ax`; each cell shows its count and its row percentage."""
    confusion_CC, names = _check_confusion(confusion, class_names)
    c = len(names)
    rows_C1 = confusion_CC.sum(axis=1, keepdims=True)
    frac_CC = confusion_CC / np.maximum(rows_C1, 1)  # an absent class's row stays 0
    image = ax.imshow(frac_CC, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(c), names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center")
    ax.set_yticks(range(c), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if c <= 30:
        fontsize = 9 if c <= 8 else 7 if c <= 15 else 5
        for t in range(c):
            for p in range(c):
                ax.text(p, t, f"{int(confusion_CC[t, p])}\n{100 * frac_CC[t, p]:.0f}%", ha="center", va="center",
                        fontsize=fontsize, color="white" if frac_CC[t, p] > 0.5 else "black")
    return ax


def confusion_png(confusion, class_names, path, title: str = "") -> pathlib.Path:
    """Save the confusion heat map (plot_confusion) as a PNG at `path`, creating parent folders; returns the path."""
    confusion_CC, names = _check_confusion(confusion, class_names)
    side = max(4.5, 0.6 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    try:
        plot_confusion(ax, confusion_CC, names, title)
        fig.tight_layout()
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def summarize_folds(results: list[dict]) -> dict:
    """Mean and population std (ddof=0) over K folds' metrics() dicts: {key: {"mean", "std"}, ..., "folds": K}."""
    if not results:
        raise ValueError("summarize_folds needs at least one fold's metrics")
    summary = {}
    for key in SUMMARY_KEYS:
        values_K = np.array([float(r[key]) for r in results], np.float64)
        summary[key] = {"mean": float(values_K.mean()), "std": float(values_K.std())}
    summary["folds"] = len(results)
    return summary


def format_kfold_line(summary: dict) -> str:
    """`kfold folds=K accuracy=mean±std uar=mean±std macro-f1=mean±std`, 4 decimals."""
    parts = [f"{label}={summary[key]['mean']:.4f}±{summary[key]['std']:.4f}"
             for label, key in (("accuracy", "accuracy"), ("uar", "uar"), ("macro-f1", "macro_f1"))]
    return f"kfold folds={summary['folds']} " + " ".join(parts)
