"""Zero-shot and retrieval metrics on small designed cases with hand-computed answers."""
import numpy as np
import pytest

from avpretrain.evaluate import retrieval as R


def embed_similarity(S_NM):
    """Embeddings whose cosine-similarity matrix is exactly S_NM (columns of norm ≤ 1).

    audio n = e_n in N+1 dims; item m = [S[:, m], sqrt(1 - |S[:, m]|²)] (unit norm).
    """
    S = np.asarray(S_NM, np.float64)
    n, _ = S.shape
    audio = np.eye(n, n + 1)
    other = np.concatenate([S.T, np.sqrt(1 - (S ** 2).sum(0))[:, None]], axis=1)
    np.testing.assert_allclose(R._l2n(audio) @ R._l2n(other).T, S, atol=1e-12)
    return audio, other


# 3 audios x 5 captions; captions 0,1 → audio 0, captions 2,3 → audio 1, caption 4 → audio 2.
S3x5 = [[0.50, 0.10, 0.40, 0.20, 0.30],
        [0.30, 0.20, 0.10, 0.45, 0.50],
        [0.20, 0.35, 0.30, 0.40, 0.15]]
T2A_3x5 = [0, 0, 1, 1, 2]


def test_retrieval_small_multi_caption_case():
    audio, text = embed_similarity(S3x5)
    m = R.retrieval_metrics(audio, text, T2A_3x5)
    assert list(m) == list(R.RETRIEVAL_KEYS)
    # a2t rankings:  a0: c0 c2 c4 c3 c1 (relevant c0, c1 → ranks 1, 5)
    #                a1: c4 c3 c0 c1 c2 (relevant c2, c3 → ranks 5, 2)
    #                a2: c3 c1 c2 c0 c4 (relevant c4    → rank 5)
    assert m["a2t_R@1"] == pytest.approx(1 / 3)
    assert m["a2t_R@5"] == 1.0 and m["a2t_R@10"] == 1.0
    # AP@10: a0 (1/1 + 2/5)/2 = 0.7; a1 (1/2 + 2/5)/2 = 0.45; a2 (1/5)/1 = 0.2
    assert m["mAP@10"] == pytest.approx((0.7 + 0.45 + 0.2) / 3)
    # t2a rank of the true audio: c0 1, c1 3, c2 3, c3 1, c4 3
    assert m["t2a_R@1"] == pytest.approx(2 / 5)
    assert m["t2a_R@5"] == 1.0 and m["t2a_R@10"] == 1.0


def test_retrieval_r5_vs_r10_and_map_cap_at_10():
    # 2 audios x 14 captions: captions 0..10 → audio 0 (11 relevant: AP divides by min(11, 10)),
    # captions 11..13 → audio 1. Scores follow a designed ranking per audio.
    rank_a0 = [11, 0, 1, 12, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]
    rank_a1 = [0, 1, 2, 3, 4, 5, 11, 6, 12, 7, 8, 9, 10, 13]
    S = np.zeros((2, 14))
    S[0, rank_a0] = 0.60 - 0.02 * np.arange(14)
    S[1, rank_a1] = 0.55 - 0.03 * np.arange(14)
    audio, text = embed_similarity(S)
    m = R.retrieval_metrics(audio, text, [0] * 11 + [1] * 3)
    # a0: first relevant at rank 2; a1: first relevant at rank 7
    assert m["a2t_R@1"] == 0.0 and m["a2t_R@5"] == 0.5 and m["a2t_R@10"] == 1.0
    # a0 top 10: irr rel rel irr rel rel rel rel rel rel → hits at ranks 2,3,5,6,7,8,9,10, / 10
    ap0 = (1 / 2 + 2 / 3 + 3 / 5 + 4 / 6 + 5 / 7 + 6 / 8 + 7 / 9 + 8 / 10) / 10
    # a1 top 10: hits at ranks 7 and 9 (the third relevant caption is at 14), / min(3, 10)
    ap1 = (1 / 7 + 2 / 9) / 3
    assert m["mAP@10"] == pytest.approx((ap0 + ap1) / 2)
    # t2a: audio 0 scores higher on every caption (0.60-0.02p vs 0.55-0.03p' checked by hand:
    # c11 0.60 vs 0.37, c12 0.54 vs 0.31, c13 0.34 vs 0.16) → captions 0..10 hit, 11..13 miss
    assert m["t2a_R@1"] == pytest.approx(11 / 14)
    assert m["t2a_R@5"] == 1.0 and m["t2a_R@10"] == 1.0


def brute_force(S, t2a):
    n, m = S.shape
    out = {}
    for k in (1, 5, 10):
        out[f"a2t_R@{k}"] = np.mean([any(t2a[j] == i for j in np.argsort(-S[i], kind="stable")[:k]) for i in range(n)])
        out[f"t2a_R@{k}"] = np.mean([t2a[j] in np.argsort(-S[:, j], kind="stable")[:k] for j in range(m)])
    aps = []
    for i in range(n):
        order = np.argsort(-S[i], kind="stable")[:10]
        hits, ap = 0, 0.0
        for r, j in enumerate(order, 1):
            if t2a[j] == i:
                hits += 1
                ap += hits / r
        aps.append(ap / min(sum(t2a == i), 10))
    out["mAP@10"] = np.mean(aps)
    return out


def test_retrieval_matches_brute_force_on_random_case():
    rng = np.random.default_rng(0)
    audio, t2a = rng.normal(size=(12, 6)), np.repeat(np.arange(12), 5)
    text = audio[t2a] + 1.5 * rng.normal(size=(60, 6))
    m = R.retrieval_metrics(audio, text, t2a)
    ref = brute_force(R._l2n(audio) @ R._l2n(text).T, t2a)
    for k in R.RETRIEVAL_KEYS:
        assert m[k] == pytest.approx(ref[k]), k


def test_retrieval_errors():
    audio, text = embed_similarity(S3x5)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        R.retrieval_metrics(audio, text, [0, 0, 1, 1, 3])
    with pytest.raises(ValueError, match="text_to_audio_M"):
        R.retrieval_metrics(audio, text, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="same width"):
        R.retrieval_metrics(audio, text[:, :2], T2A_3x5)


def test_format_retrieval_line():
    m = {"a2t_R@1": 1 / 3, "a2t_R@5": 1.0, "a2t_R@10": 1.0, "t2a_R@1": 0.4, "t2a_R@5": 0.5,
         "t2a_R@10": 0.75, "mAP@10": 0.45}
    assert R.format_retrieval_line(m) == ("retrieval a2t R@1=0.3333 R@5=1.0000 R@10=1.0000 "
                                          "t2a R@1=0.4000 R@5=0.5000 R@10=0.7500 mAP@10=0.4500")


def test_zero_shot_accuracy():
    classes = np.eye(3)
    audio = np.array([[1.0, 0.2, 0.0],    # → 0 (label 0, hit)
                      [0.1, 0.9, 0.5],    # → 1 (label 1, hit)
                      [0.3, 0.2, 0.1],    # → 0 (label 2, miss)
                      [0.0, 0.4, 0.6]])   # → 2 (label 2, hit)
    assert R.zero_shot_accuracy(audio, classes, [0, 1, 2, 2]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        R.zero_shot_accuracy(audio, classes, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="labels_N"):
        R.zero_shot_accuracy(audio, classes, [0, 1, 2])


def test_zero_shot_map():
    S = np.array([[0.45, 0.05, 0.15, 0.2],
                  [0.10, 0.40, 0.20, 0.2],
                  [0.35, 0.15, 0.10, 0.3],
                  [0.05, 0.10, 0.30, 0.1]])
    audio, classes = embed_similarity(S)
    multi_hot = np.array([[1, 0, 0, 0],
                          [1, 1, 0, 0],
                          [0, 0, 1, 0],
                          [0, 0, 1, 0]])  # class 3 has no positive → skipped
    # k0 ranking a0 a2 a1 a3, positives a0, a1 → (1 + 2/3)/2; k1: a1 first → 1;
    # k2 ranking a3 a1 a0 a2, positives a3, a2 → (1 + 2/4)/2
    expected = ((1 + 2 / 3) / 2 + 1.0 + (1 + 2 / 4) / 2) / 3
    assert R.zero_shot_map(audio, classes, multi_hot) == pytest.approx(expected)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    ref = np.mean([sklearn_metrics.average_precision_score(multi_hot[:, c], S[:, c]) for c in range(3)])
    assert R.zero_shot_map(audio, classes, multi_hot) == pytest.approx(ref)
    with pytest.raises(ValueError, match="multi_hot_NC"):
        R.zero_shot_map(audio, classes, multi_hot[:, :3])
