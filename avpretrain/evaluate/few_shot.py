"""The few-shot protocol of Chen & Yu (Interspeech 2023) on frozen encoders, every trial batched.

Per speaker, per target emotion, per k in ``SHOTS`` and per trial: a one-vs-rest binary task whose
training set is k clips of that speaker's **train** split (k/2 of the emotion, k/2 of the others,
drawn without replacement, seeded by (seed, speaker, emotion, k, trial)), model selection on the
speaker's **validation** (ESD: evaluation) clips by macro-F1, and accuracy, macro-F1 and
weighted-F1 on the speaker's **test** clips. 20 speakers × 5 emotions × 7 k × 3 trials = 2,100
trials per encoder (33,600 for the paper's 16 encoders).

The head: a linear classifier on the clip's scene embedding (computed once per clip and encoder,
standardised with the train split's statistics), fitted in closed form as a ridge regression on
±1 targets: with k ≤ 64 examples the dual form solves a k×k system, W = Xᵀ(XXᵀ + λI)⁻¹y (X and y
centred on the trial's training set). The strength λ is selected on the validation macro-F1 from
``RIDGE`` (× the mean of diag XXᵀ, largest first: ties keep the stronger). The public code fine-tunes
its task heads instead (and, DESIGN §5, never trains them); a closed-form head is what makes the
whole protocol a few programs: trials are stacked [speakers, emotions × trials]; per k the k×k
solves of all trials are one batched numpy call and the weights, the selection and the scores one
jitted function of the features (no Python loop per trial).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

SHOTS = (2, 4, 8, 16, 24, 32, 64)
RIDGE = (10.0, 1.0, 0.1, 0.01, 0.001)  # × mean(diag XXᵀ); largest first
METRICS = ("accuracy", "macro_f1", "weighted_f1")


@dataclasses.dataclass
class Clips:
    """One encoder's view of a dataset: features [N, D] (float32) and, per clip, its integer label, its
    speaker and its split ("train" / "validation" / "test")."""

    features: np.ndarray
    labels: np.ndarray
    speakers: np.ndarray
    splits: np.ndarray


@dataclasses.dataclass
class Episodes:
    """The trials of one k, stacked [S speakers, M = emotions × trials]: clip indices into ``Clips``.

    ``train`` [S, M, k] and its ±1 targets ``target`` [S, M, k]; each speaker's validation and test
    clips ``val`` [S, V] / ``test`` [S, T] (padded with -1); ``emotion`` [M] the target class of each
    column (emotion-major: column m is emotion m // trials, trial m % trials)."""

    k: int
    speakers: list[str]
    emotion: np.ndarray
    train: np.ndarray
    target: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def episodes(clips: Clips, emotions, k: int, trials: int, seed: int = 0, class_names=None) -> Episodes:
    """The k-shot trials of every speaker and target emotion (clear errors for what cannot be drawn)."""
    if k < 2 or k % 2:
        raise ValueError(f"shots k={k}: k must be even and >= 2 (k/2 positive, k/2 negative)")
    if trials < 1:
        raise ValueError(f"trials={trials}: need at least 1")
    names = class_names or [str(e) for e in range(int(max(emotions)) + 1)]
    speakers = sorted(set(clips.speakers.tolist()))
    train_rows, target_rows, val_rows, test_rows = [], [], [], []
    for s_i, s in enumerate(speakers):
        mine = clips.speakers == s
        pools = {split: np.flatnonzero(mine & (clips.splits == split)) for split in ("train", "validation", "test")}
        for split in ("validation", "test"):
            if not len(pools[split]):
                raise ValueError(f"speaker {s!r} has no {split} clips: the protocol selects on each speaker's "
                                 "validation clips and scores on their test clips")
        val_rows.append(pools["validation"])
        test_rows.append(pools["test"])
        train_labels = clips.labels[pools["train"]]
        idx, tgt = [], []
        for e_i, e in enumerate(emotions):
            pos, neg = pools["train"][train_labels == e], pools["train"][train_labels != e]
            for what, pool in (("of", pos), ("other than", neg)):
                if len(pool) < k // 2:
                    raise ValueError(f"speaker {s!r}: {len(pool)} train clips {what} {names[e]!r}, fewer than the "
                                     f"{k // 2} that k={k} shots need; lower --shots")
            for t in range(trials):
                rng = np.random.default_rng([seed, s_i, int(e), k, t])
                idx.append(np.concatenate([rng.choice(pos, k // 2, replace=False),
                                           rng.choice(neg, k // 2, replace=False)]))
                tgt.append(np.r_[np.ones(k // 2), -np.ones(k // 2)])
        train_rows.append(np.stack(idx))
        target_rows.append(np.stack(tgt))
    return Episodes(k=k, speakers=speakers, emotion=np.repeat(np.asarray(emotions), trials),
                    train=np.stack(train_rows), target=np.stack(target_rows).astype(np.float32),
                    val=_padded(val_rows), test=_padded(test_rows))


def binary_scores(pred, truth, mask):
    """(accuracy, macro-F1, weighted-F1) over the masked entries of the last axis; pred, truth bool."""
    w = mask.astype(jnp.float32)
    tp, tn, fp, fn = (((a & b) * w).sum(-1) for a, b in ((pred, truth), (~pred, ~truth), (pred, ~truth), (~pred, truth)))
    n, n_pos = w.sum(-1), (truth * w).sum(-1)
    f1_pos = 2 * tp / jnp.maximum(2 * tp + fp + fn, 1e-9)
    f1_neg = 2 * tn / jnp.maximum(2 * tn + fn + fp, 1e-9)
    accuracy = (tp + tn) / jnp.maximum(n, 1)
    macro = (f1_pos + f1_neg) / 2
    weighted = (n_pos * f1_pos + (n - n_pos) * f1_neg) / jnp.maximum(n, 1)
    return accuracy, macro, weighted


def ridge_duals(x_train, y_train) -> tuple[np.ndarray, ...]:
    """The trials' ridge fits in the dual, on the host: (alpha [L, S, M, k] for each λ of ``RIDGE``,
    the training means mu [S, M, D] and y_mean [S, M]). x_train [S, M, k, D], y_train [S, M, k] (±1).

    The k×k systems are tiny and solved by numpy's LAPACK: inside an XLA:CPU program the batched
    solve hung now and then (idle, never returning) on this machine, at the protocol's shapes."""
    x = np.asarray(x_train, np.float64)
    mu = x.mean(2)
    xc = x - mu[:, :, None]
    y_mean = y_train.mean(2)
    gram = xc @ xc.swapaxes(-1, -2)                                    # [S, M, k, k]
    scale = np.trace(gram, axis1=-2, axis2=-1)[..., None, None] / gram.shape[-1] + 1e-6
    eye = np.eye(gram.shape[-1])
    yc = (y_train - y_mean[..., None])[..., None]
    alpha = np.stack([np.linalg.solve(gram + lam * scale * eye, yc)[..., 0] for lam in RIDGE])
    return alpha.astype(np.float32), mu.astype(np.float32), y_mean.astype(np.float32)


@jax.jit
def _select_score(alpha, x_train, mu, y_mean, x_val, val_ok, val_truth, x_test, test_ok, test_truth):
    """All trials of one k at once: the weights of every λ (W = Xcᵀα), the λ with the best validation
    macro-F1 (the first maximum: the strongest of tied ones), and its test (accuracy, macro-F1,
    weighted-F1) [S, M] each, and the selected index [S, M]. x_val [S, V, D] with val_ok [S, V] and
    val_truth [S, M, V] (bool: the clip is the column's emotion); the same for test."""
    xc = x_train - mu[:, :, None]
    ws = jnp.einsum("lsmk,smkd->lsmd", alpha, xc)                      # [L, S, M, D]
    bias = y_mean[None] - jnp.einsum("lsmd,smd->lsm", ws, mu)

    def decide(w, b, x):  # [S, M, D], [S, M], [S, N, D] → bool [S, M, N]
        return jnp.einsum("smd,snd->smn", w, x) + b[..., None] > 0

    val_macro = jnp.stack([binary_scores(decide(ws[i], bias[i], x_val), val_truth, val_ok[:, None])[1]
                           for i in range(len(RIDGE))])
    best = jnp.argmax(val_macro, axis=0)
    w_best = jnp.take_along_axis(ws, best[None, ..., None], axis=0)[0]
    b_best = jnp.take_along_axis(bias, best[None], axis=0)[0]
    return binary_scores(decide(w_best, b_best, x_test), test_truth, test_ok[:, None]), best


def run_k(clips: Clips, ep: Episodes) -> dict:
    """Fits, selects and scores every trial of ``ep``: per-trial test metrics [S, M] and the selected λ."""
    # gathers on the host, the k×k solves too (ridge_duals); one device program per k for the rest
    feats, labels = np.asarray(clips.features, np.float32), np.asarray(clips.labels)
    val, test = np.maximum(ep.val, 0), np.maximum(ep.test, 0)
    x_train = feats[ep.train]
    alpha, mu, y_mean = ridge_duals(x_train, ep.target)
    (acc, macro, weighted), best = _select_score(
        alpha, x_train, mu, y_mean, feats[val], ep.val >= 0, labels[val][:, None, :] == ep.emotion[None, :, None],
        feats[test], ep.test >= 0, labels[test][:, None, :] == ep.emotion[None, :, None])
    return {"accuracy": np.asarray(acc), "macro_f1": np.asarray(macro), "weighted_f1": np.asarray(weighted),
            "ridge": np.asarray(RIDGE)[np.asarray(best)]}


def standardize(features: np.ndarray, train_mask: np.ndarray) -> np.ndarray:
    """Features standardised with the train split's mean and std (no labels read)."""
    mean = features[train_mask].mean(0)
    std = features[train_mask].std(0) + 1e-6
    return ((features - mean) / std).astype(np.float32)


def protocol(clips: Clips, emotions, *, shots=SHOTS, trials: int = 3, seed: int = 0, class_names=None) -> dict:
    """Every k of ``shots``: per-k means (and population std over trials) of the test metrics, and the
    per-trial figures [S, M]."""
    clips = dataclasses.replace(clips, features=standardize(clips.features, clips.splits == "train"))
    out = {}
    for k in shots:
        ep = episodes(clips, emotions, k, trials, seed, class_names)
        r = run_k(clips, ep)
        out[int(k)] = {"trials": int(r["macro_f1"].size), "per_trial": {m: r[m].tolist() for m in METRICS},
                       "ridge": r["ridge"].tolist(), "speakers": ep.speakers,
                       **{m: float(r[m].mean()) for m in METRICS},
                       **{f"{m}_std": float(r[m].std()) for m in METRICS}}
    return out


# -- the command --------------------------------------------------------------------------------
def dataset_clips(data_dir) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(waveforms, labels, speakers, splits, class names) of every clip of the train, validation and test splits."""
    from avpretrain.data import pipeline, source as source_lib

    source_lib.require_single_label(data_dir, "eval few-shot")
    meta = source_lib.dataset_meta(data_dir)
    missing = [s for s in ("train", "validation", "test") if s not in meta.num_examples]
    if missing:
        raise ValueError(f"{data_dir} has no {missing} split(s) (it has {sorted(meta.num_examples)}): the few-shot "
                         "protocol draws shots from each speaker's train clips, selects on validation, scores on test")
    waves, labels, speakers, splits = [], [], [], []
    for split in ("train", "validation", "test"):
        src = source_lib.data_source(data_dir, split)
        for i in range(len(src)):
            ex = src[i]
            speaker = ex.get("speaker", b"")
            speaker = speaker.decode() if isinstance(speaker, bytes) else str(speaker)
            if not speaker:
                raise ValueError(f"{data_dir}: record {i} of split {split!r} has no speaker; the protocol is per speaker")
            waves.append(np.asarray(ex["audio"], np.float32) * pipeline.INT16_SCALE)
            labels.append(int(ex["label"]))
            speakers.append(speaker)
            splits.append(split)
    return waves, np.asarray(labels), np.asarray(speakers), np.asarray(splits), list(meta.label_names)


def evaluate(models, data_dir, *, shots=SHOTS, trials: int = 3, seed: int = 0, emotions=None,
             batch_size: int = 64, png=None) -> dict:
    """The protocol for each exported encoder in ``models`` on ``data_dir``; per model and k the mean
    test metrics, and ``mean``: per k the mean over the models."""
    from avpretrain import export

    waves, labels, speakers, splits, names = dataset_clips(data_dir)
    if emotions:
        unknown = [e for e in emotions if e not in names]
        if unknown:
            raise ValueError(f"--emotions {unknown}: not classes of {data_dir} ({names})")
        targets = [names.index(e) for e in emotions]
    else:  # every class present in train, but not a clip without a category
        targets = [c for c in sorted(set(labels[splits == "train"].tolist())) if names[c] != "unlabeled"]
    result = {"data": str(data_dir), "shots": [int(k) for k in shots], "trials": int(trials), "seed": int(seed),
              "emotions": [names[e] for e in targets], "speakers": sorted(set(speakers.tolist())), "models": {}}
    for path in models:
        encoder = export.load_pretrained(str(path))
        if not hasattr(encoder, "scene_embeddings"):
            raise ValueError(f"{path} is a {encoder.config.method!r} export: the protocol reads an encoder's scene "
                             "embeddings (M2D family)")
        clips = Clips(encoder.scene_embeddings(waves, batch_size=batch_size), labels, speakers, splits)
        result["models"][str(path)] = protocol(clips, targets, shots=shots, trials=trials, seed=seed, class_names=names)
    n_trials = sum(v["trials"] for per_k in result["models"].values() for v in per_k.values())
    result["num_trials"] = n_trials
    result["mean"] = {int(k): {m: float(np.mean([per_k[int(k)][m] for per_k in result["models"].values()]))
                               for m in METRICS} for k in shots}
    if png:
        plot(result, png)
        result["png"] = str(png)
    return result


def plot(result: dict, path) -> None:
    import pathlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    shots = result["shots"]
    for name, per_k in result["models"].items():
        ax.errorbar(shots, [per_k[k]["macro_f1"] for k in shots], yerr=[per_k[k]["macro_f1_std"] for k in shots],
                    marker="o", capsize=3, label=pathlib.Path(name).name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set(xlabel="shots k", ylabel="test macro-F1 (mean ± std over trials)",
           title=f"few-shot one-vs-rest, {len(result['speakers'])} speakers × {len(result['emotions'])} emotions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
