"""EVAR-style linear evaluation: logistic regression on frozen embeddings.

Features are standardised with train statistics; one linear layer is trained with Adam in
shuffled minibatches; early stopping watches a validation metric and the weights of the best
validation epoch give the test figure. Single-label (labels [N], class indices): softmax
cross-entropy, accuracy. Multi-label (labels [N, C], multi-hot): sigmoid binary cross-entropy per
class, mAP (``retrieval.mean_average_precision`` of the logits: macro over the classes with a
positive in the split).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avpretrain.evaluate.retrieval import mean_average_precision

_STD_FLOOR = 1e-8  # dimensions with a smaller train std are treated as constant
FALLBACK_VALID_FRACTION = 0.1


METRICS = ("accuracy", "mAP")  # single-label, multi-label


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """The kept weights' test and validation figures in ``metric``: "accuracy" (single-label) or
    "mAP" (multi-label; the classes without a positive in a split are left out of its mAP and
    counted in ``*_classes_without_positives``, 0 for single-label)."""

    metric: str
    test_score: float
    valid_score: float
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    valid_from_train: bool = False  # validation was a held-out 10% of train
    test_classes_without_positives: int = 0
    valid_classes_without_positives: int = 0

    @property
    def test_accuracy(self) -> float:
        return self._accuracy("test")

    @property
    def valid_accuracy(self) -> float:
        return self._accuracy("valid")

    def _accuracy(self, split: str) -> float:
        if self.metric != "accuracy":
            raise AttributeError(f"{split}_accuracy: a multi-label probe is scored by {self.metric} "
                                 f"({split}_score)")
        return getattr(self, f"{split}_score")

    def as_dict(self) -> dict:
        """The fields plus ``test_<metric>`` and ``valid_<metric>`` (``test_accuracy``, ``test_mAP``)."""
        return dataclasses.asdict(self) | {f"test_{self.metric}": self.test_score,
                                           f"valid_{self.metric}": self.valid_score}


def _check_split(name, x, y, num_classes, multi_label=False):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"{name}_x must be [N, D], got shape {x.shape}")
    if multi_label:
        if y.shape != (len(x), num_classes):
            raise ValueError(f"{name}_y must be multi-hot [N, C] with N = len({name}_x) = {len(x)} and "
                             f"C = num_classes = {num_classes} (as train_y), got shape {y.shape}")
    elif y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{name}_y must be [N] with N = len({name}_x) = {len(x)}, "
                         f"got shape {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} split is empty")
    if multi_label:
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or not np.isin(y, (0, 1)).all():
            raise ValueError(f"{name}_y must be multi-hot: every entry 0 or 1")
        y = y.astype(np.float32)
    else:
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name}_y must hold integer labels, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name}_y labels must lie in [0, {num_classes}), "
                             f"got [{y.min()}, {y.max()}]")
        y = y.astype(np.int32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}_x contains NaN or inf")
    return x.astype(np.float32), y


def _classes_without_positives(name, y_NC) -> int:
    """How many classes have no positive in split ``name`` (left out of its mAP); none at all is an error."""
    missing = int((~(y_NC > 0).any(axis=0)).sum())
    if missing == y_NC.shape[1]:
        raise ValueError(f"{name}_y has no positive in any class: its mAP is undefined")
    return missing


def _split_off_validation(x, y, seed):
    order = np.random.default_rng(seed).permutation(len(x))
    num_valid = max(1, round(FALLBACK_VALID_FRACTION * len(x)))
    if num_valid >= len(x):
        raise ValueError(f"need at least 2 train examples to hold out validation, got {len(x)}")
    valid, train = order[:num_valid], order[num_valid:]
    return x[train], y[train], x[valid], y[valid]


def _logits(params, x_ND):
    return jnp.matmul(x_ND, params["w"], precision=jax.lax.Precision.HIGHEST) + params["b"]


def _loss_and_accuracy(params, x_ND, y_N, mask_N):
    logits_NC = _logits(params, x_ND)
    loss_N = optax.softmax_cross_entropy_with_integer_labels(logits_NC, y_N)
    correct_N = jnp.argmax(logits_NC, axis=-1) == y_N
    count = jnp.maximum(mask_N.sum(), 1)
    return (loss_N * mask_N).sum() / count, (correct_N * mask_N).sum() / count


def _multi_label_loss(params, x_ND, y_NC, mask_N):
    """Sigmoid binary cross-entropy, averaged over the classes and the unmasked examples."""
    loss_N = optax.sigmoid_binary_cross_entropy(_logits(params, x_ND), y_NC).mean(axis=-1)
    return (loss_N * mask_N).sum() / jnp.maximum(mask_N.sum(), 1)


def _optimizer(learning_rate, weight_decay):
    """Adam with torch-style (coupled) L2 weight decay on all parameters."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


@functools.partial(jax.jit, static_argnames=("batch_size", "multi_label"))
def _train_epoch(params, opt_state, key, x_ND, y_N, learning_rate, weight_decay, *,
                 batch_size, multi_label=False):
    """One shuffled pass over (x, y); the last batch is padded and the padding masked out.
    ``multi_label``: y is [N, C] multi-hot and the loss ``_multi_label_loss``."""
    num_train = len(y_N)
    num_batches = -(-num_train // batch_size)
    order = jax.random.permutation(key, num_train)
    index_KB = jnp.pad(order, (0, num_batches * batch_size - num_train)).reshape(
        num_batches, batch_size)
    mask_KB = (jnp.arange(num_batches * batch_size) < num_train).reshape(
        num_batches, batch_size)
    optimizer = _optimizer(learning_rate, weight_decay)
    loss_fn = _multi_label_loss if multi_label else lambda *args: _loss_and_accuracy(*args)[0]

    def step(carry, batch):
        params, opt_state = carry
        index_B, mask_B = batch
        grads = jax.grad(lambda p: loss_fn(
            p, x_ND[index_B], y_N[index_B], mask_B))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (index_KB, mask_KB))
    return params, opt_state


@jax.jit
def _evaluate(params, x_ND, y_N):
    return _loss_and_accuracy(params, x_ND, y_N, jnp.ones(y_N.shape, jnp.float32))


@jax.jit
def _evaluate_multi_label(params, x_ND, y_NC):
    """The mean loss and the logits [N, C] (their mAP is computed on host)."""
    return _multi_label_loss(params, x_ND, y_NC, jnp.ones(len(y_NC), jnp.float32)), _logits(params, x_ND)


def _loss_and_score(params, x_ND, y, y_host):
    """(loss, accuracy) of single-label y_N, or (loss, mAP) of multi-hot y_NC (``y_host``: y on host)."""
    if y.ndim == 1:
        return tuple(float(v) for v in _evaluate(params, x_ND, y))
    loss, logits_NC = _evaluate_multi_label(params, x_ND, y)
    return float(loss), mean_average_precision(np.asarray(logits_NC), y_host)


def train_linear_probe(train_x, train_y, valid_x, valid_y, test_x, test_y, *,
                       num_classes: int, learning_rate: float = 1e-3,
                       batch_size: int = 128, max_epochs: int = 200, patience: int = 20,
                       weight_decay: float = 0.0, seed: int = 0) -> ProbeResult:
    """Trains a linear classifier on [N, D] features; returns its test and validation figures.

    Labels: int class indices y_N (single-label: softmax cross-entropy, scored by accuracy) or,
    when ``train_y`` is 2-D, multi-hot y_NC of 0/1 (floats or ints) with C = ``num_classes``
    (multi-label: sigmoid binary cross-entropy, scored by mAP over the classes with a positive in
    the split; every split needs a positive somewhere). An empty (or None) validation split is
    replaced by a seeded 10% of train. Training stops after `patience` epochs without a better
    validation score; among epochs of equal score the lower validation loss wins. `weight_decay`
    is an L2 term on all parameters added to the gradient (as torch's Adam). Deterministic given
    `seed`.
    """
    multi_label = np.ndim(train_y) == 2
    if num_classes < (1 if multi_label else 2):
        raise ValueError(f"num_classes must be >= {1 if multi_label else 2}, got {num_classes}")
    for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs),
                        ("patience", patience)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    train_x, train_y = _check_split("train", train_x, train_y, num_classes, multi_label)
    test_x, test_y = _check_split("test", test_x, test_y, num_classes, multi_label)
    valid_from_train = valid_x is None or len(valid_x) == 0
    if valid_from_train and valid_y is not None and len(valid_y):
        raise ValueError(f"valid_x is empty but valid_y has {len(valid_y)} labels")
    if valid_from_train:
        train_x, train_y, valid_x, valid_y = _split_off_validation(train_x, train_y, seed)
    else:
        valid_x, valid_y = _check_split("valid", valid_x, valid_y, num_classes, multi_label)
    dims = {name: x.shape[1] for name, x in
            (("train", train_x), ("valid", valid_x), ("test", test_x))}
    if len(set(dims.values())) != 1:
        raise ValueError(f"feature dimensions differ between splits: {dims}")
    without_positives = ({name: _classes_without_positives(name, y)
                          for name, y in (("train", train_y), ("valid", valid_y), ("test", test_y))}
                         if multi_label else {"valid": 0, "test": 0})
    on_host = {"valid": valid_y, "test": test_y}

    mean_D = train_x.mean(axis=0, dtype=np.float64)
    std_D = train_x.std(axis=0, dtype=np.float64)
    std_D = np.where(std_D < _STD_FLOOR, 1.0, std_D)

    def standardise(x):
        return jnp.asarray(((x - mean_D) / std_D).astype(np.float32))

    train_x, valid_x, test_x = map(standardise, (train_x, valid_x, test_x))
    train_y, valid_y, test_y = map(jnp.asarray, (train_y, valid_y, test_y))

    dim = train_x.shape[1]
    init_key, shuffle_key = jax.random.split(jax.random.key(seed))
    w_key, b_key = jax.random.split(init_key)
    bound = 1.0 / np.sqrt(dim)  # torch nn.Linear's default init
    params = {"w": jax.random.uniform(w_key, (dim, num_classes), minval=-bound, maxval=bound),
              "b": jax.random.uniform(b_key, (num_classes,), minval=-bound, maxval=bound)}
    opt_state = _optimizer(learning_rate, weight_decay).init(params)
    hyperparams = dict(learning_rate=jnp.float32(learning_rate),
                       weight_decay=jnp.float32(weight_decay),
                       batch_size=min(batch_size, len(train_y)), multi_label=multi_label)

    best = None  # (score, loss, epoch, params)
    epochs_since_better_score = 0
    for epoch in range(1, max_epochs + 1):
        params, opt_state = _train_epoch(params, opt_state, jax.random.fold_in(shuffle_key, epoch),
                                         train_x, train_y, **hyperparams)
        loss, score = _loss_and_score(params, valid_x, valid_y, on_host["valid"])
        if best is None or score > best[0]:
            best = (score, loss, epoch, params)
            epochs_since_better_score = 0
        else:
            if score == best[0] and loss < best[1]:
                best = (score, loss, epoch, params)
            epochs_since_better_score += 1
            if epochs_since_better_score >= patience:
                break

    valid_score, _, best_epoch, best_params = best
    _, test_score = _loss_and_score(best_params, test_x, test_y, on_host["test"])
    return ProbeResult(metric=METRICS[multi_label], test_score=test_score, valid_score=valid_score,
                       best_epoch=best_epoch, epochs_run=epoch, valid_from_train=valid_from_train,
                       test_classes_without_positives=without_positives["test"],
                       valid_classes_without_positives=without_positives["valid"])
