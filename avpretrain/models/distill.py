"""Layer-to-layer distillation of an exported M2D-family encoder into a smaller student (``method="distill"``).

The recipe of de Oliveira et al. (Interspeech 2023) on our encoders: a layer analysis of the
teacher (``avpretrain eval layers``) shows which blocks carry what (arousal shallow, valence deep);
the student, a narrower and shallower ViT with about 20 % of the teacher's parameters, learns on
unlabeled audio to predict those blocks' hidden states and the teacher's output.

- Teacher: the encoder of ``config.teacher.path`` (an M2D, M2D-CLAP or M2D2 export, or another
  distilled student), frozen; ``prepare`` copies its architecture into ``config.teacher.model`` and
  its log-mel statistics into ``config.data.norm_stats`` (the student sees the teacher's input).
- Student: an M2D encoder of the same patch grid (``config.model``); width, depth and heads default
  to half the width and heads and 0.8 × the depth (≈ 20 % of the parameters).
- Targets (``config.distill``): pairs (student block s, teacher block t), 1-based: ``teacher_layers``
  as given, else the best layer per dimension of an ``eval layers`` JSON (``layers_from``), else
  evenly spaced; ``student_layers`` as given, else at the same relative depth, round(t · ds / dt).
  ``output`` adds (the student's output, the teacher's output), both after their final norm.
- Loss (DistilHuBERT's): per target a linear head maps the student's patch tokens to the teacher's
  width; L1 + ``cos_weight`` · (−log σ(cos)) against the teacher's tokens standardised per token
  (as M2D standardises its targets, so blocks of different scale weigh alike), averaged over tokens
  and targets.

The model is the student encoder itself (an ``M2D`` subclass) with the teacher and the heads as
extra attributes; ``encoder_only`` (exports) keeps just the student, so an export of a distillation
run is an M2D encoder: ``load_pretrained``, probes, ``eval layers`` and fine-tuning take it as is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import frontend, method
from avpretrain.models import m2d, vit

# What the optimizer trains: the student and the heads, never the teacher.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))
OUTPUT = "output"  # the target name of the (student output, teacher output) pair


def standardize(x_BND):
    """Each token standardised over its features (mean 0, unit variance; eps 1e-6)."""
    x = x_BND.astype(jnp.float32)
    return (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)


def target_loss(pred_BND, target_BND, cos_weight: float = 1.0):
    """(L1 + cos_weight · mean −log σ(cos), mean cos): DistilHuBERT's loss for one target."""
    pred, target = pred_BND.astype(jnp.float32), jax.lax.stop_gradient(target_BND.astype(jnp.float32))
    l1 = jnp.abs(pred - target).mean()
    cos = (pred * target).sum(-1) / (jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1) + 1e-8)
    return l1 + cos_weight * (-jax.nn.log_sigmoid(cos)).mean(), cos.mean()


class Distill(m2d.M2D):
    """The student encoder (its own M2D attributes) + ``teacher`` (frozen) + one ``heads`` entry per target."""

    TRAINABLE = TRAINABLE
    EMA = False

    def __init__(self, *, teacher: dict, pairs, cos_weight: float = 1.0, encoder_only: bool = False,
                 rngs: nnx.Rngs, **student):
        """``teacher``: the teacher encoder's ``m2d.M2D`` arguments; ``pairs``: ((student block or
        OUTPUT, teacher block or OUTPUT), ...), blocks 1-based; ``student``: the student's arguments."""
        pairs = tuple((s, t) for s, t in pairs)
        t_depth, s_depth = teacher["depth"], student["depth"]
        for s, t in pairs:
            if (s == OUTPUT) != (t == OUTPUT) or (s != OUTPUT and not (1 <= s <= s_depth and 1 <= t <= t_depth)):
                raise ValueError(f"distillation target (student {s}, teacher {t}): blocks are 1-based, the student "
                                 f"has {s_depth}, the teacher {t_depth}; {OUTPUT!r} pairs with {OUTPUT!r}")
        if not pairs:
            raise ValueError("no distillation targets: give distill.teacher_layers or distill.output=True")
        super().__init__(encoder_only=True, rngs=rngs, **student)
        self.encoder_only = encoder_only
        self.pairs, self.cos_weight = pairs, float(cos_weight)
        if encoder_only:
            return
        if (teacher["input_frames"], teacher.get("n_mels", 80), teacher.get("patch", 16)) != (
                self.input_frames, self.n_mels, self.patch):
            raise ValueError("the student must see the teacher's input: input_frames, n_mels and patch differ")
        self.teacher = m2d.M2D(encoder_only=True, rngs=rngs, **teacher)
        self.heads = nnx.List([vit.dense(self.dims["width"], teacher["width"], ("embed", None), rngs,
                                         student.get("dtype", jnp.float32)) for _ in self.pairs])

    def hidden_states(self, encoder: m2d.M2D, lms, remat: str = "none") -> dict:
        """str(block index, 1-based) → its output's patch tokens, and OUTPUT → the final norm's: [B, N, D]."""
        outs = vit.block_outputs(encoder.blocks, encoder._with_cls(encoder._patch_tokens(lms)), remat=remat)
        states = {str(i + 1): h[:, 1:] for i, h in enumerate(outs)}
        states[OUTPUT] = encoder.norm(outs[-1])[:, 1:]
        return states

    def loss(self, batch, rng):
        lms = batch["lms"]
        teacher = jax.tree.map(jax.lax.stop_gradient, self.hidden_states(self.teacher, lms))
        student = self.hidden_states(self, lms, self.remat)
        losses, metrics = [], {}
        for head, (s, t) in zip(self.heads, self.pairs):
            loss, cos = target_loss(head(student[str(s)]), standardize(teacher[str(t)]), self.cos_weight)
            losses.append(loss)
            name = "out" if t == OUTPUT else f"t{t}"
            metrics |= {f"loss_{name}": loss, f"cos_{name}": cos}
        loss = jnp.mean(jnp.stack(losses))
        return loss, metrics

    def flops_per_example(self) -> float:
        """Teacher forward + student forward and backward (3×) + the heads (3×), matmuls and attention."""
        n = self.num_patches
        p2 = self.patch * self.patch
        td = self.teacher.dims

        def encoder(d):
            return 2 * n * p2 * d["width"] + m2d.transformer_flops(1 + n, d["width"], d["depth"], d["mlp_ratio"])

        heads = len(self.pairs) * 2 * n * self.dims["width"] * td["width"]
        return float(encoder(td) + 3 * (encoder(self.dims) + heads))


# -- the config ---------------------------------------------------------------------------------
def pairs_from_config(config) -> tuple:
    """((student block, teacher block), ..., (OUTPUT, OUTPUT)) of a prepared config."""
    d = config.distill
    pairs = tuple(zip((int(s) for s in d.student_layers), (int(t) for t in d.teacher_layers)))
    return pairs + (((OUTPUT, OUTPUT),) if d.output else ())


def create(config, rngs: nnx.Rngs, encoder_only: bool = False):
    if not config.teacher.model:
        raise ValueError("config.teacher.model is empty: it is read from config.teacher.path when a run starts "
                         "(avpretrain train; avpretrain bench with --config.data.dir)")
    student = m2d.kwargs_from_config(config.model, encoder_only=True)
    student.pop("encoder_only")
    teacher = m2d.kwargs_from_config(config.teacher.model, encoder_only=True)
    teacher.pop("encoder_only")
    return Distill(teacher=teacher, pairs=pairs_from_config(config), cos_weight=float(config.distill.cos_weight),
                   encoder_only=encoder_only, rngs=rngs, **student)


def init_sources(config) -> list:
    if not config.teacher.path:
        raise ValueError("config.teacher.path is empty: name the exported encoder to distil")
    return [method.InitSource(str(config.teacher.path), m2d.M2D.ENCODER, into=("teacher",))]


def layers_from_analysis(path, teacher_depth: int, output: bool) -> tuple[int, ...]:
    """The teacher blocks an ``eval layers`` JSON found best (one per dimension or metric), sorted and
    unique; the last block is left to the output target when ``output``."""
    from avpretrain import workdir as workdir_lib

    result = workdir_lib.read_json(path)
    if "best" not in result or "layers" not in result:
        raise ValueError(f"distill.layers_from={path}: not an `avpretrain eval layers` JSON (no 'best'/'layers')")
    if int(result["layers"]) != teacher_depth:
        raise ValueError(f"distill.layers_from={path} analysed a {result['layers']}-block encoder; the teacher has "
                         f"{teacher_depth} blocks")
    layers = sorted({int(b["layer"]) for b in result["best"].values()})
    return tuple(t for t in layers if not (output and t == teacher_depth))


def evenly_spaced(teacher_depth: int, output: bool, count: int = 3) -> tuple[int, ...]:
    """``count`` teacher blocks at equal steps ending at the last (DistilHuBERT's 4, 8, 12 of 12)."""
    count = min(count, teacher_depth)
    layers = sorted({max(1, round(teacher_depth * (i + 1) / count)) for i in range(count)})
    return tuple(t for t in layers if not (output and t == teacher_depth))


def student_size(teacher_dims: dict) -> dict:
    """Half the width (a multiple of 4 for the sin-cos positions) and heads, 0.8 × the depth."""
    width = max(4, (teacher_dims["width"] // 2) // 4 * 4)
    heads = max(1, teacher_dims["num_heads"] // 2)
    while width % heads:
        heads -= 1
    return {"width": width, "depth": max(1, round(0.8 * teacher_dims["depth"])), "num_heads": heads}


def encoder_params(model_config) -> int:
    """Trainable parameters of an M2D encoder with this ``config.model`` (shapes only, nothing computed)."""
    from avpretrain import sharding

    kwargs = m2d.kwargs_from_config(model_config, encoder_only=True)
    with sharding.mesh_rules(sharding.single_device_mesh(), sharding.DEFAULT_RULES):
        model = nnx.eval_shape(lambda: m2d.M2D(rngs=nnx.Rngs(0), **kwargs))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def prepare(config) -> None:
    """Fills the teacher's architecture and statistics, the student's size and the targets."""
    import ml_collections

    from avpretrain import metrics as metrics_lib

    src, stats = m2d.encoder_source(config.teacher.path, "teacher.path", config.data.sample_rate)
    if config.data.norm_stats and tuple(float(v) for v in config.data.norm_stats) != stats:
        raise ValueError(f"config.data.norm_stats={tuple(config.data.norm_stats)}: the student must see the teacher's "
                         f"input, normalised with its statistics {stats}; leave it empty")
    teacher = ml_collections.ConfigDict(src["model"])
    t_dims = m2d.kwargs_from_config(teacher, encoder_only=True)
    m, d = config.model, config.distill
    with config.unlocked():
        config.teacher.method = src["method"]
        config.teacher.model = teacher
        config.data.norm_stats = stats
        for key in ("size", "input_frames", "n_mels", "patch", "mlp_ratio", "mask_ratio"):
            if m.get(key) is None:
                m[key] = teacher.get(key, m2d.M2D.__init__.__kwdefaults__.get(key))
            elif key in ("input_frames", "n_mels", "patch") and m[key] != teacher.get(key, m[key]):
                raise ValueError(f"config.model.{key}={m[key]}: the student sees the teacher's input "
                                 f"({key}={teacher.get(key)}); leave it unset")
        for key, value in student_size(t_dims).items():
            if m.get(key) is None:
                m[key] = value
        if not d.teacher_layers:
            d.teacher_layers = (layers_from_analysis(d.layers_from, t_dims["depth"], d.output) if d.layers_from
                                else evenly_spaced(t_dims["depth"], d.output))
        s_depth = int(m.depth)
        if not d.student_layers:
            d.student_layers = tuple(max(1, round(int(t) * s_depth / t_dims["depth"])) for t in d.teacher_layers)
    if len(d.student_layers) != len(d.teacher_layers):
        raise ValueError(f"config.distill.student_layers={tuple(d.student_layers)} and teacher_layers="
                         f"{tuple(d.teacher_layers)} must pair up one to one")
    t_depth = t_dims["depth"]
    if not (all(1 <= int(v) <= s_depth for v in d.student_layers)
            and all(1 <= int(v) <= t_depth for v in d.teacher_layers)):
        raise ValueError(f"config.distill: student_layers={tuple(d.student_layers)} must lie in 1..{s_depth} and "
                         f"teacher_layers={tuple(d.teacher_layers)} in 1..{t_depth} (1-based blocks)")
    n_student, n_teacher = encoder_params(m), encoder_params(teacher)
    pairs = ", ".join(f"{s}→{t}" for s, t in pairs_from_config(config))
    metrics_lib.log(f"distill: student {m.width}×{m.depth} ({n_student:,} encoder params, "
                    f"{100 * n_student / n_teacher:.1f} % of the teacher's {n_teacher:,}); targets student→teacher "
                    f"block: {pairs}")


METHOD = method.register(method.Method(
    name="distill", create=create, inputs=m2d.audio_inputs, frontend=(frontend.LogMel(),),
    init_sources=init_sources, prepare=prepare, pretrained=m2d.pretrained_encoder))
