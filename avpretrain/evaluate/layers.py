"""Layer analysis: which encoder layer carries what (``avpretrain eval layers``).

Every clip of a dataset's splits → each encoder block's hidden states averaged over the clip
(``PretrainedEncoder.layer_embeddings``, frozen) → per layer a linear probe: ridge regression in
closed form on standardised features (the ridge strength chosen on the validation split; without
one, on the last 20 % of train), scored on ``split``:

- ``task="regress"``: one probe per rated dimension (arousal, valence, dominance of an emotion
  corpus), CCC on the test split;
- ``task="classify"``: a ridge classifier (one-hot targets, argmax), UAR and accuracy.

Writes a PNG of the metric per layer (one line per dimension) and a JSON of every figure.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from avpretrain.data import pipeline

RIDGE = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # × the number of training clips


def _split_arrays(data_dir, split: str, fields) -> tuple[list[np.ndarray], dict]:
    from avpretrain.data import source as source_lib

    src = source_lib.data_source(data_dir, split)
    waves, values = [], {f: [] for f in fields}
    for i in range(len(src)):
        ex = src[i]
        waves.append(np.asarray(ex["audio"], np.float32) * pipeline.INT16_SCALE)
        for f in fields:
            values[f].append(float(ex[f]))
    return waves, {f: np.asarray(v) for f, v in values.items()}


def ridge(X, Y, lam: float):
    """Weights [D+1, K] of ridge regression of Y [N, K] on X [N, D] (the bias unpenalised: X is centred)."""
    mean = X.mean(0)
    Xc = X - mean
    W = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ (Y - Y.mean(0)))
    return np.vstack([Y.mean(0) - mean @ W, W])


def _predict(W, X):
    return W[0] + X @ W[1:]


def _uar(true, pred, classes) -> float:
    present = [c for c in range(classes) if (true == c).any()]
    return float(np.mean([(pred[true == c] == c).mean() for c in present]))


def analyse(model_dir, data_dir, *, task: str, split: str = "test", batch_size: int = 64, out=None) -> dict:
    """The per-layer probes of ``model_dir`` on ``data_dir``; returns (and writes) the figures."""
    from avpretrain import export
    from avpretrain.data import source as source_lib
    from avpretrain.evaluate import supervised

    if task not in ("regress", "classify"):
        raise ValueError(f"task={task!r}: choose regress or classify")
    if split in ("train", "validation"):
        raise ValueError(f"--split {split}: the probes are fitted on train and tuned on validation; score on test")
    model = export.load_pretrained(str(model_dir))
    if not hasattr(model, "layer_embeddings"):
        raise ValueError(f"{model_dir} is a {model.config.method!r} export: the layer analysis reads an M2D-family "
                         "encoder's blocks")
    info = source_lib.open_builder(data_dir).info
    splits = set(source_lib.dataset_meta(data_dir).num_examples)
    for needed in ("train", split):
        if needed not in splits:
            raise ValueError(f"{data_dir} has no {needed!r} split (it has {sorted(splits)})")
    if task == "regress":
        fields = [d for d in pipeline.DIMENSION_FIELDS if d in info.features]
        if not fields:
            raise ValueError(f"{data_dir} has no ratings ({', '.join(pipeline.DIMENSION_FIELDS)}); use --task classify")
    else:
        source_lib.require_single_label(data_dir, "eval layers --task classify")
        fields, class_names = ["label"], list(info.features["label"].names)

    data = {}
    for s in ["train", split] + (["validation"] if "validation" in splits else []):
        waves, values = _split_arrays(data_dir, s, fields)
        data[s] = (model.layer_embeddings(waves, batch_size=batch_size), values)
    Xtr, ytr = data["train"]
    if "validation" in data:
        Xva, yva = data["validation"]
    else:  # the last 20 % of train tunes the ridge strength
        cut = int(0.8 * len(Xtr))
        Xtr, Xva = Xtr[:cut], Xtr[cut:]
        ytr, yva = {f: v[:cut] for f, v in ytr.items()}, {f: v[cut:] for f, v in ytr.items()}
    Xte, yte = data[split]
    layers = Xtr.shape[1]
    scores = {}
    for layer in range(layers):
        mu, sd = Xtr[:, layer].mean(0), Xtr[:, layer].std(0) + 1e-6
        tr, va, te = ((X[:, layer] - mu) / sd for X in (Xtr, Xva, Xte))
        if task == "regress":
            for d in fields:
                ok_tr, ok_va, ok_te = (np.isfinite(y[d]) for y in (ytr, yva, yte))
                if ok_tr.sum() < 2 or ok_va.sum() < 2 or ok_te.sum() < 2:
                    continue
                fits = [ridge(tr[ok_tr], ytr[d][ok_tr, None], lam * ok_tr.sum()) for lam in RIDGE]
                best = max(fits, key=lambda W: supervised.concordance(_predict(W, va[ok_va])[:, 0], yva[d][ok_va]))
                scores.setdefault(d, []).append(supervised.concordance(_predict(best, te[ok_te])[:, 0], yte[d][ok_te]))
        else:
            C = len(class_names)
            onehot = np.eye(C)[ytr["label"].astype(int)]
            fits = [ridge(tr, onehot, lam * len(tr)) for lam in RIDGE]
            best = max(fits, key=lambda W: _uar(yva["label"].astype(int), _predict(W, va).argmax(1), C))
            pred = _predict(best, te).argmax(1)
            scores.setdefault("uar", []).append(_uar(yte["label"].astype(int), pred, C))
            scores.setdefault("accuracy", []).append(float((pred == yte["label"].astype(int)).mean()))
    if not scores:
        raise ValueError(f"{data_dir}: no dimension has at least 2 ratings in train, validation and {split}")
    metric = "ccc" if task == "regress" else "uar"
    result = {"task": task, "metric": metric, "layers": layers, "split": split, "model": str(model_dir),
              "data": str(data_dir), "clips": {s: len(v[0]) for s, v in data.items()},
              "per_layer": {k: [float(x) for x in v] for k, v in scores.items()},
              "best": {k: {"layer": int(np.argmax(v)) + 1, "value": float(np.max(v))} for k, v in scores.items()}}
    out = pathlib.Path(out) if out else pathlib.Path(model_dir) / "eval" / f"layers-{task}-{split}"
    out.parent.mkdir(parents=True, exist_ok=True)
    _plot(result, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return result | {"png": str(out.with_suffix(".png")), "json": str(out.with_suffix(".json"))}


def _plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers = np.arange(1, result["layers"] + 1)
    for name, values in result["per_layer"].items():
        ax.plot(layers, values, marker="o", label=name)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel(f"test {result['metric'].upper()}" if result["task"] == "regress" else "test score")
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{pathlib.Path(result['model']).name}: linear probe per layer ({result['task']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
