"""M2D-CLAP (stage 1) and M2D2 (stage 2): loss, sharding, caption draws, stage-2 initialisation,
the exported joint space and the zero-shot / retrieval commands, on a tiny captioned corpus."""
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from avpretrain import cli, config as config_lib, export, sharding, step as step_lib, train
from avpretrain.models.m2d_clap import resolve_text_targets
from avpretrain.data import captions, pipeline
from helpers import REPO, HashEncoder, tiny_dataset, tiny_overrides

pytestmark = pytest.mark.xdist_group("clap")  # one worker builds the corpus and the stage-1 run once

STAGE1 = str(REPO / "configs/m2d_clap.py:stage=1,size=tiny,runlocal")
STAGE2 = str(REPO / "configs/m2d_clap.py:stage=2,size=tiny,runlocal")
STATS = {"data.norm_stats": (-8.0, 3.6)}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """The 40-clip demo corpus (3 captions per clip) with hash-encoder caption embeddings."""
    data = tiny_dataset(tmp_path_factory.mktemp("captioned"))
    result = captions.embed_captions(data, model=HashEncoder.name, encoder=HashEncoder(), progress=False)
    assert result.complete and result.dim == HashEncoder.dim
    return data


def stage_config(spec, data, **extra):
    return config_lib.load_config(spec, tiny_overrides(data, **{**STATS, **extra}))


@pytest.fixture(scope="module")
def stage1(captioned, tmp_path_factory):
    """A 4-step stage-1 run on 8 devices: (workdir, losses, metrics records)."""
    workdir = tmp_path_factory.mktemp("stage1")
    result = train.train(stage_config(STAGE1, captioned, log_every=1), workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return workdir, result.losses, records


def test_stage1_loss_is_m2d_plus_weighted_clap(stage1):
    _, _, records = stage1
    assert len(records) == 4
    for r in records:
        assert np.isfinite(r["loss"]) and 0 < r["clap_loss"] and r["clap_logit_scale"] == pytest.approx(1 / 0.07, rel=0.01)
        assert r["loss"] == pytest.approx(r["loss_m2d"] + 0.01 * r["clap_loss"], rel=1e-5)
    config = json.loads((stage1[0] / "config.json").read_text())
    assert config["model"]["text_dim"] == HashEncoder.dim and config["data"]["text_model"] == HashEncoder.name


def test_stage1_sharded_equals_single_device(stage1, captioned, tmp_path, monkeypatch):
    """Negatives come from the whole global batch: 8 data-parallel devices give the single-device losses."""
    _, losses8, records8 = stage1
    cfg1 = stage_config(STAGE1, captioned, log_every=1, mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)))
    monkeypatch.setattr(train, "make_mesh", lambda c: sharding.make_mesh(c.mesh, devices=jax.devices()[:1]))
    losses1 = train.train(cfg1, tmp_path).losses
    records1 = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([losses8[s] for s in range(1, 5)], [losses1[s] for s in range(1, 5)], rtol=2e-5)
    np.testing.assert_allclose([r["clap_loss"] for r in records8], [r["clap_loss"] for r in records1], rtol=2e-5)


def test_one_caption_per_clip_drawn_deterministically_by_seed(captioned):
    cfg = stage_config(STAGE1, captioned, batch_size=4)
    resolve_text_targets(cfg)
    store = captions.CaptionEmbeddings.open(captioned, "train")

    def draws(seed, n=12):
        it = iter(pipeline.train_dataset(cfg, seed=seed))
        return np.concatenate([next(it)["text_emb"] for _ in range(n)])

    a, b, c = draws(0), draws(0), draws(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    stored = np.asarray(store.embeddings)
    # every drawn vector is one stored caption embedding; over several epochs each clip shows several
    match = [np.flatnonzero((stored == row).all(1)) for row in a]
    assert all(len(m) == 1 for m in match)
    assert len({int(m[0]) for m in match}) > len(store) + 2
    assert a.dtype == np.float16 and a.shape[1] == HashEncoder.dim


def test_stage2_initialises_from_stage1_and_freezes_the_encoder(stage1, captioned, tmp_path):
    w1, _, _ = stage1
    # no norm_stats given: stage 2 takes those stage 1 was trained with
    result = train.train(stage_config(STAGE2, captioned, **{"init.path": str(w1), "data.norm_stats": ()}), tmp_path)
    assert result.step == 4
    stats = json.loads((tmp_path / "norm_stats.json").read_text())
    assert (stats["mean"], stats["std"]) == STATS["data.norm_stats"]
    e1, e2 = export.export(w1, tmp_path / "e1"), export.export(tmp_path, tmp_path / "e2")
    m1, m2 = export.load_pretrained(e1).model, export.load_pretrained(e2).model
    for name in ("patch_embed", "cls_token", "blocks", "norm"):  # frozen: bit-equal after 4 stage-2 steps
        for a, b in zip(jax.tree.leaves(getattr(m1, name)), jax.tree.leaves(getattr(m2, name))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fresh = export.load_pretrained(e2, random_init=True).model
    moved = [not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(m2.semantic_blocks), jax.tree.leaves(fresh.semantic_blocks))]
    assert any(moved)  # the semantic head trained


def test_init_errors_name_the_problem(captioned, tmp_path):
    cfg = stage_config(STAGE2, captioned, **{"init.path": str(tmp_path)})
    resolve_text_targets(cfg)
    _, state = nnx.split(step_lib.create_train_state(cfg, train.make_mesh(cfg)))
    with pytest.raises(FileNotFoundError, match="neither a training workdir"):
        step_lib.initialize_from(cfg, state)
    cfg.init.params = ("blocks", "predictor")
    with pytest.raises(KeyError, match="predictor"):
        step_lib.initialize_from(cfg, state)


def test_joint_space_export(stage1, tmp_path):
    w1, _, _ = stage1
    encoder = export.load_pretrained(export.export(w1, tmp_path / "e1"))
    assert encoder.is_audio_language and encoder.text_model == HashEncoder.name
    rng = np.random.default_rng(0)
    short, long = 0.1 * rng.normal(size=8000), 0.1 * rng.normal(size=40000)
    both = encoder.embed_audio([short, long])
    assert both.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1, rtol=1e-5)
    # padding to the longest clip's chunks is masked out: the short clip alone embeds the same
    np.testing.assert_allclose(encoder.embed_audio([short])[0], both[0], atol=1e-5)
    sentences = HashEncoder().encode(["a rising whistle", "short bursts of hiss", "a quiet hum"])
    text = encoder.embed_text(sentences)
    assert text.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 24\]"):
        encoder.embed_text(np.zeros((2, 7)))


def test_zero_shot_and_retrieval_commands(stage1, captioned, tmp_path, capsys, monkeypatch):
    w1, _, _ = stage1
    out = export.export(w1, tmp_path / "e1")
    monkeypatch.setattr(captions, "SentenceEncoder", lambda name: HashEncoder())
    assert cli.main(["eval", "zero-shot", f"--model={out}", f"--data={captioned}",
                     "--template", "the sound of {label}", f"--json-out={tmp_path / 'zs.json'}"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"zero-shot accuracy=\d\.\d{4}", last)
    zs = json.loads((tmp_path / "zs.json").read_text())
    assert zs["prompts"][0] == "the sound of harmonic tone" and zs["num_examples"] == 12
    assert cli.main(["eval", "retrieval", f"--model={out}", f"--data={captioned}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "36 captions (stored sentence embeddings)" in lines[-2]
    assert re.fullmatch(r"retrieval a2t R@1=\S+ R@5=\S+ R@10=\S+ t2a R@1=\S+ R@5=\S+ R@10=\S+ mAP@10=\S+", lines[-1])
    # a missing model: a clear error, exit status 2
    assert cli.main(["eval", "zero-shot", f"--model={tmp_path / 'nowhere'}", f"--data={captioned}"]) == 2


def test_bench_runs_stage2_with_synthetic_text_and_a_frozen_encoder(capsys):
    from avpretrain import bench

    config = config_lib.load_config(STAGE2, {k: v for k, v in tiny_overrides("").items() if k != "data.dir"})
    r = bench.run(config, steps=2, warmup=1, data_batches=0)
    assert config.model.text_dim == bench.SYNTHETIC_TEXT_DIM
    assert r["step_time_s"] > 0 and r["flops_per_step"] > 0
    assert 0 < r["params_trainable"] < r["params_total"]  # the frozen encoder is not counted as trainable
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("bench: step_time_ms=")
