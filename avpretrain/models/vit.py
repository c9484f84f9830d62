"""ViT pieces shared by the models: pre-norm blocks, patching, fixed 2-D sin-cos positions.

Shapes: B batch, N tokens, D width, F×T the log-mel (frequency × time), p the patch size.
Parameters carry logical axis names (see ``avpretrain.sharding``). The blocks' GELU, softmax and
LayerNorm define their own backward (``jax.custom_vjp``: reverse-mode only, as training needs) that
keeps one array each for it, as torch's autograd does (README, Performance: Memory). A stack of
blocks is a list of ``Block`` or, with ``scan``, a ``Stack`` (parameters stacked under the reserved
attribute name ``layers``, run as a scan; README, Performance: scan_layers).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LN_EPS = 1e-6


class Buffer(nnx.Variable):
    """A fixed, non-trainable array saved with the model (e.g. sin-cos positions)."""


def _init(init, axes):
    return nnx.with_partitioning(init, axes)


def dense(d_in, d_out, axes, rngs, dtype=jnp.float32):
    """Linear with xavier-uniform kernel and zero bias (MAE/M2D init), kernel axes ``axes``."""
    return nnx.Linear(d_in, d_out, kernel_init=_init(nnx.initializers.xavier_uniform(), axes),
                      bias_init=_init(nnx.initializers.zeros_init(), axes[1:]), dtype=dtype, rngs=rngs)


def layer_norm(dim, rngs, dtype=jnp.float32):
    return LayerNorm(dim, epsilon=LN_EPS, scale_init=_init(nnx.initializers.ones_init(), ("norm",)),
                     bias_init=_init(nnx.initializers.zeros_init(), ("norm",)), dtype=dtype, rngs=rngs)


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` over the last axis (same parameters; the forward as torch's: x̂·scale + bias)
    whose backward keeps one array of x's size, x̂ (``normalize``), as torch's keeps x."""

    def __call__(self, x):
        scale, bias = self.scale[...], self.bias[...]
        if self.dtype is not None:  # nnx.LayerNorm's promotion: input and parameters in ``dtype``
            x, scale, bias = (a.astype(self.dtype) for a in (x, scale, bias))
        return normalize(x, scale, bias, self.epsilon)


def _normalized(x, epsilon):
    """x̂ = (x − mean)·rsqrt(var + ε) over the last axis in float32 (flax's fast variance, E[x²] −
    E[x]²) and the rsqrt."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.maximum(0.0, jnp.mean(x32 * x32, -1, keepdims=True) - mean * mean) + epsilon)
    return (x32 - mean) * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(x, scale, bias, epsilon):
    """x̂·scale + bias, x̂ = (x − mean)·rsqrt(var + ε) over the last axis, statistics in float32,
    the result in x's dtype.

    Its backward keeps x̂ (in x's dtype) and the row's rsqrt, and nothing of x: differentiated as
    written, XLA:CPU kept x, x − mean and a scaled copy of it from the forward, and a backward in
    terms of x had XLA compute its x-only terms for every layer early, in the forward.
    """
    return _normalize_fwd(x, scale, bias, epsilon)[0]


def _normalize_fwd(x, scale, bias, epsilon):
    xhat, rstd = _normalized(x, epsilon)
    return (xhat * scale + bias).astype(x.dtype), (xhat.astype(x.dtype), rstd, scale, bias)


def _normalize_bwd(epsilon, res, g):
    del epsilon
    xhat, rstd, scale, bias = res
    xhat32, g32 = xhat.astype(jnp.float32), g.astype(jnp.float32)
    gs = g32 * scale.astype(jnp.float32)  # the gradient w.r.t. x̂
    dx = rstd * (gs - jnp.mean(gs, -1, keepdims=True) - xhat32 * jnp.mean(gs * xhat32, -1, keepdims=True))
    rows = tuple(range(xhat.ndim - 1))
    return (dx.astype(xhat.dtype), jnp.sum(g32 * xhat32, rows).astype(scale.dtype),
            jnp.sum(g32, rows).astype(bias.dtype))


normalize.defvjp(_normalize_fwd, _normalize_bwd)


ATTENTION_IMPLEMENTATIONS = ("auto", "plain", "xla", "cudnn")


def attention_implementation(choice: str, dtype, platform: str | None = None) -> str:
    """Which attention runs: "auto" takes cuDNN's fused (flash) kernel through
    ``jax.nn.dot_product_attention`` on GPUs in 16-bit compute, ``plain_attention`` on CPUs (the
    fastest there: README, Performance), and ``jax.nn.dot_product_attention``'s XLA path elsewhere."""
    if choice not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {choice!r}: choose one of {ATTENTION_IMPLEMENTATIONS}")
    if choice != "auto":
        return choice
    platform = platform or jax.default_backend()
    if platform == "cpu":
        return "plain"
    return "cudnn" if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"


def plain_attention(q_BNHK, k_BNHK, v_BNHK, mask=None):
    """softmax(QKᵀ/√K)V, heads-major, the softmax in float32; ``mask`` [B, 1, 1, N] (True: attend).

    Same inputs and result as ``jax.nn.dot_product_attention``; on XLA:CPU its forward ran 2.3x and
    its forward + backward 1.1x faster than that function's XLA path at the predictor's shapes.
    """
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_BNHK, k_BNHK, v_BNHK))
    logits = ((q * q.shape[-1] ** -0.5) @ k.swapaxes(-1, -2)).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = softmax(logits).astype(v.dtype)
    return (weights @ v).transpose(0, 2, 1, 3)


@jax.custom_vjp
def softmax(x):
    """``jax.nn.softmax`` over the last axis whose backward keeps only its output.

    Differentiated as written, XLA:CPU kept three [B, H, N, N] arrays per attention layer for the
    backward (the exponentials, the probabilities and a broadcast of the sums); the derivative
    needs only the probabilities y: dx = y·(g − Σ g·y). M2D base: -0.3 GiB of the step's peak.
    """
    return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x):
    y = jax.nn.softmax(x, axis=-1)
    return y, y


def _softmax_bwd(y, g):
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


class Attention(nnx.Module):
    def __init__(self, dim, num_heads, rngs, dtype=jnp.float32, attention="auto"):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.implementation = attention_implementation(attention, dtype)
        self.qkv = dense(dim, 3 * dim, ("embed", "qkv"), rngs, dtype)
        self.proj = dense(dim, dim, ("qkv", "embed"), rngs, dtype)

    def __call__(self, x_BND, valid_BN=None):
        """``valid_BN`` (bool, optional): keys that may be attended to; padding tokens get False."""
        B, N, D = x_BND.shape
        qkv = self.qkv(x_BND).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        mask = None if valid_BN is None else valid_BN[:, None, None, :]
        if self.implementation == "plain":
            out_BNHK = plain_attention(q, k, v, mask)
        else:
            out_BNHK = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=(
                None if self.implementation == "xla" else "cudnn"))
        return self.proj(out_BNHK.reshape(B, N, D))


@jax.custom_vjp
def exact_gelu(x):
    """x·Φ(x) (``jax.nn.gelu(approximate=False)``) whose backward keeps only its input.

    Differentiated as written, the erfc and its derivative's exponential were kept from the forward
    besides x: two more arrays of the MLP's hidden size per block. The derivative Φ(x) + x·φ(x) is
    recomputed from x in the backward instead (elementwise, cheap next to the matmuls around it).
    """
    return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
    return jax.nn.gelu(x, approximate=False), x


def _gelu_bwd(x, g):
    # the barrier (with g: not before the backward reaches here) keeps XLA from merging this erfc
    # with the forward's, which would keep the forward's erfc intermediates alive until now
    x, g = jax.lax.optimization_barrier((x, g))
    x32 = x.astype(jnp.float32)
    cdf = 0.5 * jax.lax.erfc(-x32 * np.float32(0.5 ** 0.5))
    pdf = jnp.exp(-0.5 * x32 * x32) * np.float32((2 * np.pi) ** -0.5)
    return ((g.astype(jnp.float32) * (cdf + x32 * pdf)).astype(g.dtype),)


exact_gelu.defvjp(_gelu_fwd, _gelu_bwd)


class Mlp(nnx.Module):
    """fc2(act(fc1(x))): dim → hidden → out_dim (default dim); exact-erf GELU unless told."""

    def __init__(self, dim, hidden, rngs, dtype=jnp.float32, *, out_dim=None, activation=exact_gelu):
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), rngs, dtype)
        self.fc2 = dense(hidden, out_dim or dim, ("mlp", "embed"), rngs, dtype)
        self.activation = activation

    def __call__(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class Block(nnx.Module):
    """Pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim, num_heads, mlp_ratio, rngs, dtype=jnp.float32, attention="auto"):
        self.norm1 = layer_norm(dim, rngs, dtype)
        self.attn = Attention(dim, num_heads, rngs, dtype, attention)
        self.norm2 = layer_norm(dim, rngs, dtype)
        self.mlp = Mlp(dim, round(dim * mlp_ratio), rngs, dtype)

    def __call__(self, x, valid_BN=None):
        x = x + self.attn(self.norm1(x), valid_BN)
        return x + self.mlp(self.norm2(x))


class Stack(nnx.Module):
    """``depth`` Blocks whose parameters are stacked on a leading ``layers`` axis (logical axis
    "layers", never sharded), run as one ``jax.lax.scan``: the block is traced, compiled and loaded
    once instead of ``depth`` times (MaxText's ``scan_layers``). ``model.scan_layers``; see
    ``blocks``. Its parameters sit at ``<stack>/layers/<block's path>``; ``unstack_params`` gives the
    per-block layout (``<stack>/<i>/<block's path>``) that exports keep."""

    def __init__(self, depth, dim, num_heads, mlp_ratio, rngs, dtype=jnp.float32, attention="auto"):
        self.depth = depth

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(rngs):
            return Block(dim, num_heads, mlp_ratio, rngs, dtype, attention)

        self.layers = make(rngs)

    def __len__(self):
        return self.depth


def blocks(depth, dim, num_heads, mlp_ratio, rngs, dtype=jnp.float32, attention="auto", scan: bool = False):
    """``depth`` pre-norm blocks: a list of ``Block`` (one parameter set each), or with ``scan`` a
    ``Stack`` (parameters stacked, the blocks run as a scan). Both compute the same function of the
    same parameters; the stack is traced and compiled once, so start-up and compile time stop growing
    with depth, but on XLA:CPU its step is slower (README, Performance: scan_layers)."""
    if scan and depth > 0:
        return Stack(depth, dim, num_heads, mlp_ratio, rngs, dtype, attention)
    return nnx.List([Block(dim, num_heads, mlp_ratio, rngs, dtype, attention) for _ in range(depth)])


def in_stack(key_path) -> bool:
    """Whether a JAX key path (``tree_map_with_path``) leads into a ``Stack``'s stacked params."""
    return any(getattr(k, "key", getattr(k, "name", None)) == "layers" for k in key_path)


def stacks_in(params: dict, prefix=()) -> list[tuple]:
    """The paths of the ``Stack``s in a pure-dict state (of a model, its gradients, a checkpoint):
    its ``{"layers": ...}`` nodes (``layers`` is a Stack's attribute, a name no other module uses)."""
    if not isinstance(params, dict):
        return []
    if set(params) == {"layers"}:
        return [prefix]
    return [p for k, v in params.items() for p in stacks_in(v, (*prefix, k))]


def _restack(params: dict, paths, convert) -> dict:
    """``params`` (a pure dict, not changed) with the node at each of ``paths`` replaced by
    ``convert(node)``, the dicts on the way copied."""
    out = dict(params)
    for path in paths:
        node = out
        for key in path[:-1]:
            node[key] = dict(node[key])
            node = node[key]
        node[path[-1]] = convert(node[path[-1]])
    return out


def unstack_params(params: dict, paths, take=lambda x, i: x[i]) -> dict:
    """A pure-dict state with each ``Stack`` at ``paths`` (``stacks_in``) in the per-block layout:
    ``{"layers": {name: [depth, ...]}}`` → ``{0: {name: [...]}, 1: ...}``, as ``blocks(scan=False)``;
    ``take(leaf, i)`` is layer i of a stacked leaf."""
    def unstack(node):
        stacked = node["layers"]
        depth = jax.tree.leaves(stacked)[0].shape[0]
        return {i: jax.tree.map(lambda x, i=i: take(x, i), stacked) for i in range(depth)}
    return _restack(params, paths, unstack)


def stack_params(params: dict, paths) -> dict:
    """``unstack_params``' inverse: the per-block layout at ``paths`` → ``{"layers": stacked}``."""
    return _restack(params, paths, lambda node: {
        "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *(node[i] for i in sorted(node)))})


def _block_pure(graphdef, state, x, valid_BN):
    return nnx.merge(graphdef, state)(x, valid_BN)


# model.remat: what the backward pass recomputes instead of keeping from the forward.
_REMAT_POLICIES = {
    "none": None,
    # keep the matmul outputs, recompute the cheap rest (norms, GELU, softmax) per block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # keep only each block's input: activation memory of one block, ~1/3 more compute
    "full": jax.checkpoint_policies.nothing_saveable,
}
# One jitted function per policy, the block's structure (graphdef) static: the blocks of a stack
# share their structure and their input shapes, so JAX traces (and differentiates, and lowers)
# the first one and reuses that for the rest. XLA inlines the calls, so the compiled step is the
# same as with the blocks written out; only tracing gets shorter (README, Performance: start-up).
REMAT = {name: jax.jit(_block_pure if policy is None else
                       jax.checkpoint(_block_pure, policy=policy, static_argnums=(0,)), static_argnums=0)
         for name, policy in _REMAT_POLICIES.items()}


def block_outputs(blocks_, x, valid_BN=None, *, remat: str = "none"):
    """x through each block: every block's output, a list (the last is the stack's output), with
    the ``REMAT`` policy ``remat`` for the backward pass.

    The blocks hold parameters only (no state that a call would change), so each runs as a pure
    function of (its parameters, x): traced once per stack and shape, not once per block.
    """
    if remat not in REMAT:
        raise ValueError(f"remat={remat!r}: choose one of {sorted(REMAT)}")
    if isinstance(blocks_, Stack):
        _, ys = _scan(blocks_, x, valid_BN, remat, keep=True)
        return [ys[i] for i in range(blocks_.depth)]
    call, outs = REMAT[remat], []
    for block in blocks_:
        graphdef, state = nnx.split(block)
        x = call(graphdef, state, x, valid_BN)
        outs.append(x)
    return outs


def apply_blocks(blocks_, x, valid_BN=None, *, remat: str = "none"):
    """x through the stack (``block_outputs``' last; x itself for an empty stack)."""
    if isinstance(blocks_, Stack):
        return _scan(blocks_, x, valid_BN, remat, keep=False)[0]
    outs = block_outputs(blocks_, x, valid_BN, remat=remat)
    return outs[-1] if outs else x


def _scan(stack: Stack, x, valid_BN, remat: str, keep: bool):
    """(the stack's output, every block's output stacked [depth, ...] if ``keep`` else None)."""
    if remat not in REMAT:
        raise ValueError(f"remat={remat!r}: choose one of {sorted(REMAT)}")
    graphdef, state = nnx.split(stack.layers)

    def body(x, params):
        y = _block_pure(graphdef, params, x, valid_BN)
        return y, (y if keep else None)

    if _REMAT_POLICIES[remat] is not None:
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[remat])
    return jax.lax.scan(body, x, state)


def patchify(x_B1FT, patch: int):
    """[B, 1, F, T] -> [B, (F/p)·(T/p), p·p], frequency-major tokens, (kh, kw) inside a patch.

    Equals a stride-p conv's input layout, so a Linear(p·p → D) over it is the conv patch embedding.
    """
    B, C, F, T = x_B1FT.shape
    if C != 1 or F % patch or T % patch:
        raise ValueError(f"input {x_B1FT.shape} must be [B, 1, F, T] with F, T multiples of {patch}")
    x = x_B1FT.reshape(B, F // patch, patch, T // patch, patch)
    return x.transpose(0, 1, 3, 2, 4).reshape(B, (F // patch) * (T // patch), patch * patch)


def sincos_pos_embed(dim: int, grid_f: int, grid_t: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sin-cos positions [1(+cls) + grid_f·grid_t, dim], as MAE/M2D compute them.

    The first half of the channels encodes the time index, the second the frequency index
    (MAE's ``meshgrid(w, h)`` order); the CLS position is zeros.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    t, f = np.meshgrid(np.arange(grid_t, dtype=np.float64), np.arange(grid_f, dtype=np.float64))

    def one_axis(pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_axis(t), one_axis(f)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


def gather_tokens(x_BND, ids_BK):
    """x[b, ids[b, k]] for every b, k."""
    return jnp.take_along_axis(x_BND, ids_BK[..., None], axis=1)
