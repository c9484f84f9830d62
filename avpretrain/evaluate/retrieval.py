"""Zero-shot classification and audio-text retrieval metrics (numpy, host side).

Similarities are cosine: both sides are L2-normalised. Rankings use a stable sort of the
negated scores, so exact ties are broken by the lower index first.

Shapes: N audios, M captions, C classes, D embedding width.
"""
from __future__ import annotations

import numpy as np

RETRIEVAL_KEYS = ("a2t_R@1", "a2t_R@5", "a2t_R@10", "t2a_R@1", "t2a_R@5", "t2a_R@10", "mAP@10")


def _l2n(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cosine(name_a, a, name_b, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must be 2-D with the same width, "
                         f"got {a.shape} and {b.shape}")
    if not len(a) or not len(b):
        raise ValueError(f"{name_a} and {name_b} must be non-empty, got {a.shape} and {b.shape}")
    return _l2n(a) @ _l2n(b).T


def _rank_desc(scores):
    """Column indices of each row, highest score first (stable: ties → lower index first)."""
    return np.argsort(-scores, axis=-1, kind="stable")


def average_precision(scores_NC, multi_hot_NC) -> np.ndarray:
    """Per class, the average precision of ranking the N examples by score: [C], NaN for a class
    without positives.

    AP = Σ_{positives at rank r} precision@r / #positives (non-interpolated, as sklearn's
    ``average_precision_score`` without ties; tied scores keep the lower index first).
    ``multi_hot_NC``: > 0 marks a positive (bool, 0/1 ints or floats).
    """
    scores_NC, multi_hot_NC = np.asarray(scores_NC), np.asarray(multi_hot_NC)
    if scores_NC.ndim != 2 or multi_hot_NC.shape != scores_NC.shape:
        raise ValueError(f"scores_NC and multi_hot_NC must both be [N, C], got {scores_NC.shape} and "
                         f"{multi_hot_NC.shape}")
    if not np.all(np.isfinite(scores_NC)):
        raise ValueError("scores_NC contains NaN or inf")
    order_NC = np.argsort(-scores_NC, axis=0, kind="stable")
    positive_NC = np.take_along_axis(multi_hot_NC > 0, order_NC, axis=0)
    precision_NC = np.cumsum(positive_NC, axis=0) / np.arange(1, len(positive_NC) + 1)[:, None]
    num_pos_C = positive_NC.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_pos_C > 0, (precision_NC * positive_NC).sum(axis=0) / num_pos_C, np.nan)


def mean_average_precision(scores_NC, multi_hot_NC) -> float:
    """mAP: the mean of ``average_precision`` over the classes with at least one positive (classes
    without are left out: count them with ``(multi_hot_NC > 0).any(0)``). The one mAP of the zero-shot
    and linear-probe evaluations; no positive at all is a ValueError."""
    ap_C = average_precision(scores_NC, multi_hot_NC)
    if np.isnan(ap_C).all():
        raise ValueError("multi_hot_NC has no positive in any class: mAP is undefined")
    return float(np.nanmean(ap_C))


def zero_shot_accuracy(audio_emb_ND, class_text_emb_CD, labels_N) -> float:
    """Fraction of audios whose most cosine-similar class text embedding is the label."""
    sim_NC = _cosine("audio_emb_ND", audio_emb_ND, "class_text_emb_CD", class_text_emb_CD)
    labels_N = np.asarray(labels_N)
    if labels_N.shape != (sim_NC.shape[0],) or not np.issubdtype(labels_N.dtype, np.integer):
        raise ValueError(f"labels_N must be [N={sim_NC.shape[0]}] integers, got {labels_N.shape} {labels_N.dtype}")
    if labels_N.min() < 0 or labels_N.max() >= sim_NC.shape[1]:
        raise ValueError(f"labels_N must lie in [0, {sim_NC.shape[1]}), got [{labels_N.min()}, {labels_N.max()}]")
    return float(np.mean(np.argmax(sim_NC, axis=1) == labels_N))


def zero_shot_map(audio_emb_ND, class_text_emb_CD, multi_hot_NC) -> float:
    """``mean_average_precision`` of the cosine scores (multi-label zero-shot): per class the audios
    are ranked by cosine similarity to the class text embedding; classes without positives are skipped.
    """
    sim_NC = _cosine("audio_emb_ND", audio_emb_ND, "class_text_emb_CD", class_text_emb_CD)
    multi_hot_NC = np.asarray(multi_hot_NC)
    if multi_hot_NC.shape != sim_NC.shape:
        raise ValueError(f"multi_hot_NC must be [N, C] = {sim_NC.shape}, got {multi_hot_NC.shape}")
    return mean_average_precision(sim_NC, multi_hot_NC)


def zero_shot_top1_hit(audio_emb_ND, class_text_emb_CD, multi_hot_NC) -> float:
    """Multi-label zero-shot: the fraction of the audios with at least one positive whose most
    cosine-similar class text embedding is one of their positives (audios without are left out)."""
    sim_NC = _cosine("audio_emb_ND", audio_emb_ND, "class_text_emb_CD", class_text_emb_CD)
    positive_NC = np.asarray(multi_hot_NC) > 0
    if positive_NC.shape != sim_NC.shape:
        raise ValueError(f"multi_hot_NC must be [N, C] = {sim_NC.shape}, got {positive_NC.shape}")
    labelled_N = positive_NC.any(axis=1)
    if not labelled_N.any():
        raise ValueError("multi_hot_NC has no positive in any class")
    hit_N = positive_NC[np.arange(len(sim_NC)), np.argmax(sim_NC, axis=1)]
    return float(hit_N[labelled_N].mean())


def retrieval_metrics(audio_emb_ND, text_emb_MD, text_to_audio_M) -> dict:
    """Audio↔text retrieval where each audio may have several captions.

    ``text_to_audio_M[m]`` is the index of caption m's audio. Scores are cosine similarities.

    - a2t R@k: fraction of audios with at least one of their captions among the top-k captions.
    - t2a R@k: fraction of captions whose audio is among the top-k audios.
    - mAP@10 (a2t, the DCASE AudioCaps/Clotho convention): for each audio, rank all captions and
      AP@10 = Σ_{r ≤ 10, caption at rank r is relevant} precision@r / min(#relevant, 10),
      where precision@r = (#relevant in the top r) / r; averaged over audios.

    a2t metrics average over the audios that have at least one caption (audios without any only
    act as distractors for t2a). Keys: ``RETRIEVAL_KEYS``; values are floats in [0, 1].
    """
    sim_NM = _cosine("audio_emb_ND", audio_emb_ND, "text_emb_MD", text_emb_MD)
    n, m = sim_NM.shape
    t2a_M = np.asarray(text_to_audio_M)
    if t2a_M.shape != (m,) or not np.issubdtype(t2a_M.dtype, np.integer):
        raise ValueError(f"text_to_audio_M must be [M={m}] integers, got {t2a_M.shape} {t2a_M.dtype}")
    if t2a_M.min() < 0 or t2a_M.max() >= n:
        raise ValueError(f"text_to_audio_M must lie in [0, {n}), got [{t2a_M.min()}, {t2a_M.max()}]")
    relevant_NM = t2a_M[None, :] == np.arange(n)[:, None]
    num_rel_N = relevant_NM.sum(1)
    has_caption = num_rel_N > 0

    # audio → text
    order_NM = _rank_desc(sim_NM)
    rel_ranked_NM = np.take_along_axis(relevant_NM, order_NM, axis=1)[has_caption]
    first_hit_N = np.argmax(rel_ranked_NM, axis=1)  # 0-based rank of the best relevant caption
    out = {f"a2t_R@{k}": float(np.mean(first_hit_N < k)) for k in (1, 5, 10)}
    top = rel_ranked_NM[:, :10]
    prec = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    ap10_N = (prec * top).sum(1) / np.minimum(num_rel_N[has_caption], 10)

    # text → audio
    order_MN = _rank_desc(sim_NM.T)
    rank_M = np.argmax(order_MN == t2a_M[:, None], axis=1)
    out.update({f"t2a_R@{k}": float(np.mean(rank_M < k)) for k in (1, 5, 10)})
    out["mAP@10"] = float(np.mean(ap10_N))
    return {k: out[k] for k in RETRIEVAL_KEYS}


def format_retrieval_line(metrics) -> str:
    """``retrieval a2t R@1=… R@5=… R@10=… t2a R@1=… R@5=… R@10=… mAP@10=…`` (4 decimals)."""
    a2t = " ".join(f"R@{k}={metrics[f'a2t_R@{k}']:.4f}" for k in (1, 5, 10))
    t2a = " ".join(f"R@{k}={metrics[f't2a_R@{k}']:.4f}" for k in (1, 5, 10))
    return f"retrieval a2t {a2t} t2a {t2a} mAP@10={metrics['mAP@10']:.4f}"
