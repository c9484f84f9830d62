"""Dimensional emotion: the classifier method with task=regress (CCC loss, NaN ratings masked),
validation on the mean CCC, `eval regress`, and the refusals (no ratings, unrated training split,
a classification metric, a classifier export)."""
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avpretrain import cli, config as config_lib, export, sharding, train, validation
from avpretrain.evaluate import supervised
from avpretrain.models import classifier
from data_pipelines import demo_emotion
from helpers import REPO, tiny_config

pytestmark = pytest.mark.xdist_group("finetune")
CONFIG = str(REPO / "configs/finetune.py") + ":runlocal,modalities=audio,task=regress"
REGRESS_LINE = re.compile(r"^regress ccc arousal=-?\d\.\d{4} valence=-?\d\.\d{4} dominance=-?\d\.\d{4}$")


def test_concordance_matches_its_definition_and_masks_unrated_targets():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(64, 3)), rng.normal(size=(64, 3))
    got = np.asarray(classifier.concordance(jnp.asarray(pred), jnp.asarray(target), jnp.ones((64, 3), bool)))
    want = [supervised.concordance(pred[:, j], target[:, j]) for j in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert supervised.concordance(target[:, 0], target[:, 0]) == pytest.approx(1.0)
    # a constant shift keeps Pearson at 1 but costs concordance
    v = target[:, 0].var()
    assert supervised.concordance(target[:, 0] + 1.0, target[:, 0]) == pytest.approx(2 * v / (2 * v + 1.0))
    masked = target.copy()
    masked[:10, 1] = np.nan
    loss, ccc = classifier.regression_loss(jnp.asarray(pred), jnp.asarray(masked))
    assert float(ccc[1]) == pytest.approx(supervised.concordance(pred[10:, 1], target[10:, 1]), rel=1e-5)
    assert float(loss) == pytest.approx(1 - float(np.mean(ccc)), rel=1e-6)
    mse_loss, _ = classifier.regression_loss(jnp.asarray(pred), jnp.asarray(masked), "ccc+mse")
    valid = np.isfinite(masked)
    assert float(mse_loss) == pytest.approx(float(loss) + np.mean((pred - np.nan_to_num(masked))[valid] ** 2), rel=1e-5)


@pytest.fixture(scope="module")
def emotion_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("emo") / "data"
    demo_emotion.build(str(out), corpus="studio", num_clips=36)
    return out


@pytest.fixture(scope="module")
def m2d_export(tmp_path_factory, data_dir):
    m2d_config = tiny_config(data_dir)
    model = export._encoder_model(m2d_config, sharding.single_device_mesh())
    return export.write_export(tmp_path_factory.mktemp("m2d") / "e", m2d_config, nnx.to_pure_dict(nnx.state(model)),
                               (-7.0, 4.0))


def test_an_m2d_export_regresses_arousal_valence_dominance(emotion_data, m2d_export, tmp_path, capsys):
    config = config_lib.load_config(CONFIG, {"data.dir": str(emotion_data), "init.path": str(m2d_export),
                                             "total_steps": 10, "eval_every": 5, "checkpoint_every": 5})
    assert config.eval.metric == "ccc"
    result = train.train(config, tmp_path / "run")
    from helpers import read_all

    train_ratings = np.array([[float(e[d]) for d in ("arousal", "valence", "dominance")]
                              for e in read_all(emotion_data).values() if e["split"] == "train"])
    np.testing.assert_allclose(config.model.target_mean, train_ratings.mean(0), rtol=1e-5)  # the head's initial bias
    with sharding.mesh_rules(sharding.single_device_mesh(), config.sharding_rules):
        fresh = classifier.create(config, nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(fresh.head.bias[...]), train_ratings.mean(0), rtol=1e-5)
    assert result.step == 10
    sel = validation.selected(tmp_path / "run")
    assert sel["metric"] == "ccc" and [h["step"] for h in sel["history"]] == [5, 10]
    assert set(sel["history"][0]) >= {"ccc", "ccc_arousal", "ccc_valence", "ccc_dominance", "loss"}
    out = export.export(tmp_path / "run", tmp_path / "e")
    model = export.load_pretrained(str(out))
    assert model.task == "regress" and model.dimensions == ["arousal", "valence", "dominance"]
    assert cli.main(["eval", "regress", f"--model={out}", f"--data={emotion_data}",
                     f"--json-out={tmp_path / 'r.json'}"]) == 0
    assert REGRESS_LINE.match(capsys.readouterr().out.strip().splitlines()[-1])
    # a regression export is not a classifier, and the other way round
    assert cli.main(["eval", "classify", f"--model={out}", f"--data={emotion_data}"]) == 2
    assert "not a classifier" in capsys.readouterr().err


def test_regression_refuses_data_without_ratings_and_classification_metrics(data_dir, emotion_data, m2d_export, tmp_path):
    with pytest.raises(ValueError, match=r"has no \['arousal', 'valence', 'dominance'\] ratings"):
        train.train(config_lib.load_config(CONFIG, {"data.dir": str(data_dir), "init.path": str(m2d_export)}),
                    tmp_path / "a")
    with pytest.raises(ValueError, match=r"eval.metric='uar' does not score model.task='regress'"):
        train.train(config_lib.load_config(CONFIG, {"data.dir": str(emotion_data), "init.path": str(m2d_export),
                                                    "eval.metric": "uar"}), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert cli.main(["kfold", f"--config={CONFIG}", "--folds=3", f"--workdir={tmp_path / 'k'}",
                     f"--config.data.dir={emotion_data}", f"--config.init.path={m2d_export}"]) == 2
    assert not (tmp_path / "k" / "folds.json").exists()


def test_an_unrated_training_split_is_refused(m2d_export, tmp_path):
    """ESD has no ratings (NaN): nothing to regress on, said before training."""
    import soundfile as sf

    for spk in ("0001", "0002"):
        for emo, folder in (("Angry", "train"), ("Sad", "train"), ("Angry", "evaluation"), ("Sad", "test")):
            path = tmp_path / "esd" / spk / emo / folder / f"{spk}_{abs(hash((emo, folder))) % 10**6:06d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, 0.3 * np.sin(np.arange(16000) / 10.0), 16000, subtype="PCM_16")
    assert cli.main(["data", "build", "esd", "--source", str(tmp_path / "esd"), "--out", str(tmp_path / "d")]) == 0
    with pytest.raises(ValueError, match=r"fewer than 2 rated examples of \['arousal', 'valence', 'dominance'\]"):
        train.train(config_lib.load_config(CONFIG, {"data.dir": str(tmp_path / "d"), "init.path": str(m2d_export)}),
                    tmp_path / "run")
