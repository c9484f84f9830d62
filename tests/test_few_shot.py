"""The few-shot protocol (Chen & Yu): episodes balanced, speaker-restricted and seeded; the batched
closed-form heads equal a plain per-trial loop; `eval few-shot` end to end on an ESD replica."""
import json
import re

import numpy as np
import pytest

from avpretrain.evaluate import few_shot


def toy_clips(seed=0, speakers=3, emotions=3, per=(10, 4, 5), dim=8):
    """Per speaker and emotion: `per` clips in train / validation / test; features = class mean + noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(emotions, dim))
    feats, labels, spk, splits = [], [], [], []
    for s in range(speakers):
        offset = rng.normal(scale=0.5, size=dim)
        for e in range(emotions):
            for split, n in zip(("train", "validation", "test"), per):
                feats.append(means[e] + offset + rng.normal(scale=1.2, size=(n, dim)))
                labels += [e] * n
                spk += [f"spk{s}"] * n
                splits += [split] * n
    return few_shot.Clips(np.concatenate(feats).astype(np.float32), np.asarray(labels), np.asarray(spk),
                          np.asarray(splits))


def test_episodes_are_balanced_speaker_restricted_and_seeded():
    clips = toy_clips()
    ep = few_shot.episodes(clips, [0, 1, 2], k=4, trials=2, seed=7)
    assert ep.train.shape == (3, 6, 4) and list(ep.emotion) == [0, 0, 1, 1, 2, 2]
    for s, speaker in enumerate(ep.speakers):
        assert (clips.speakers[ep.train[s]] == speaker).all() and (clips.splits[ep.train[s]] == "train").all()
        assert (clips.speakers[ep.val[s][ep.val[s] >= 0]] == speaker).all()
        assert (clips.splits[ep.test[s][ep.test[s] >= 0]] == "test").all()
        for m, e in enumerate(ep.emotion):
            labels = clips.labels[ep.train[s, m]]
            assert list(labels[:2] == e) == [True, True] and not (labels[2:] == e).any()   # k/2 and k/2
            assert list(ep.target[s, m]) == [1, 1, -1, -1] and len(set(ep.train[s, m])) == 4
    again = few_shot.episodes(clips, [0, 1, 2], k=4, trials=2, seed=7)
    other = few_shot.episodes(clips, [0, 1, 2], k=4, trials=2, seed=8)
    assert (again.train == ep.train).all() and not (other.train == ep.train).all()
    assert not (ep.train[:, 0] == ep.train[:, 1]).all()   # trials differ
    with pytest.raises(ValueError, match=r"speaker 'spk0': 10 train clips of '0', fewer than the 32 that k=64"):
        few_shot.episodes(clips, [0, 1, 2], k=64, trials=1)
    with pytest.raises(ValueError, match="k must be even"):
        few_shot.episodes(clips, [0], k=3, trials=1)


def _loop_reference(clips, ep):
    """One trial at a time in numpy: ridge in its primal form, selection on validation macro-F1."""
    def scores(pred, truth):
        tp, tn = (pred & truth).sum(), (~pred & ~truth).sum()
        fp, fn = (pred & ~truth).sum(), (~pred & truth).sum()
        f1p, f1n = 2 * tp / max(2 * tp + fp + fn, 1e-9), 2 * tn / max(2 * tn + fn + fp, 1e-9)
        n, npos = len(pred), truth.sum()
        return (tp + tn) / n, (f1p + f1n) / 2, (npos * f1p + (n - npos) * f1n) / n

    S, M = ep.train.shape[:2]
    out = np.zeros((S, M, 3))
    for s in range(S):
        val, test = ep.val[s][ep.val[s] >= 0], ep.test[s][ep.test[s] >= 0]
        for m in range(M):
            x, y = clips.features[ep.train[s, m]].astype(np.float64), ep.target[s, m]
            mu, ym = x.mean(0), y.mean()
            xc = x - mu
            scale = np.trace(xc @ xc.T) / len(x) + 1e-6
            best = None
            for lam in few_shot.RIDGE:   # primal: (XᵀX + λI)⁻¹ Xᵀy equals the dual Xᵀ(XXᵀ + λI)⁻¹y
                w = np.linalg.solve(xc.T @ xc + lam * scale * np.eye(x.shape[1]), xc.T @ (y - ym))
                f1 = scores((clips.features[val] - mu) @ w + ym > 0, clips.labels[val] == ep.emotion[m])[1]
                if best is None or f1 > best[0]:
                    best = (f1, w)
            out[s, m] = scores((clips.features[test] - mu) @ best[1] + ym > 0, clips.labels[test] == ep.emotion[m])
    return out


def test_batched_trials_equal_a_plain_loop():
    clips = toy_clips(seed=3)
    for k in (2, 6):
        ep = few_shot.episodes(clips, [0, 1, 2], k=k, trials=3, seed=1)
        got = few_shot.run_k(clips, ep)
        want = _loop_reference(clips, ep)
        for j, metric in enumerate(few_shot.METRICS):
            np.testing.assert_allclose(got[metric], want[..., j], atol=1e-5, err_msg=f"k={k} {metric}")
    # more shots, better heads on this separable toy: the protocol's figures follow
    result = few_shot.protocol(clips, [0, 1, 2], shots=(2, 8), trials=3)
    assert result[8]["macro_f1"] > result[2]["macro_f1"] > 0.5
    assert result[2]["trials"] == 3 * 3 * 3


@pytest.mark.xdist_group("finetune")
def test_eval_few_shot_on_an_esd_layout(tmp_path, m2d_export, capsys):
    from avpretrain import cli
    from test_emotion_datasets import build, write_wav

    emotions = ("Angry", "Happy", "Neutral", "Sad", "Surprise")
    for spk in ("0011", "0012"):
        n_utt = 0
        for e_i, emotion in enumerate(emotions):
            for split, n in (("train", 4), ("evaluation", 2), ("test", 2)):
                for i in range(n):
                    n_utt += 1
                    write_wav(tmp_path / "ESD" / spk / emotion / split / f"{spk}_{n_utt:06d}.wav",
                              seconds=0.5, freq=150 + 60 * e_i + 7 * i)
        (tmp_path / "ESD" / spk / f"{spk}.txt").write_text("")
    assert build("esd", tmp_path / "ESD", tmp_path / "esd")[0] == 0
    import shutil

    other = shutil.copytree(m2d_export, tmp_path / "copy")
    code = cli.main(["eval", "few-shot", f"--model={m2d_export},{other}", f"--data={tmp_path / 'esd'}",
                     "--shots", "2,4", "--trials", "2", f"--json-out={tmp_path / 'f.json'}",
                     f"--png={tmp_path / 'f.png'}"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"^few-shot trials=80 models=2 macro-f1 k2=\d\.\d{4} k4=\d\.\d{4}$", last), last
    result = json.loads((tmp_path / "f.json").read_text())
    assert len(result["emotions"]) == 5 and result["num_trials"] == 80
    assert (tmp_path / "f.png").stat().st_size > 5000
    assert cli.main(["eval", "few-shot", f"--model={m2d_export}", f"--data={tmp_path / 'esd'}", "--shots", "16"]) == 2
