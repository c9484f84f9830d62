"""Multi-corpus pre-finetuning (Chen & Yu): batches drawn per corpus in proportion to size, the loss
divided by ln(#classes), every head trained, the export an M2D encoder, the sweep over subsets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avpretrain import cli, config as config_lib, export, sharding
from avpretrain.data import streams
from avpretrain.models import prefinetune
from helpers import REPO

CONFIG = str(REPO / "configs/prefinetune.py:runlocal")


@pytest.fixture(scope="module")
def phone_data(tmp_path_factory):
    from data_pipelines import demo_emotion

    out = tmp_path_factory.mktemp("phone") / "phone"
    demo_emotion.build(str(out), corpus="phone", num_clips=30)
    return out


def _config(m2d_export, dirs, **extra):
    overrides = {"init.path": str(m2d_export), "data.dirs": tuple(str(d) for d in dirs), "total_steps": 8,
                 "checkpoint_every": 8, "log_every": 4, "optim.base_lr": 0.05, "optim.warmup_fraction": 0.0,
                 **extra}
    return config_lib.load_config(CONFIG, overrides)


def test_batches_are_drawn_in_proportion_to_corpus_size_the_same_on_every_process():
    p = np.array([300, 100, 600]) / 1000
    draws = np.array([streams.draw_task(0, i, p) for i in range(6000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), p, atol=0.02)
    assert [streams.draw_task(0, i, p) for i in range(50)] == list(draws[:50])       # a function of (seed, i)
    assert [streams.draw_task(1, i, p) for i in range(50)] != list(draws[:50])
    # the mixture hands out whole batches of the drawn stream, tagged with it, and resumes where it was
    import grain

    parents = [grain.MapDataset.range(k * 1000, k * 1000 + 50).repeat(None).map(lambda i: {"x": np.int64(i)})
               .to_iter_dataset().batch(4) for k in range(3)]
    it = iter(streams.TaskMixture(parents, [300, 100, 600], seed=0))
    batches = [next(it) for _ in range(40)]
    for i, b in enumerate(batches):
        k = streams.draw_task(0, i, p)
        assert (b["task"] == k).all() and (b["x"] // 1000 == k).all()
    state = it.get_state()
    after = [next(it)["x"].tolist() for _ in range(5)]
    it.set_state(state)
    assert [next(it)["x"].tolist() for _ in range(5)] == after


def test_loss_is_each_corpus_cross_entropy_over_ln_of_its_classes():
    with sharding.mesh_rules(sharding.single_device_mesh()):
        model = prefinetune.PreFinetune(num_classes=(2, 6), input_frames=32, width=16, depth=1, num_heads=2,
                                        pred_width=16, pred_depth=1, pred_heads=2, rngs=nnx.Rngs(0))
    for head in model.heads:  # a uniform guess: cross-entropy ln C of its corpus
        head.kernel[...] = jnp.zeros_like(head.kernel[...])
        head.bias[...] = jnp.zeros_like(head.bias[...])
    lms = jax.random.normal(jax.random.key(1), (4, 1, 80, 32))
    batch = {"lms": lms, "task": jnp.array([0, 0, 1, 1]), "label": jnp.array([1, 0, 5, 3])}
    loss, m = model.loss(batch, jax.random.key(0))
    assert float(loss) == pytest.approx(1.0, rel=1e-5)                      # ln C / ln C for both corpora
    assert float(m["ce"]) == pytest.approx((2 * np.log(2) + 2 * np.log(6)) / 4, rel=1e-5)
    model.scale_loss = False
    assert float(model.loss(batch, jax.random.key(0))[0]) == pytest.approx(float(m["ce"]), rel=1e-5)
    # each example is scored by its own corpus's head: the other head's classes never count
    model.heads[1].bias[...] = jnp.array([0, 0, 0, 9.0, 0, 0])
    _, m2 = model.loss(batch, jax.random.key(0))
    want = (2 * np.log(2) + -np.log(np.exp(0) / (5 + np.exp(9))) - np.log(np.exp(9) / (5 + np.exp(9)))) / 4
    assert float(m2["ce"]) == pytest.approx(want, rel=1e-5)
    assert float(m["accuracy"]) == 0.25 and float(m2["accuracy"]) == 0.5  # argmax 0 | 0 | 3 | 3 vs 1 0 5 3


def test_every_head_is_trained_and_the_export_is_an_m2d_encoder(tmp_path, m2d_export, emotion_data, phone_data):
    from avpretrain import checkpoint, step as step_lib, train as train_lib

    config = _config(m2d_export, [emotion_data, phone_data], **{"data.names": ("studio", "phone")})
    result = train_lib.train(config, tmp_path / "run")
    assert result.step == 8
    p = np.asarray(config.prefinetune.sizes) / sum(config.prefinetune.sizes)
    assert set(config.prefinetune.corpora) == {"studio", "phone"} and config.prefinetune.num_classes == (6, 5)
    assert {streams.draw_task(config.seed, i, p) for i in range(8)} == {0, 1}    # both corpora were drawn

    fresh = step_lib.create_train_state(config, train_lib.make_mesh(config))
    init = nnx.to_pure_dict(nnx.state(fresh))["model"]
    again = nnx.to_pure_dict(nnx.state(step_lib.create_train_state(config, train_lib.make_mesh(config))))["model"]
    np.testing.assert_array_equal(np.asarray(again["heads"][1]["kernel"]), np.asarray(init["heads"][1]["kernel"]))
    mngr = checkpoint.manager(tmp_path / "run" / "checkpoints", keep=1, every=8)
    state = checkpoint.restore(mngr, 8, nnx.to_pure_dict(nnx.state(fresh)))
    for k in range(2):  # every head moved away from its initialisation
        moved = np.abs(np.asarray(state["model"]["heads"][k]["kernel"]) - np.asarray(init["heads"][k]["kernel"]))
        assert moved.max() > 1e-3, f"head {k} was not trained"

    out = tmp_path / "export"
    assert cli.main(["export", f"--workdir={tmp_path / 'run'}", f"--out={out}"]) == 0
    encoder = export.load_pretrained(str(out))
    assert not hasattr(encoder.model, "heads")
    np.testing.assert_array_equal(np.asarray(encoder.model.norm.scale[...]),
                                  np.asarray(state["model"]["norm"]["scale"]))
    wave = np.random.default_rng(0).normal(scale=0.1, size=(2, 16000)).astype(np.float32)
    assert encoder.scene_embeddings(wave, sample_rate=16000).shape == (2, encoder.embedding_dim)


def test_sweep_expands_every_nonempty_subset_of_the_corpora(capsys, tmp_path):
    dirs = ",".join(str(tmp_path / n) for n in ("a", "b", "c", "d"))
    assert cli.main(["sweep", f"--config={REPO / 'configs/prefinetune.py'}", f"--config.data.dirs={dirs}",
                     f"--workdir={tmp_path / 'w'}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 15 and len(set(lines)) == 15
    assert "use=a+b+c+d" in lines[-1] and "use=a" in lines[0]
    with pytest.raises(ValueError, match="give --config.data.dirs"):
        config_lib.load_sweep(str(REPO / "configs/prefinetune.py"))


def test_bad_corpus_choices_are_clear_errors(m2d_export, emotion_data, phone_data, tmp_path):
    from avpretrain.models import prefinetune as pf

    with pytest.raises(ValueError, match=r"data.use='studio\+radio': \['radio'\] not among the corpora"):
        pf.prepare(_config(m2d_export, [emotion_data, phone_data], **{"data.names": ("studio", "phone"),
                                                                         "data.use": "studio+radio"}))
    with pytest.raises(ValueError, match="corpora named alike"):
        pf.corpus_names([tmp_path / "x" / "data", tmp_path / "y" / "data"])
    with pytest.raises(ValueError, match="config.data.dirs is empty"):
        pf.prepare(_config(m2d_export, []))
    with pytest.raises(ValueError, match="is a 'classifier' model"):
        bad = tmp_path / "cls"
        bad.mkdir()
        (bad / "config.json").write_text('{"method": "classifier", "data": {}, "model": {}}')
        pf.prepare(_config(bad, [emotion_data]))
