"""EVAR-style linear evaluation: logistic regression on frozen embeddings.

Features are standardised with train statistics; one linear layer is trained with Adam on
softmax cross-entropy in shuffled minibatches; early stopping watches validation accuracy
and the weights of the best validation epoch give the test accuracy.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

_STD_FLOOR = 1e-8  # dimensions with a smaller train std are treated as constant
FALLBACK_VALID_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    test_accuracy: float
    valid_accuracy: float
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    valid_from_train: bool = False  # validation was a held-out 10% of train


def _check_split(name, x, y, num_classes):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"{name}_x must be [N, D], got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{name}_y must be [N] with N = len({name}_x) = {len(x)}, "
                         f"got shape {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} split is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}_y must hold integer labels, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{name}_y labels must lie in [0, {num_classes}), "
                         f"got [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}_x contains NaN or inf")
    return x.astype(np.float32), y.astype(np.int32)


def _split_off_validation(x, y, seed):
    order = np.random.default_rng(seed).permutation(len(x))
    num_valid = max(1, round(FALLBACK_VALID_FRACTION * len(x)))
    if num_valid >= len(x):
        raise ValueError(f"need at least 2 train examples to hold out validation, got {len(x)}")
    valid, train = order[:num_valid], order[num_valid:]
    return x[train], y[train], x[valid], y[valid]


def _loss_and_accuracy(params, x_ND, y_N, mask_N):
    logits_NC = jnp.matmul(x_ND, params["w"], precision=jax.lax.Precision.HIGHEST) + params["b"]
    loss_N = optax.softmax_cross_entropy_with_integer_labels(logits_NC, y_N)
    correct_N = jnp.argmax(logits_NC, axis=-1) == y_N
    count = jnp.maximum(mask_N.sum(), 1)
    return (loss_N * mask_N).sum() / count, (correct_N * mask_N).sum() / count


def _optimizer(learning_rate, weight_decay):
    """Adam with torch-style (coupled) L2 weight decay on all parameters."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


@functools.partial(jax.jit, static_argnames="batch_size")
def _train_epoch(params, opt_state, key, x_ND, y_N, learning_rate, weight_decay, *,
                 batch_size):
    """One shuffled pass over (x, y); the last batch is padded and the padding masked out."""
    num_train = len(y_N)
    num_batches = -(-num_train // batch_size)
    order = jax.random.permutation(key, num_train)
    index_KB = jnp.pad(order, (0, num_batches * batch_size - num_train)).reshape(
        num_batches, batch_size)
    mask_KB = (jnp.arange(num_batches * batch_size) < num_train).reshape(
        num_batches, batch_size)
    optimizer = _optimizer(learning_rate, weight_decay)

    def step(carry, batch):
        params, opt_state = carry
        index_B, mask_B = batch
        grads = jax.grad(lambda p: _loss_and_accuracy(
            p, x_ND[index_B], y_N[index_B], mask_B)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (index_KB, mask_KB))
    return params, opt_state


@jax.jit
def _evaluate(params, x_ND, y_N):
    return _loss_and_accuracy(params, x_ND, y_N, jnp.ones(y_N.shape, jnp.float32))


def train_linear_probe(train_x, train_y, valid_x, valid_y, test_x, test_y, *,
                       num_classes: int, learning_rate: float = 1e-3,
                       batch_size: int = 128, max_epochs: int = 200, patience: int = 20,
                       weight_decay: float = 0.0, seed: int = 0) -> ProbeResult:
    """Trains a linear classifier on [N, D] features with int labels; returns its accuracies.

    An empty (or None) validation split is replaced by a seeded 10% of train. Training stops
    after `patience` epochs without a better validation accuracy; among epochs of equal
    accuracy the lower validation loss wins. `weight_decay` is an L2 term on all
    parameters added to the gradient (as torch's Adam). Deterministic given `seed`.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs),
                        ("patience", patience)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    train_x, train_y = _check_split("train", train_x, train_y, num_classes)
    test_x, test_y = _check_split("test", test_x, test_y, num_classes)
    valid_from_train = valid_x is None or len(valid_x) == 0
    if valid_from_train and valid_y is not None and len(valid_y):
        raise ValueError(f"valid_x is empty but valid_y has {len(valid_y)} labels")
    if valid_from_train:
        train_x, train_y, valid_x, valid_y = _split_off_validation(train_x, train_y, seed)
    else:
        valid_x, valid_y = _check_split("valid", valid_x, valid_y, num_classes)
    dims = {name: x.shape[1] for name, x in
            (("train", train_x), ("valid", valid_x), ("test", test_x))}
    if len(set(dims.values())) != 1:
        raise ValueError(f"feature dimensions differ between splits: {dims}")

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
                       batch_size=min(batch_size, len(train_y)))

    best = None  # (accuracy, loss, epoch, params)
    epochs_since_better_accuracy = 0
    for epoch in range(1, max_epochs + 1):
        params, opt_state = _train_epoch(params, opt_state, jax.random.fold_in(shuffle_key, epoch),
                                         train_x, train_y, **hyperparams)
        loss, accuracy = (float(v) for v in _evaluate(params, valid_x, valid_y))
        if best is None or accuracy > best[0]:
            best = (accuracy, loss, epoch, params)
            epochs_since_better_accuracy = 0
        else:
            if accuracy == best[0] and loss < best[1]:
                best = (accuracy, loss, epoch, params)
            epochs_since_better_accuracy += 1
            if epochs_since_better_accuracy >= patience:
                break

    valid_accuracy, _, best_epoch, best_params = best
    _, test_accuracy = _evaluate(best_params, test_x, test_y)
    return ProbeResult(test_accuracy=float(test_accuracy), valid_accuracy=valid_accuracy,
                       best_epoch=best_epoch, epochs_run=epoch,
                       valid_from_train=valid_from_train)
