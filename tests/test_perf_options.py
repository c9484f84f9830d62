"""The step's performance options: attention implementations against the plain formula, remat,
bfloat16 compute, the stated hardware peak behind the MFU, the process set-up (compilation cache,
CPU flags) and which heavy libraries each path imports."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avpretrain import bench, sharding
from avpretrain.models import m2d, vit
from helpers import REPO


def _plain_attention(x, attn, valid=None):
    """softmax(QKᵀ/√d)V written out, from the module's own qkv/proj weights."""
    B, N, D = x.shape
    H = attn.num_heads
    qkv = (x @ attn.qkv.kernel[...] + attn.qkv.bias[...]).reshape(B, N, 3, H, D // H)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D // H)
    if valid is not None:
        s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
    out = (jax.nn.softmax(s, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, N, D)
    return out @ attn.proj.kernel[...] + attn.proj.bias[...]


@pytest.fixture(scope="module", params=["plain", "xla"])
def attention(request):
    with sharding.mesh_rules(sharding.single_device_mesh()):
        return vit.Attention(64, 4, nnx.Rngs(0), attention=request.param)


def test_attention_matches_the_plain_formula(attention):
    x = jax.random.normal(jax.random.key(1), (2, 7, 64))
    np.testing.assert_allclose(attention(x), _plain_attention(x, attention), rtol=1e-5, atol=1e-5)
    valid = jnp.array([[True] * 7, [True] * 4 + [False] * 3])
    out = attention(x, valid)
    np.testing.assert_allclose(out, _plain_attention(x, attention, valid), rtol=1e-5, atol=1e-5)
    # padding keys change nothing for the unpadded queries of the second example
    x2 = x.at[1, 4:].set(100.0)
    np.testing.assert_allclose(attention(x2, valid)[1, :4], out[1, :4], rtol=1e-5, atol=1e-5)


def test_attention_gradients_match_the_plain_formula(attention):
    x = jax.random.normal(jax.random.key(2), (2, 5, 64))
    g_ours = jax.grad(lambda x: attention(x).sum())(x)
    g_plain = jax.grad(lambda x: _plain_attention(x, attention).sum())(x)
    np.testing.assert_allclose(g_ours, g_plain, rtol=1e-4, atol=1e-5)


def test_attention_implementation_choice():
    assert vit.attention_implementation("auto", jnp.bfloat16, "gpu") == "cudnn"
    assert vit.attention_implementation("auto", jnp.float32, "gpu") == "xla"   # cuDNN's kernel is 16-bit only
    assert vit.attention_implementation("auto", jnp.bfloat16, "cpu") == "plain"
    assert vit.attention_implementation("auto", jnp.float32, "cpu") == "plain"
    assert vit.attention_implementation("auto", jnp.bfloat16, "tpu") == "xla"
    assert vit.attention_implementation("xla", jnp.bfloat16, "gpu") == "xla"
    with pytest.raises(ValueError, match="flash"):
        vit.attention_implementation("flash", jnp.float32, "cpu")


def _with(module, params):
    """``module`` with its parameters replaced by ``params`` (a pure dict, traced values)."""
    graphdef, state = nnx.split(module)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def _vjp_pair(f, *args):
    """f(*args) and its vector-Jacobian product with a fixed random cotangent."""
    out, vjp = jax.vjp(f, *args)
    return out, vjp(jax.random.normal(jax.random.key(9), out.shape, out.dtype))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_lean_backward_pieces_equal_autodiff_of_the_formulas(dtype, tol):
    """GELU, softmax and LayerNorm with their own backward (vit.exact_gelu, vit.softmax,
    vit.LayerNorm) give the values and gradients of the plain formulas differentiated by JAX."""
    x = (3 * jax.random.normal(jax.random.key(6), (3, 5, 16))).astype(dtype)
    for ours, plain in [(vit.exact_gelu, lambda x: jax.nn.gelu(x, approximate=False)),
                        (vit.softmax, lambda x: jax.nn.softmax(x, axis=-1))]:
        (y, (g,)), (y0, (g0,)) = _vjp_pair(ours, x), _vjp_pair(plain, x)
        assert y.dtype == g.dtype == dtype
        np.testing.assert_allclose(np.float32(y), np.float32(y0), rtol=tol, atol=tol)
        np.testing.assert_allclose(np.float32(g), np.float32(g0), rtol=tol, atol=tol)
    # masked logits (finfo.min, as attention masks them): no NaN, zero weight, zero gradient
    masked = jnp.where(jnp.arange(16) < 11, x.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    y, (g,) = _vjp_pair(vit.softmax, masked)
    assert np.all(np.isfinite(g)) and np.all(y[..., 11:] == 0) and np.all(g[..., 11:] == 0)

    with sharding.mesh_rules(sharding.single_device_mesh()):
        ours = vit.layer_norm(16, nnx.Rngs(0), dtype)
        plain = nnx.LayerNorm(16, epsilon=vit.LN_EPS, dtype=dtype, rngs=nnx.Rngs(0))
    for m in (ours, plain):  # parameters away from their init so that their gradients mean something
        m.scale[...] = 1 + 0.1 * jax.random.normal(jax.random.key(7), (16,))
        m.bias[...] = 0.1 * jax.random.normal(jax.random.key(8), (16,))
    assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(jnp.shape, nnx.state(plain))
    x = x + 5  # a mean far from 0

    def norm_vjp(m):
        return _vjp_pair(lambda x, scale, bias: _with(m, {"scale": scale, "bias": bias})(x),
                         x, m.scale[...], m.bias[...])

    (y, (g, gs, gb)), (y0, (g0, gs0, gb0)) = norm_vjp(ours), norm_vjp(plain)
    assert y.dtype == g.dtype == dtype and gs.dtype == gb.dtype == jnp.float32
    for a, b in [(y, y0), (g, g0), (gs, gs0), (gb, gb0)]:
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=tol, atol=tol * 10)


def _written_out_block(block, p, x):
    """A pre-norm block's formula (LayerNorm written out, ``_plain_attention``, jax.nn's GELU) from
    the parameters ``p``, differentiated by JAX as written."""
    def norm(x, n):
        mean = x.mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + vit.LN_EPS) * n["scale"] + n["bias"]

    x = x + _plain_attention(norm(x, p["norm1"]), _with(block.attn, p["attn"]))
    h = jax.nn.gelu(norm(x, p["norm2"]) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"], approximate=False)
    return x + h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]


def test_blocks_keep_less_for_the_backward_than_the_formula_differentiated_as_written():
    """A stack of 3 blocks, forward + backward compiled: XLA's temporary buffer for ours is at most
    3/4 of the written-out formula's (0.62 measured: the lean GELU, softmax and LayerNorm
    backward), with the same gradients."""
    with sharding.mesh_rules(sharding.single_device_mesh()):
        stack = vit.blocks(3, 64, 4, 4.0, nnx.Rngs(0))
    params = [nnx.to_pure_dict(nnx.state(b)) for b in stack]
    x = jax.random.normal(jax.random.key(0), (4, 96, 64))

    def ours(params, x):
        for block, p in zip(stack, params):
            x = _with(block, p)(x)
        return (x ** 2).sum()

    def written_out(params, x):
        for block, p in zip(stack, params):
            x = _written_out_block(block, p, x)
        return (x ** 2).sum()

    temp, grads = {}, {}
    for f in (ours, written_out):
        step = jax.jit(jax.grad(f, argnums=(0, 1)))
        temp[f.__name__] = step.lower(params, x).compile().memory_analysis().temp_size_in_bytes
        grads[f.__name__] = step(params, x)
    assert temp["ours"] <= 0.75 * temp["written_out"], temp
    for a, b in zip(jax.tree.leaves(grads["ours"]), jax.tree.leaves(grads["written_out"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def _tiny_m2d(**kw):
    with sharding.mesh_rules(sharding.single_device_mesh()):
        return m2d.M2D(input_frames=64, width=64, depth=2, num_heads=4, pred_width=32, pred_depth=1,
                       pred_heads=2, rngs=nnx.Rngs(0), **kw)


def _loss_and_grads(model, lms):
    def loss_fn(model):
        return model.loss({"lms": lms}, jax.random.key(3))[0]

    return nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, model.TRAINABLE))(model)


@pytest.mark.parametrize("remat", ["dots", "full"])
def test_remat_gives_the_same_loss_and_gradients(remat):
    lms = jax.random.normal(jax.random.key(4), (2, 1, 80, 64))
    loss, grads = _loss_and_grads(_tiny_m2d(), lms)
    loss_r, grads_r = _loss_and_grads(_tiny_m2d(remat=remat), lms)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_and_attention_choices_are_checked():
    with pytest.raises(ValueError, match="remat='some'"):
        _loss_and_grads(_tiny_m2d(remat="some"), jnp.zeros((1, 1, 80, 64)))


def test_bfloat16_compute_keeps_float32_params_and_a_close_loss():
    lms = jax.random.normal(jax.random.key(5), (2, 1, 80, 64))
    model16 = _tiny_m2d(dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    loss16, grads16 = _loss_and_grads(model16, lms)
    loss32, _ = _loss_and_grads(_tiny_m2d(), lms)
    assert loss16.dtype == jnp.float32 and abs(float(loss16) - float(loss32)) < 0.02
    assert {x.dtype for x in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}


def test_cpu_peak_is_derived_from_cores_clock_and_simd(monkeypatch):
    monkeypatch.setattr(bench, "_cpu_info", lambda: ({"avx2", "fma"}, "AMD EPYC", 23, 2.45, "test"))
    tflops, how = bench.cpu_peak("float32", cores=2)
    assert tflops == pytest.approx(2 * 2.45e9 * 32 / 1e12)
    assert "2 cores x 2.45 GHz" in how and "8 fp32 lanes" in how and "156.8 GFLOP/s" in how
    monkeypatch.setattr(bench, "_cpu_info", lambda: ({"avx512f", "fma", "amx_bf16"}, "Intel Xeon", 6, 2.0, "test"))
    assert bench.cpu_peak("float32", cores=1)[0] == pytest.approx(2.0e9 * 64 / 1e12)
    assert bench.cpu_peak("bfloat16", cores=1)[0] == pytest.approx(2.0e9 * 1024 / 1e12)
    # AVX-512 on AMD: Zen 4 (family 25) runs it as two 256-bit halves, Zen 5 (family 26) at full width
    monkeypatch.setattr(bench, "_cpu_info", lambda: ({"avx512f", "fma"}, "AMD EPYC", 25, 2.0, "test"))
    assert bench.cpu_peak("float32", cores=1)[0] == pytest.approx(2.0e9 * 32 / 1e12)
    monkeypatch.setattr(bench, "_cpu_info", lambda: ({"avx512f", "fma"}, "AMD EPYC", 26, 2.0, "test"))
    assert bench.cpu_peak("float32", cores=1)[0] == pytest.approx(2.0e9 * 64 / 1e12)
    monkeypatch.setattr(bench, "_cpu_info", lambda: (set(), "mystery", None, None, "test"))
    assert bench.cpu_peak("float32")[0] is None


def test_hardware_peak_on_this_cpu_splits_over_forced_devices():
    peak, how = bench.hardware_peak(jax.devices()[0])
    if peak is not None:
        assert peak > 0 and "GFLOP/s" in how and f"shared by {jax.local_device_count()} devices" in how


def _python(code, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "JAX_PERSISTENT"))}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_runtime_setup_turns_the_compilation_cache_on_by_default(tmp_path):
    code = ("from avpretrain import runtime; runtime.setup(); import jax; "
            "print(jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)")
    assert _python(code, XDG_CACHE_HOME=str(tmp_path)) == f"{tmp_path}/avpretrain/jax 0.0"
    assert _python(code, AVPRETRAIN_CACHE=str(tmp_path / "c")).startswith(f"{tmp_path}/c ")
    assert _python(code, AVPRETRAIN_CACHE="off").startswith("None ")
    # a cache dir of the user's own is kept
    assert _python(code, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine")).startswith(f"{tmp_path}/mine ")


def test_paths_import_only_what_they_need():
    heavy = ("grain", "orbax.checkpoint", "tensorflow_datasets", "torch", "tensorflow")
    probe = "import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))".format(heavy=heavy)
    assert _python("import avpretrain.cli, avpretrain.bench, avpretrain.train; " + probe) == "[]"
    assert _python("import avpretrain.export; " + probe) == "['orbax.checkpoint']"
    assert _python("import avpretrain.evaluate.downstream; " + probe) == "['orbax.checkpoint', 'tensorflow_datasets']"


def test_start_up_work_imports_no_torch_and_no_librosa_filters(tmp_path):
    """The trainer's metric writer (tensorboardX) and the log-mel front end's filterbank used to import
    torch (~2.3 s) and librosa's filters (scipy.signal, numba: ~1.5 s) on every start."""
    probe = "import sys; print(sorted(m for m in ('torch', 'librosa.filters', 'numba', 'scipy.signal') if m in sys.modules))"
    code = (f"from avpretrain import metrics, audio; w = metrics.MetricWriter({str(tmp_path)!r}, 10); "
            "w.write(1, {'loss': 1.0}); w.close(); audio._mel_filterbank(16000, 400, 80, 50.0, 8000.0); " + probe)
    assert _python(code).splitlines()[-1] == "[]"
    assert (tmp_path / "tensorboard").is_dir() and list((tmp_path / "tensorboard").iterdir())


def test_a_stack_of_blocks_is_traced_once():
    """apply_blocks runs every block through one jitted function: 12 blocks are traced at most twice
    (the stack's input may carry another abstract mesh than a block's output, a second cache key),
    and the result is the written-out stack's."""
    mesh = sharding.make_mesh(sharding.DEFAULT_MESH)
    with sharding.mesh_rules(mesh, sharding.DEFAULT_RULES):
        stack = vit.blocks(12, 40, 4, 2.0, nnx.Rngs(0))  # a width and length no other test uses
    x = jax.random.normal(jax.random.key(1), (2, 7, 40))
    traces = []
    real = vit.Block.__call__

    def counting(self, x, valid_BN=None):
        traces.append(1)
        return real(self, x, valid_BN)

    vit.Block.__call__ = counting
    try:
        got = jax.jit(lambda s, x: vit.apply_blocks(s, x))(stack, x)
        traces_stacked = len(traces)
        want = x
        for block in stack:
            want = real(block, want)
    finally:
        vit.Block.__call__ = real
    assert 1 <= traces_stacked <= 2
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
