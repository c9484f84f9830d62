"""The method contract: a method added in a test, with its own batch fields, front end, step body,
init sources and export adapter, trains through the unchanged trainer; aligned crops."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from avpretrain import export, frontend, method, train
from avpretrain.data import pipeline
from configs.common import base_config

CROP = 3200  # 0.2 s at 16 kHz: 10 frames of the 320-hop power spectrogram


class ToyClassifier(nnx.Module):
    """Log power spectrum → mean over time → linear classes; counts its steps in non-trainable state."""

    def __init__(self, classes: int, rngs: nnx.Rngs):
        self.head = nnx.Linear(513, classes, rngs=rngs)
        self.seen = nnx.BatchStat(jnp.zeros((), jnp.int32))  # updated inside the step, not by the optimizer

    def logits(self, spec_BTF):
        return self.head(jnp.log(spec_BTF + 1e-6).mean(1))

    def loss(self, batch, rng):
        del rng
        assert batch["spec"].shape[1:] == (CROP // 320, 513), batch["spec"].shape  # the front end ran
        assert batch["label"].dtype == jnp.int32 and batch["label"].ndim == 1
        logits = self.logits(batch["spec"])
        self.seen[...] += batch["label"].shape[0]
        return (optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(),
                {"accuracy": (logits.argmax(-1) == batch["label"]).mean()})


def _update(ts, batch, rng, inputs, config):
    """A custom step body: plain SGD at ``optim.base_lr`` (the optimizer is not used)."""
    loss, grads = nnx.value_and_grad(lambda m: m.loss(batch, rng)[0], argnums=nnx.DiffState(0, nnx.Param))(ts.model)
    lr = config.optim.base_lr
    nnx.update(ts.model, jax.tree.map(lambda p, g: p - lr * g, nnx.state(ts.model, nnx.Param), grads))
    return {"loss": loss, "grad_norm": optax.tree.norm(grads), "sgd_steps": inputs["step"] + 1}


class Adapter:
    """What load_pretrained returns for the toy method."""

    def __init__(self, model, config, meta):
        self.model, self.meta = model, meta

    def predict(self, waves_BS):
        spec = frontend.PowerSpectrogram()({"audio": jnp.asarray(waves_BS)}, None)["spec"]
        return np.asarray(self.model.logits(spec).argmax(-1))


def _register(name, update=None, init_sources=method.default_init_sources):
    return method.register(method.Method(
        name=name, create=lambda config, rngs, encoder_only: ToyClassifier(config.model.classes, rngs),
        inputs=lambda config: {"audio": method.Field((CROP,)), "label": method.Field((), "int32")},
        frontend=(frontend.PowerSpectrogram(),), update=update, init_sources=init_sources, pretrained=Adapter))


def _config(name, data_dir, **extra):
    c = base_config()
    c.method = name
    c.model = ml_collections.ConfigDict({"classes": 12})
    c.total_steps, c.batch_size, c.log_every, c.checkpoint_every = 6, 8, 1, 3
    c.data.dir = str(data_dir)
    c.optim.base_lr = 0.5
    for key, value in extra.items():
        c[key] = value
    return c


def test_a_method_added_without_touching_the_trainer(data_dir, tmp_path):
    _register("toy")
    result = train.train(_config("toy", data_dir), tmp_path)
    assert result.step == 6 and all(np.isfinite(list(result.losses.values())))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "accuracy", "grad_norm", "lr"} <= records[-1].keys()
    assert not (tmp_path / "norm_stats.json").exists()  # this front end has no statistics
    # non-trainable state mutated by the loss survives the step and the checkpoint
    out = export.export(tmp_path, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["norm_stats"] is None
    adapter = export.load_pretrained(out)
    assert isinstance(adapter, Adapter) and int(adapter.model.seen[...]) == 6 * 8
    assert adapter.predict(np.zeros((2, CROP), np.float32)).shape == (2,)


def test_a_custom_step_body_and_init_sources_into_a_part(data_dir, tmp_path):
    _register("toy")
    train.train(_config("toy", data_dir), tmp_path / "first")
    exported = export.export(tmp_path / "first", tmp_path / "first_export")
    trained = export.load_pretrained(exported).model

    _register("toy_sgd", update=_update, init_sources=lambda config: [method.InitSource(str(exported), ("head",))])
    config = _config("toy_sgd", data_dir, total_steps=2)
    config.optim.base_lr = 0.0  # the custom step leaves the loaded head as it is
    assert train.train(config, tmp_path / "second").step == 2
    records = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert [r["sgd_steps"] for r in records] == [1, 2]  # the custom body ran
    second = export.load_pretrained(export.export(tmp_path / "second", tmp_path / "second_export")).model
    np.testing.assert_array_equal(np.asarray(second.head.kernel[...]), np.asarray(trained.head.kernel[...]))
    assert int(second.seen[...]) == 2 * 8  # not loaded: only "head" was named

    _register("toy_bad", init_sources=lambda config: [method.InitSource(str(exported), ("head",), into=("encoder",))])
    with pytest.raises(KeyError, match="encoder is not a part of this model"):
        train.train(_config("toy_bad", data_dir), tmp_path / "bad")


def test_unknown_fields_and_methods_are_named():
    with pytest.raises(ValueError, match=r"batch fields \['tokens'\]"):
        pipeline.Crop({"tokens": method.Field((4,), "int32")})
    with pytest.raises(ValueError, match="not aligned"):
        pipeline.Crop({"audio": method.Field((1000,)), "video": method.Field((2, 8, 8, 3), "uint8")})
    with pytest.raises(ValueError, match="unknown config.method 'nope'; known: .*m2d"):
        method.get("nope")


def _av_element(frames: int, with_video=True, with_audio=True):
    """Frame i is a constant image of value i; audio samples of frame i are i (int16)."""
    from avpretrain.data import frames as frames_lib

    video = [frames_lib.encode_frame(np.full((8, 8, 3), 10 * i, np.uint8)) for i in range(frames)] if with_video else []
    audio = np.repeat(np.arange(frames, dtype=np.int16), 640) if with_audio else np.zeros(0, np.int16)
    return {"video": video, "audio": audio, "label": 3}


def test_aligned_audio_and_video_crops():
    crop = pipeline.Crop({"audio": method.Field((5 * 640,)), "video": method.Field((5, 8, 8, 3), "uint8"),
                          "label": method.Field((), "int32")})
    starts = set()
    for seed in range(80):
        out = crop(_av_element(12), np.random.default_rng(seed))
        frame_index = np.round(out["video"][:, 0, 0, 0] / 10).astype(int)
        sample_index = np.round(out["audio"] * 32768).astype(int).reshape(5, 640)
        assert (sample_index == frame_index[:, None]).all()  # audio of frame i == frame i
        assert (np.diff(frame_index) == 1).all() and out["label"] == 3
        starts.add(frame_index[0])
    assert starts == set(range(8))  # every start frame 0..12-5 is drawn
    short = crop(_av_element(3), np.random.default_rng(0))  # shorter than the window: zero-padded
    assert (short["video"][3:] == 0).all() and (short["audio"][3 * 640:] == 0).all()
    audio_only = crop(_av_element(6, with_video=False), np.random.default_rng(0))  # a missing modality is zeros
    assert (audio_only["video"] == 0).all() and audio_only["audio"].any()


class ToyAV(nnx.Module):
    """Emotion from pooled face frames and the pooled power spectrum: a method over both modalities."""

    def __init__(self, classes: int, rngs: nnx.Rngs):
        self.video_head = nnx.Linear(3, classes, rngs=rngs)
        self.audio_head = nnx.Linear(513, classes, rngs=rngs)

    def loss(self, batch, rng):
        assert batch["frames"].shape[1:] == (10, 96, 96, 3) and batch["frames"].dtype == jnp.float32
        assert batch["spec"].shape[1:] == (10 * 640 // 320, 513)
        logits = (self.video_head(batch["frames"].mean((1, 2, 3)))
                  + self.audio_head(jnp.log(batch["spec"] + 1e-6).mean(1)))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), {}


def test_an_audiovisual_method_trains_on_aligned_crops(av_data_dir, tmp_path):
    method.register(method.Method(
        name="toy_av", create=lambda config, rngs, encoder_only: ToyAV(config.model.classes, rngs),
        inputs=lambda config: {"audio": method.Field((10 * 640,)), "video": method.Field((10, 96, 96, 3), "uint8"),
                               "label": method.Field((), "int32")},
        frontend=(frontend.PowerSpectrogram(), frontend.VideoFrames())))
    config = _config("toy_av", av_data_dir, total_steps=4, checkpoint_every=2)
    config.model.classes = 6
    batch = next(iter(pipeline.train_dataset(config)))
    assert batch["video"].shape == (8, 10, 96, 96, 3) and batch["video"].dtype == np.uint8
    assert batch["audio"].shape == (8, 6400) and batch["label"].max() < 6
    assert batch["video"].std() > 10 and np.abs(batch["audio"]).max() > 0.01  # real faces and voices
    first = train.train(_copy(config, total_steps=4), tmp_path, stop_at=2)
    resumed = train.train(_copy(config, total_steps=4), tmp_path)
    straight = train.train(_copy(config, total_steps=4), tmp_path / "straight")
    assert first.step == 2 and resumed.step == 4  # the grain iterator state of AV crops resumes exactly
    assert [resumed.losses[s] for s in (3, 4)] == [straight.losses[s] for s in (3, 4)]


def _copy(config, **changes):
    c = ml_collections.ConfigDict(config.to_dict())
    c.update(changes)
    return c


def test_a_method_reading_video_from_an_audio_dataset_is_refused_before_work(data_dir, tmp_path):
    method.register(method.Method(
        name="toy_video_only", create=lambda config, rngs, encoder_only: ToyAV(6, rngs),
        inputs=lambda config: {"video": method.Field((10, 96, 96, 3), "uint8")}, frontend=(frontend.VideoFrames(),)))
    with pytest.raises(ValueError, match=r"reads \['video'\], which this dataset does not store"):
        train.train(_config("toy_video_only", data_dir), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
