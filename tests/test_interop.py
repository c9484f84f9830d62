"""M2D weights ↔ the PyTorch reference names, checked against a numpy re-implementation of the reference forward."""
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avpretrain import sharding
from avpretrain.interop import m2d as interop
from avpretrain.models.m2d import M2D, random_masking

DIMS = dict(width=64, depth=2, num_heads=4, pred_width=32, pred_depth=1, pred_heads=2)
INPUT = (80, 64)  # 5 × 4 patches
HEADS = dict(num_heads=4, decoder_num_heads=2)


@pytest.fixture(scope="module")
def state_dict():
    """Official names and shapes from our model; random values (LayerNorm scales around 1), none at its init.

    The model is built abstractly (``nnx.eval_shape``) and filled with numpy: no eager init to compile.
    """
    mesh = sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices()[:1])
    with sharding.mesh_rules(mesh):
        model = nnx.eval_shape(lambda: M2D(input_frames=INPUT[1], n_mels=INPUT[0], rngs=nnx.Rngs(0), **DIMS))
    rng = np.random.default_rng(0)
    for path, var in nnx.to_flat_state(nnx.state(model)):
        shape = var.get_raw_value().shape
        var.set_value((float(path[-1] == "scale") + 0.1 * rng.standard_normal(shape)).astype(np.float32))
    return interop.to_state_dict(model)


@pytest.fixture(scope="module")
def model(state_dict):
    return interop.load_state_dict(state_dict, **HEADS, input_size=INPUT)


@pytest.fixture(scope="module")
def lms():
    return np.random.default_rng(1).standard_normal((2, 1, *INPUT)).astype(np.float32)


# -- numpy reference (float64), written from the torch code's conventions ---------------------------

def _linear(sd, name, x):
    return x @ sd[name + ".weight"].T.astype(np.float64) + sd[name + ".bias"]


def _layer_norm(sd, name, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * sd[name + ".weight"] + sd[name + ".bias"]


_erf = np.vectorize(math.erf)


def _block(sd, name, x, heads):
    B, N, D = x.shape
    hd = D // heads
    qkv = _linear(sd, name + ".attn.qkv", _layer_norm(sd, name + ".norm1", x))
    q, k, v = qkv.reshape(B, N, 3, heads, hd).transpose(2, 0, 3, 1, 4)  # timm layout
    logits = q @ k.swapaxes(-1, -2) * hd ** -0.5
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    x = x + _linear(sd, name + ".attn.proj", (attn @ v).transpose(0, 2, 1, 3).reshape(B, N, D))
    h = _linear(sd, name + ".mlp.fc1", _layer_norm(sd, name + ".norm2", x))
    return x + _linear(sd, name + ".mlp.fc2", 0.5 * h * (1 + _erf(h / math.sqrt(2))))


def _stack(sd, prefix, norm, x, heads):
    depth = len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})
    for i in range(depth):
        x = _block(sd, f"{prefix}.{i}", x, heads)
    return _layer_norm(sd, norm, x)


def _patch_tokens(sd, lms):
    """Stride-p conv [D, 1, p, p] as reshape + matmul, flatten(2).transpose(1, 2) → frequency-major, + pos."""
    w = sd["patch_embed.proj.weight"].astype(np.float64)
    p = w.shape[-1]
    B, _, F, T = lms.shape
    x = lms.astype(np.float64).reshape(B, F // p, p, T // p, p)
    out = np.einsum("bikjl,dkl->bijd", x, w[:, 0]) + sd["patch_embed.proj.bias"]
    return out.reshape(B, -1, w.shape[0]) + sd["pos_embed"][:, 1:]


def _with_cls(sd, x):
    cls = sd["cls_token"] + sd["pos_embed"][:, :1]
    return np.concatenate([np.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)


def _take(x, ids):
    return np.take_along_axis(x, ids[..., None], axis=1)


def ref_encoder(sd, lms, heads=4):
    return _stack(sd, "blocks", "norm", _with_cls(sd, _patch_tokens(sd, lms)), heads)


def ref_masked_loss(sd, lms, ids_restore, len_keep, heads=4, decoder_heads=2):
    ids_shuffle = np.argsort(ids_restore, axis=1)
    ids_keep, ids_masked = ids_shuffle[:, :len_keep], ids_shuffle[:, len_keep:]
    x = _patch_tokens(sd, lms)
    online = _stack(sd, "blocks", "norm", _with_cls(sd, _take(x, ids_keep)), heads)
    target = _stack(sd, "target_blocks", "target_norm", _with_cls(sd, _take(x, ids_masked)), heads)[:, 1:]
    y = _linear(sd, "decoder_embed", online)
    B, N = ids_restore.shape
    masks = np.broadcast_to(sd["mask_token"], (B, N + 1 - y.shape[1], y.shape[-1]))
    y_ = _take(np.concatenate([y[:, 1:], masks], axis=1), ids_restore)
    y = np.concatenate([y[:, :1], y_], axis=1) + sd["decoder_pos_embed"]
    pred = _linear(sd, "decoder_pred", _stack(sd, "decoder_blocks", "decoder_norm", y, decoder_heads))[:, 1:]
    pred = _take(pred, ids_masked)
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    pred = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
    target = target / np.linalg.norm(target, axis=-1, keepdims=True)
    return np.mean(2 - 2 * (pred * target).sum(-1))


# -- tests -------------------------------------------------------------------------------------------

def test_round_trip_is_bitwise(state_dict, model):
    out = interop.to_state_dict(model)
    assert out.keys() == state_dict.keys()
    for k, v in state_dict.items():
        assert out[k].dtype == np.float32 and np.array_equal(out[k], v), k
    assert out["patch_embed.proj.weight"].shape == (64, 1, 16, 16)
    assert out["blocks.0.mlp.fc1.weight"].shape == (256, 64)  # torch Linear [out, in]
    assert out["mask_token"].shape == (1, 1, 32) and out["decoder_pos_embed"].shape == (1, 21, 32)
    assert {"target_norm.weight", "decoder_blocks.0.attn.qkv.bias", "decoder_pred.weight"} <= out.keys()
    assert model.dims == dict(width=64, depth=2, num_heads=4, mlp_ratio=4.0, pred_width=32, pred_depth=1,
                              pred_heads=2)


def test_encoder_tokens_match_reference(state_dict, model, lms):
    got = np.asarray(interop.encoder_tokens(model, lms))
    assert got.shape == (2, 1 + 20, 64)
    np.testing.assert_allclose(got, ref_encoder(state_dict, lms), atol=1e-4, rtol=1e-4)


def test_masked_loss_matches_reference(state_dict, model, lms):
    N = model.num_patches
    ids_shuffle, ids_restore, len_keep = random_masking(jax.random.key(3), 2, N, 0.7)
    ids_restore = np.asarray(ids_restore)
    loss = float(interop.masked_loss(model, lms, ids_restore, len_keep))
    assert loss == pytest.approx(float(ref_masked_loss(state_dict, lms, ids_restore, len_keep)), abs=1e-4)
    # The training path with the same key draws the same masking.
    train_loss = nnx.jit(lambda m, x, key: m.loss({"lms": x}, key)[0])(model, jnp.asarray(lms), jax.random.key(3))
    assert loss == pytest.approx(float(train_loss), abs=1e-6)
    other = np.asarray(random_masking(jax.random.key(4), 2, N, 0.7)[1])
    assert abs(float(interop.masked_loss(model, lms, other, len_keep)) - loss) > 1e-4


def test_encoder_only_checkpoint_and_norm_stats(state_dict):
    enc = {k: v for k, v in state_dict.items() if not k.startswith(("target_", "decoder_", "mask_token"))}
    enc["norm_stats"] = np.array([-7.1, 4.2], np.float32)
    assert interop.norm_stats_of(enc) == pytest.approx((-7.1, 4.2))
    assert interop.norm_stats_of({"model": enc}) == pytest.approx((-7.1, 4.2))
    assert interop.norm_stats_of(state_dict) is None
    model = interop.load_state_dict(enc, num_heads=4, decoder_num_heads=2, input_size=INPUT)
    out = interop.to_state_dict(model)
    for k in enc:
        assert np.array_equal(out[k], enc[k]), k
    for k in out:
        if k.startswith(("target_blocks.", "target_norm.")):
            assert np.array_equal(out[k], enc[k.replace("target_", "", 1)]), k
    assert out["decoder_embed.weight"].shape[1] == 64  # fresh predictor, encoder width in


def test_round_trip_keeps_norm_stats(state_dict, lms):
    official = {**state_dict, "norm_stats": np.array([-7.1, 4.2], np.float32)}
    model = interop.load_state_dict(official, **HEADS, input_size=INPUT)
    out = interop.to_state_dict(model)
    assert out.keys() == official.keys()
    for k, v in official.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k
    assert interop.norm_stats_of(out) == pytest.approx((-7.1, 4.2))
    # the kept statistics do not get in the way of the jitted forward
    np.testing.assert_allclose(np.asarray(interop.encoder_tokens(model, lms)), ref_encoder(state_dict, lms),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("edit, input_size, key", [
    ("drop", INPUT, "blocks.1.attn.proj.bias"),
    ("drop", INPUT, "target_norm.weight"),
    ("add", INPUT, "blocks.0.attn.extra.weight"),
    (None, (80, 128), "pos_embed"),
])
def test_errors_name_the_key(state_dict, edit, input_size, key):
    sd = dict(state_dict)
    if edit == "drop":
        del sd[key]
    elif edit == "add":
        sd[key] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        interop.load_state_dict(sd, **HEADS, input_size=input_size)


def test_pth_round_trip_with_torch(state_dict, tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    model = interop.load_state_dict(state_dict, **HEADS, input_size=INPUT)
    path = tmp_path / "ours.pth"
    interop.save_pth(model, path, norm_stats=(-7.1, 4.2))
    saved = torch.load(path, map_location="cpu", weights_only=False)["model"]
    np.testing.assert_allclose(interop.norm_stats_of({k: v.numpy() for k, v in saved.items()}), (-7.1, 4.2), rtol=1e-6)
    loaded = interop.load_state_dict(str(path), **HEADS, input_size=INPUT)
    back, ours = interop.to_state_dict(loaded), interop.to_state_dict(model)
    assert back.keys() == ours.keys() | {"norm_stats"} and all(np.array_equal(back[k], ours[k]) for k in ours)
    interop.save_pth(loaded, path)  # without norm_stats=: the statistics it was loaded with
    saved = torch.load(path, map_location="cpu", weights_only=False)["model"]
    np.testing.assert_array_equal(saved["norm_stats"].numpy(), back["norm_stats"])


def test_path_without_torch_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if the torch extra were not installed
    with pytest.raises(ImportError, match="PyTorch"):
        interop.load_state_dict(str(tmp_path / "m2d.pth"), **HEADS)
