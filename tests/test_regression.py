"""Dimensional emotion: the classifier method with task=regress (CCC loss, NaN ratings masked),
validation on the mean CCC, `eval regress`, and the refusals (no ratings, unrated training split,
a classification metric, a classifier export)."""
import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avpretrain import cli, config as config_lib, export, sharding, train, validation
from avpretrain.evaluate import supervised
from avpretrain.models import classifier
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


# ----------------------------------------------------------------------------- layer analysis

def test_ridge_recovers_a_linear_map_and_block_outputs_end_where_the_stack_ends():
    from avpretrain.evaluate import layers
    from avpretrain.models import vit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    W = rng.normal(size=(5, 2))
    fit = layers.ridge(X, X @ W + np.array([1.0, -2.0]), lam=1e-9)
    np.testing.assert_allclose(fit[1:], W, atol=1e-6)
    np.testing.assert_allclose(fit[0], [1.0, -2.0], atol=1e-6)
    mesh = sharding.single_device_mesh()
    with sharding.mesh_rules(mesh, sharding.DEFAULT_RULES):
        stack = vit.blocks(3, 24, 2, 2.0, nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(2, 6, 24)), jnp.float32)
    outs = vit.block_outputs(stack, x)
    assert len(outs) == 3
    np.testing.assert_allclose(np.asarray(outs[-1]), np.asarray(vit.apply_blocks(stack, x)), rtol=1e-6, atol=1e-6)


def test_eval_layers_probes_every_layer(emotion_data, m2d_export, data_dir, tmp_path, capsys):
    depth = int(tiny_config(data_dir).model.depth or 12)
    model = export.load_pretrained(str(m2d_export))
    waves = [np.zeros(16000, np.float32) + 0.01 * np.sin(np.arange(16000) / 7.0), np.ones(40000, np.float32) * 0.01]
    emb = model.layer_embeddings(waves)
    assert emb.shape == (2, depth, model.embedding_dim // model.model.grid[0]) and np.isfinite(emb).all()
    assert cli.main(["eval", "layers", f"--model={m2d_export}", f"--data={emotion_data}", "--task=regress",
                     f"--out={tmp_path / 'r'}"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"layers regress arousal=-?\d\.\d{4}@\d+ valence=-?\d\.\d{4}@\d+ dominance=-?\d\.\d{4}@\d+", last)
    figures = json.loads((tmp_path / "r.json").read_text())
    assert all(len(v) == depth for v in figures["per_layer"].values()) and figures["metric"] == "ccc"
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["eval", "layers", f"--model={m2d_export}", f"--data={emotion_data}", "--task=classify",
                     f"--out={tmp_path / 'c'}"]) == 0
    assert re.fullmatch(r"layers classify uar=\d\.\d{4}@\d+ accuracy=\d\.\d{4}@\d+",
                        capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(["eval", "layers", f"--model={m2d_export}", f"--data={data_dir}", "--task=regress"]) == 2
    assert "has no ratings" in capsys.readouterr().err
    assert cli.main(["eval", "layers", f"--model={m2d_export}", f"--data={emotion_data}", "--task=regress",
                     "--split=validation"]) == 2
    assert "score on test" in capsys.readouterr().err
