"""Emo-DNA cross-corpus adaptation: prototypes and adaptive thresholds on constructed cases, the
corpus-level MMD, target labels never read (a poisoned target), label-set checks, the baseline and
the target evaluation by class name."""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from avpretrain import cli, config as config_lib
from avpretrain.data import source as source_lib
from avpretrain.models import emo_dna
from helpers import REPO

CLASSES = "neutral,happy,sad,angry,fearful"  # studio has these and 'surprised'; room has these


@pytest.fixture(scope="module")
def room_data(tmp_path_factory):
    from data_pipelines import demo_emotion

    out = tmp_path_factory.mktemp("room") / "room"
    demo_emotion.build(str(out), corpus="room", num_clips=150, split_by="clip")  # 5 blocks per speaker
    return out


def _config(m2d_export, source, target, arg="runlocal", **extra):
    overrides = {"init.path": str(m2d_export), "data.dir": str(source), "data.target_dir": str(target),
                 "data.classes": tuple(CLASSES.split(",")), "total_steps": 6, "checkpoint_every": 6,
                 "eval_every": 6, "log_every": 1, **extra}
    return config_lib.load_config(str(REPO / f"configs/emo_dna.py:{arg}"), overrides)


def test_prototypes_take_the_first_mean_then_move_by_momentum():
    protos, seen = jnp.zeros((3, 2)), jnp.zeros(3)
    feats = jnp.array([[2.0, 0], [0, 3.0], [1.0, 1.0], [5.0, 5.0]])
    ids, mask = jnp.array([0, 0, 2, 1]), jnp.array([1.0, 1.0, 1.0, 0.0])   # the last row is masked out
    protos, seen = emo_dna.update_prototypes(protos, seen, feats, ids, mask, momentum=0.9)
    h = 1 / np.sqrt(2)
    np.testing.assert_allclose(protos, [[h, h], [0, 0], [h, h]], atol=1e-6)    # mean of unit rows, renormalised
    np.testing.assert_array_equal(seen, [2, 0, 1])
    protos2, seen2 = emo_dna.update_prototypes(protos, seen, jnp.array([[1.0, 0]]), jnp.array([0]), jnp.ones(1), 0.9)
    want = np.array([0.9 * h + 0.1, 0.9 * h])
    np.testing.assert_allclose(protos2[0], want / np.linalg.norm(want), atol=1e-6)
    np.testing.assert_allclose(protos2[1:], protos[1:])                          # unseen in the batch: unchanged
    np.testing.assert_array_equal(seen2, [3, 0, 1])


def test_adaptive_thresholds_follow_the_targets_confidence_per_class():
    tau, prob = jnp.asarray(1 / 3), jnp.full(3, 1 / 3)
    probs = jnp.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.5, 0.0]])
    target = jnp.array([1.0, 1.0, 1.0, 0.0])                                    # the last row is a source row
    tau, prob = emo_dna.update_thresholds(tau, prob, probs, target, momentum=0.5)
    assert float(tau) == pytest.approx(0.5 / 3 + 0.5 * (0.9 + 0.8 + 0.7) / 3)
    np.testing.assert_allclose(prob, 0.5 / 3 + 0.5 * np.array([1.9, 0.85, 0.25]) / 3, rtol=1e-6)
    thr = emo_dna.class_thresholds(tau, prob)
    np.testing.assert_allclose(thr, float(tau) * np.asarray(prob) / float(prob.max()), rtol=1e-6)
    assert float(thr[0]) == pytest.approx(float(tau)) and float(thr[2]) < float(thr[1]) < float(thr[0])
    # a rarely predicted class gets a lower bar: 0.45 passes for class 2 but not for class 0
    pseudo, selected = emo_dna.select(jnp.array([[0.45, 0.1, 0.45 - 1e-3], [0.1, 0.1, 0.8 - 0.45 + 0.45],
                                                [0.1, 0.45, 0.45]]), jnp.ones(3), jnp.array([0.5, 0.5, 0.3]))
    assert list(pseudo) == [0, 2, 1] and list(selected) == [False, True, False]
    # no target rows: nothing changes
    same = emo_dna.update_thresholds(tau, prob, probs, jnp.zeros(4), momentum=0.5)
    assert float(same[0]) == float(tau) and np.allclose(same[1], prob)


def test_mmd_is_zero_between_equal_sets_and_grows_with_a_shift():
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    a, b = jnp.array([1.0] * 4 + [0] * 4), jnp.array([0.0] * 4 + [1] * 4)
    same = emo_dna.mmd2(jnp.concatenate([x[:4], x[:4]]), a, b)
    near, far = (emo_dna.mmd2(jnp.concatenate([x[:4], x[:4] + d]), a, b) for d in (0.1, 1.0))
    assert abs(float(same)) < 1e-6 and 0 < float(near) < float(far)


def test_label_sets_must_match_by_name_or_be_chosen():
    assert emo_dna.shared_classes(["a", "b"], ["b", "a"]) == ["a", "b"]
    with pytest.raises(ValueError, match=r"source classes \['a', 'b', 'c'\] and the target classes \['a', 'b'\] "
                                         r"differ: .*--config.data.classes=a,b"):
        emo_dna.shared_classes(["a", "b", "c"], ["a", "b"])
    assert emo_dna.shared_classes(["a", "b", "c"], ["b", "a"], ("b", "a")) == ["b", "a"]
    with pytest.raises(ValueError, match=r"not in the target classes \['a'\] \(\['b'\] missing\)"):
        emo_dna.shared_classes(["a", "b"], ["a"], ("a", "b"))


def test_mismatched_classes_are_refused_with_exit_status_2(tmp_path, capsys, m2d_export, emotion_data, room_data):
    rc = cli.main(["train", f"--config={REPO / 'configs/emo_dna.py:runlocal'}", f"--config.init.path={m2d_export}",
                   f"--config.data.dir={emotion_data}", f"--config.data.target_dir={room_data}",
                   f"--workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "'surprised'" in err and "differ" in err and not (tmp_path / "w" / "checkpoints").exists()


def test_adaptation_never_reads_a_target_label(tmp_path, monkeypatch, m2d_export, emotion_data, room_data):
    """The target's records are poisoned: reading the label of one fails the run."""
    from avpretrain import train as train_lib

    real = source_lib.data_source
    target = str(pathlib.Path(room_data).resolve())

    class Poisoned(dict):
        def __getitem__(self, key):
            if key == "label":
                raise AssertionError("a target label was read")
            return super().__getitem__(key)

        def get(self, key, default=None):
            return self[key] if key in self else default

    class PoisonedSource:
        def __init__(self, src):
            self.src = src

        def __len__(self):
            return len(self.src)

        def __getitem__(self, i):
            return Poisoned(self.src[i])

    def data_source(data_dir, split):
        src = real(data_dir, split)
        return PoisonedSource(src) if str(pathlib.Path(data_dir).resolve()) == target else src

    monkeypatch.setattr(source_lib, "data_source", data_source)
    config = _config(m2d_export, emotion_data, room_data, eval_every=0)
    assert train_lib.train(config, tmp_path / "run").step == 6
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))                       # every step logged
    for r in records:
        assert 0 <= r["selected"] <= 1 and all(f"thr_{c}" in r for c in CLASSES.split(","))
        assert np.isfinite([r["mmd"], r["class_align"], r["dec_corpus"], r["dec_emotion"]]).all() and r["diversity"] >= 0
    # the thresholds move with the target's predictions, from 1/C
    assert records[-1]["tau"] != pytest.approx(1 / 5)


def test_baseline_trains_on_the_source_only_and_is_evaluated_on_the_target_by_class_name(
        tmp_path, capsys, m2d_export, emotion_data, room_data):
    from avpretrain.models import emo_dna as lib

    config = _config(m2d_export, emotion_data, room_data, arg="runlocal,baseline")
    lib.prepare(config)
    batch = next(iter(lib.train_data(config)))
    assert (batch["domain"] == 0).all() and len(batch["label"]) == config.batch_size
    assert batch["label"].min() >= 0 and batch["label"].max() < 5                   # relabelled to the 5 shared classes
    work, out = tmp_path / "base", tmp_path / "base_export"
    args = [f"--config.{k}={v}" for k, v in (("init.path", m2d_export), ("data.dir", emotion_data),
                                               ("data.classes", CLASSES), ("total_steps", 6), ("eval_every", 6),
                                               ("checkpoint_every", 6))]
    assert cli.main(["train", f"--config={REPO / 'configs/emo_dna.py:runlocal,baseline'}", *args,
                     f"--workdir={work}"]) == 0
    record = json.loads((work / "metrics.jsonl").read_text().splitlines()[-2])
    assert "mmd" not in record and "cls" in record
    assert cli.main(["export", f"--workdir={work}", f"--out={out}"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "classify", f"--model={out}", f"--data={room_data}", "--split=test",
                     f"--json-out={tmp_path / 'r.json'}"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [c["name"] for c in result["per_class"]] == CLASSES.split(",") and 0 <= result["uar"] <= 1
    assert result["accuracy"] == result["war"]
    # studio → its own test split: the model's 5 classes matched by name, its 'surprised' clips left out
    assert cli.main(["eval", "classify", f"--model={out}", f"--data={emotion_data}", "--split=test"]) == 0
    assert "left out: 1 clips of ['surprised'] classes" in capsys.readouterr().out
