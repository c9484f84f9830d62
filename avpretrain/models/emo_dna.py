"""Emo-DNA: unsupervised cross-corpus emotion recognition by decoupling and alignment (Ye et al.,
ACM MM 2023; ``method="emo_dna"``). The authors' code was never released: this is our reading of
the paper's description (DESIGN §5), with every choice named below.

Inputs per step: half a batch of labelled **source** clips (``data.dir``) and half a batch of
**target** clips (``data.target_dir``) read without their labels (``data.streams.Concatenated``;
the target stream asks the pipeline for the waveform only, so a target label never enters a batch).

- Backbone: an exported M2D-family encoder (``init.path``); h = the clip's scene embedding (frame
  embeddings averaged over time), as downstream users get it.
- Emotion encoder and corpus encoder: two MLPs (Linear → GELU → Linear) h → z_e, h → z_c; the
  emotion classifier is linear on z_e. Only the emotion path (backbone, emotion encoder,
  classifier) is exported.
- Prototypes (non-trainable state, updated every step, no gradient): per emotion class the EMA
  (momentum ``emo_dna.momentum``) of the L2-normalised z_e of that class's *source* clips in the
  batch, renormalised; per corpus (source, target) the same of z_c. A prototype takes the batch
  mean the first time its class or corpus is seen.
- Contrastive decoupling: source z_e against the emotion prototypes (InfoNCE with the label,
  temperature ``emo_dna.temperature``) + every z_c against the corpus prototypes (InfoNCE with its
  corpus) + ``weights.difference`` × ‖Ẑ_eᵀ Ẑ_c‖²_F / B² (the two codes carry different information).
- Corpus-level alignment: the squared MMD between the source and target z_e (Gaussian kernels of
  bandwidths ``MMD_BANDWIDTHS`` on the unit sphere).
- Class-level alignment: target clips whose pseudo-label (the classifier's argmax) passes its
  class's adaptive threshold are pulled to that class's emotion prototype (InfoNCE). Thresholds
  are FreeMatch's self-adaptive ones: τ = EMA of the target's mean confidence, p̃ = EMA of the
  target's mean class probabilities (momentum ``emo_dna.threshold_momentum``, both starting at
  1/C), τ_c = τ · p̃_c / max p̃. The thresholds and the share of selected target clips are metrics
  of every step.
- Diversity (ours, not in the paper's description; FreeMatch's fairness term and SHOT's diversity
  serve the same end): log C − H(p̄), p̄ the mean predicted class distribution over the batch's
  target clips. Without it the demo's adaptation collapsed: every target clip pseudo-labelled one
  class, whose threshold then rose while the others' fell to 0, reinforcing it (README).
- Loss = CE(source) + ``weights.decouple`` · decoupling + ramp · (``weights.corpus_align`` · MMD +
  ``weights.class_align`` · class alignment + ``weights.diversity`` · diversity), the ramp rising
  linearly to 1 over the first ``emo_dna.ramp_fraction`` of training (prototypes and thresholds settle first).

``emo_dna.adapt=False`` (``configs/emo_dna.py:baseline``): the same model trained with the source
cross-entropy only, on full batches of source clips, no target read: the source-only baseline.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import audio, method
from avpretrain.models import m2d, vit

MMD_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0)  # Gaussian kernel widths; unit vectors lie within distance 2
SOURCE, TARGET = 0, 1


class Stat(nnx.Variable):
    """Non-trainable Emo-DNA state updated in place each step (prototypes, thresholds, the step count)."""


def l2_normalize(x, axis=-1):
    return x / jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-12)


def update_prototypes(protos_KD, seen_K, feats_BD, ids_B, mask_B, momentum: float):
    """(new prototypes [K, D] (unit rows), new seen counts [K]): for each k with masked rows of id k in
    the batch, mean ← their mean (of the unit ``feats``); a prototype never seen takes the mean, else
    normalise(momentum · old + (1 − momentum) · mean). Others stay as they are."""
    feats = l2_normalize(jax.lax.stop_gradient(feats_BD).astype(jnp.float32))
    onehot = jax.nn.one_hot(ids_B, protos_KD.shape[0]) * mask_B[:, None]         # [B, K]
    count = onehot.sum(0)
    mean = l2_normalize(onehot.T @ feats / jnp.maximum(count, 1)[:, None])
    blended = jnp.where((seen_K > 0)[:, None], l2_normalize(momentum * protos_KD + (1 - momentum) * mean), mean)
    return jnp.where((count > 0)[:, None], blended, protos_KD), seen_K + count


def update_thresholds(tau, class_prob_C, probs_BC, mask_B, momentum: float):
    """FreeMatch's self-adaptive threshold state after one batch of (masked) target probabilities:
    τ ← m·τ + (1 − m)·mean max-probability, p̃ ← m·p̃ + (1 − m)·mean probabilities (unchanged
    without masked rows)."""
    n = mask_B.sum()
    w = mask_B / jnp.maximum(n, 1)
    new_tau = momentum * tau + (1 - momentum) * jnp.sum(w * probs_BC.max(-1))
    new_prob = momentum * class_prob_C + (1 - momentum) * (w @ probs_BC)
    return jnp.where(n > 0, new_tau, tau), jnp.where(n > 0, new_prob, class_prob_C)


def class_thresholds(tau, class_prob_C):
    """τ_c = τ · p̃_c / max p̃ [C]."""
    return tau * class_prob_C / jnp.max(class_prob_C)


def select(probs_BC, mask_B, thresholds_C):
    """(pseudo-labels [B], selected [B] bool): argmax, kept where its probability ≥ its class's threshold."""
    pseudo = probs_BC.argmax(-1)
    return pseudo, mask_B.astype(bool) & (probs_BC.max(-1) >= thresholds_C[pseudo])


def mmd2(x_BD, a_B, b_B):
    """Squared MMD between the rows of ``x`` weighted by masks ``a`` and ``b`` (multi-bandwidth Gaussian kernel)."""
    d2 = jnp.maximum(jnp.sum(x_BD ** 2, -1)[:, None] + jnp.sum(x_BD ** 2, -1)[None] - 2 * x_BD @ x_BD.T, 0)
    k = sum(jnp.exp(-d2 / (2 * s * s)) for s in MMD_BANDWIDTHS) / len(MMD_BANDWIDTHS)
    wa, wb = a_B / jnp.maximum(a_B.sum(), 1), b_B / jnp.maximum(b_B.sum(), 1)
    return wa @ k @ wa + wb @ k @ wb - 2 * wa @ k @ wb


def _info_nce(z_BD, protos_KD, ids_B, temperature):
    """Per row −log softmax(z · protos / T)[id] [B] (z and the prototypes unit vectors)."""
    logits = z_BD @ protos_KD.T / temperature
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), ids_B[:, None], axis=1)[:, 0]


class MLP(nnx.Module):
    def __init__(self, din: int, hidden: int, dout: int, rngs: nnx.Rngs, dtype):
        self.fc1 = vit.dense(din, hidden, ("embed", None), rngs, dtype)
        self.fc2 = vit.dense(hidden, dout, (None, None), rngs, dtype)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class EmoDNA(m2d.M2D):
    """The backbone (its own M2D attributes) + emotion encoder + classifier (exported) + corpus encoder
    and the prototype / threshold state (training only)."""

    TRAINABLE = nnx.Param
    EMA = False

    def __init__(self, *, class_names, norm_stats, hidden: int = 256, dim: int = 128, temperature: float = 0.1,
                 momentum: float = 0.9, threshold_momentum: float = 0.99, weights=None, ramp_steps: int = 0,
                 adapt: bool = True, encoder_only: bool = False, rngs: nnx.Rngs, **encoder):
        super().__init__(encoder_only=True, rngs=rngs, **encoder)
        self.encoder_only, self.adapt = encoder_only, bool(adapt)
        self.class_names = tuple(class_names)
        C = len(self.class_names)
        if C < 2:
            raise ValueError(f"Emo-DNA needs at least 2 emotion classes, got {self.class_names}")
        self.norm_stats = tuple(float(v) for v in norm_stats)
        self.temperature, self.momentum, self.threshold_momentum = float(temperature), float(momentum), \
            float(threshold_momentum)
        self.weights = tuple(sorted((dict(decouple=1.0, difference=0.1, corpus_align=1.0, class_align=1.0,
                                          diversity=1.0)
                                     | dict(weights or {})).items()))
        self.ramp_steps = int(ramp_steps)
        dtype = encoder.get("dtype", jnp.float32)
        features = self.grid[0] * self.dims["width"]
        self.emotion_encoder = MLP(features, hidden, dim, rngs, dtype)
        self.classifier = vit.dense(dim, C, (None, None), rngs, dtype)
        if encoder_only:
            return
        self.corpus_encoder = MLP(features, hidden, dim, rngs, dtype)
        self.emotion_protos, self.emotion_seen = Stat(jnp.zeros((C, dim))), Stat(jnp.zeros((C,)))
        self.corpus_protos, self.corpus_seen = Stat(jnp.zeros((2, dim))), Stat(jnp.zeros((2,)))
        self.tau, self.class_prob = Stat(jnp.asarray(1.0 / C)), Stat(jnp.full((C,), 1.0 / C))
        self.steps = Stat(jnp.asarray(0, jnp.int32))

    def _scene(self, waves):
        lms = audio.normalize(audio.log_mel(waves), *self.norm_stats)[:, None]
        return self.frame_embeddings(lms).mean(1)

    def predict(self, batch):
        """Eval mode: float32 emotion logits [B, C] of ``batch["audio"]``."""
        return self.classifier(self.emotion_encoder(self._scene(batch["audio"]))).astype(jnp.float32)

    def thresholds(self):
        return class_thresholds(self.tau[...], self.class_prob[...])

    def loss(self, batch, rng):
        h = self._scene(batch["audio"])
        z_e = self.emotion_encoder(h)
        logits = self.classifier(z_e).astype(jnp.float32)
        domain = batch["domain"].astype(jnp.int32)
        src, tgt = (domain == SOURCE).astype(jnp.float32), (domain == TARGET).astype(jnp.float32)
        labels = jnp.where(domain == SOURCE, batch["label"].astype(jnp.int32), 0)   # a target row's label is never used
        n_src = jnp.maximum(src.sum(), 1)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], axis=1)[:, 0]
        cls = jnp.sum(ce * src) / n_src
        metrics = {"cls": cls, "accuracy": jnp.sum((logits.argmax(-1) == labels) * src) / n_src}
        if not self.adapt:
            return cls, metrics | {"loss": cls}

        z_c = self.corpus_encoder(h)
        e, c = l2_normalize(z_e.astype(jnp.float32)), l2_normalize(z_c.astype(jnp.float32))
        # state: prototypes from this batch's source labels / corpora, thresholds from its target predictions
        protos, seen = update_prototypes(self.emotion_protos[...], self.emotion_seen[...], e, labels, src,
                                         self.momentum)
        corpus, corpus_seen = update_prototypes(self.corpus_protos[...], self.corpus_seen[...], c, domain,
                                                jnp.ones_like(src), self.momentum)
        probs = jax.nn.softmax(jax.lax.stop_gradient(logits), -1)
        tau, class_prob = update_thresholds(self.tau[...], self.class_prob[...], probs, tgt, self.threshold_momentum)
        self.emotion_protos[...], self.emotion_seen[...] = protos, seen
        self.corpus_protos[...], self.corpus_seen[...] = corpus, corpus_seen
        self.tau[...], self.class_prob[...] = tau, class_prob
        thresholds = class_thresholds(tau, class_prob)
        pseudo, selected = select(probs, tgt, thresholds)
        step = self.steps[...]
        self.steps[...] = step + 1

        dec_emotion = jnp.sum(_info_nce(e, protos, labels, self.temperature) * src) / n_src
        dec_corpus = jnp.mean(_info_nce(c, corpus, domain, self.temperature))
        difference = jnp.sum((e.T @ c) ** 2) / e.shape[0] ** 2
        mmd = mmd2(e, src, tgt)
        sel = selected.astype(jnp.float32)
        class_align = jnp.sum(_info_nce(e, protos, pseudo, self.temperature) * sel) / jnp.maximum(sel.sum(), 1)
        mean_target = (tgt / jnp.maximum(tgt.sum(), 1)) @ jax.nn.softmax(logits, -1)          # p̄ [C], with gradient
        diversity = jnp.log(mean_target.shape[0]) + jnp.sum(mean_target * jnp.log(mean_target + 1e-8))
        ramp = jnp.minimum(1.0, step / max(self.ramp_steps, 1)) if self.ramp_steps else 1.0
        w = dict(self.weights)
        decouple = dec_emotion + dec_corpus + w["difference"] * difference
        loss = cls + w["decouple"] * decouple + ramp * (w["corpus_align"] * mmd + w["class_align"] * class_align
                                                        + w["diversity"] * diversity)
        metrics |= {"loss": loss, "dec_emotion": dec_emotion, "dec_corpus": dec_corpus, "difference": difference,
                    "mmd": mmd, "class_align": class_align, "diversity": diversity, "ramp": jnp.asarray(ramp, jnp.float32),
                    "selected": sel.sum() / jnp.maximum(tgt.sum(), 1), "tau": tau,
                    **{f"thr_{name}": thresholds[i] for i, name in enumerate(self.class_names)}}
        return loss, metrics

    def flops_per_example(self) -> float:
        d, n = self.dims, self.num_patches
        return float(3 * (2 * n * self.patch ** 2 * d["width"]
                          + m2d.transformer_flops(1 + n, d["width"], d["depth"], d["mlp_ratio"])))


# -- the method ---------------------------------------------------------------------------------
def create(config, rngs: nnx.Rngs, encoder_only: bool = False):
    if not config.model or not config.model.get("class_names"):
        raise ValueError("config.model is empty: it is read from config.init.path and the datasets when a run starts")
    encoder = m2d.kwargs_from_config(config.model, encoder_only=True)
    encoder.pop("encoder_only")
    e = config.emo_dna
    return EmoDNA(class_names=tuple(config.model.class_names), norm_stats=tuple(config.data.norm_stats),
                  hidden=int(e.hidden), dim=int(e.dim), temperature=float(e.temperature), momentum=float(e.momentum),
                  threshold_momentum=float(e.threshold_momentum), weights=dict(e.weights),
                  ramp_steps=int(round(float(e.ramp_fraction) * int(config.total_steps))), adapt=bool(e.adapt),
                  encoder_only=encoder_only, rngs=rngs, **encoder)


def inputs(config) -> dict:
    C = len(config.model.get("class_names", ())) or 2
    return m2d.audio_inputs(config) | {"label": method.Field((), "int32", C), "domain": method.Field((), "int32", 2)}


def init_sources(config) -> list:
    if not config.init.path:
        raise ValueError("config.init.path is empty: name the exported encoder to adapt")
    return [method.InitSource(str(config.init.path), m2d.M2D.ENCODER)]


def shared_classes(source: list[str], target: list[str], classes=()) -> list[str]:
    """The classes both corpora are read with: ``classes`` when given (each in both), else the source's
    when the two sets are equal; otherwise a ValueError listing both sets and the shared ones."""
    if classes:
        classes = [str(c) for c in classes]
        missing = {what: [c for c in classes if c not in names] for what, names in (("source", source),
                                                                                   ("target", target))}
        if any(missing.values()):
            raise ValueError(f"config.data.classes={tuple(classes)}: not in the " + "; ".join(
                f"{what} classes {names} ({missing[what]} missing)" for what, names in (("source", source),
                                                                                         ("target", target))
                if missing[what]))
        return classes
    if set(source) != set(target):
        shared = [c for c in source if c in target]
        raise ValueError(f"the source classes {source} and the target classes {target} differ: adapt on the shared "
                         f"ones with --config.data.classes={','.join(shared)} (clips of other classes are left out of "
                         "source training and target evaluation; the unlabelled target is read whole)")
    return list(source)


def prepare(config) -> None:
    """Fills the backbone's architecture and statistics (``init.path``) and the classes, checks the datasets."""
    import ml_collections

    from avpretrain import metrics as metrics_lib
    from avpretrain.data import folds, source as source_lib

    src, stats = m2d.encoder_source(config.init.path, "init.path", config.data.sample_rate)
    source_lib.find_dataset_dir(config.data.dir)
    source = folds.dataset_class_names(config.data.dir)
    adapt = bool(config.emo_dna.adapt)
    if adapt:
        if not config.data.target_dir:
            raise ValueError("config.data.target_dir is empty: name the unlabelled target corpus (or train the "
                             "source-only baseline: configs/emo_dna.py:baseline)")
        source_lib.find_dataset_dir(config.data.target_dir)
        target = folds.dataset_class_names(config.data.target_dir)   # the label *names* only, never a label
        classes = shared_classes(source, target, tuple(config.data.classes))
        if config.batch_size % 2:
            raise ValueError(f"batch_size={config.batch_size}: half source, half target clips: make it even")
    else:
        classes = [str(c) for c in config.data.classes] or source
        missing = [c for c in classes if c not in source]
        if missing:
            raise ValueError(f"config.data.classes={tuple(classes)}: the source {config.data.dir} has no {missing}")
    with config.unlocked():
        config.model = ml_collections.ConfigDict(src["model"])
        config.model.class_names = tuple(classes)
        config.model.task = "classify"
        config.emo_dna.init_method = src["method"]
        config.data.norm_stats = stats
        config.data.classes = tuple(classes) if classes != source else ()
    metrics_lib.log(f"emo-dna: {len(classes)} classes {classes}; source {config.data.dir}"
                    + (f" → target {config.data.target_dir} (unlabelled)" if adapt else " only (baseline)"))


def train_data(config):
    """Source batches (``data.dir``, labelled, of ``data.classes``) and, when adapting, as many target
    batches (``data.target_dir``, waveforms only), concatenated per step with ``domain`` 0 / 1."""
    from avpretrain.data import pipeline, streams

    adapt = bool(config.emo_dna.adapt)
    declared = inputs(config)
    fields = pipeline.model_fields(declared)
    source = config.copy_and_resolve_references()
    with source.unlocked():
        source.batch_size = config.batch_size // 2 if adapt else config.batch_size
    parents = [pipeline.train_dataset(source, inputs=fields | {"label": declared["label"]})]
    if adapt:
        target = source.copy_and_resolve_references()
        with target.unlocked():
            target.data.dir, target.data.classes, target.data.folds = str(config.data.target_dir), (), ""
        parents.append(pipeline.train_dataset(target, seed=config.seed + 7717, inputs=fields))
    return streams.Concatenated(parents, fill={"label": -1})


def _predictor(model, config, meta=None):
    from avpretrain.models import classifier

    return classifier.Predictor(model, config, meta)


METHOD = method.register(method.Method(
    name="emo_dna", create=create, inputs=inputs, init_sources=init_sources, prepare=prepare, train_data=train_data,
    pretrained=_predictor, predict=lambda model, batch: model.predict(batch)))
