"""Training streams made of several batched streams (``pipeline.train_dataset`` of several datasets).

For methods that read more than one dataset (``Method.train_data``): multi-corpus pre-finetuning
draws each batch from one corpus (``TaskMixture``); domain adaptation reads a labelled source and
an unlabelled target batch at every step (``Concatenated``). Both are grain ``IterDataset``s whose
iterator state (each stream's, and the number of batches drawn) is checkpointed with the model,
so a resumed run continues the same sequence of batches.
"""
from __future__ import annotations

import grain
import numpy as np


def draw_task(seed: int, index: int, probabilities) -> int:
    """The stream of batch ``index``: a draw from ``probabilities`` seeded by (seed, index) only, so
    every process (and a resumed run) draws the same stream at the same step."""
    return int(np.random.default_rng([int(seed), int(index)]).choice(len(probabilities), p=probabilities))


class TaskMixture(grain.IterDataset):
    """Whole batches of one of ``parents`` at a time: batch i comes from stream k with probability
    ``weights[k] / sum(weights)`` (``draw_task``), with a field ``task`` (int32 [B], all k) added."""

    def __init__(self, parents, weights, seed: int):
        super().__init__(list(parents))
        w = np.asarray(weights, np.float64)
        if len(w) != len(self._parents) or not len(w) or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"TaskMixture: weights {list(weights)} for {len(self._parents)} streams")
        self.probabilities, self.seed = w / w.sum(), int(seed)

    def __iter__(self):
        return _MixtureIterator(self)


class _MixtureIterator(grain.DatasetIterator):
    def __init__(self, ds: TaskMixture):
        super().__init__([iter(p) for p in ds._parents])
        self._ds, self._index = ds, 0

    def __next__(self):
        k = draw_task(self._ds.seed, self._index, self._ds.probabilities)
        batch = next(self._parents[k])
        self._index += 1
        rows = len(next(iter(batch.values())))
        return dict(batch) | {"task": np.full(rows, k, np.int32)}

    def get_state(self):
        return {"index": self._index, "streams": [p.get_state() for p in self._parents]}

    def set_state(self, state):
        self._index = int(state["index"])
        for p, s in zip(self._parents, state["streams"], strict=True):
            p.set_state(s)


class Concatenated(grain.IterDataset):
    """One batch of every parent per step, concatenated along the batch axis, with a field ``domain``
    (int32 [B]: which parent each row came from). A field that some parent lacks is filled for its
    rows with ``fill[name]`` (e.g. ``label`` −1 for an unlabelled target stream)."""

    def __init__(self, parents, fill: dict):
        super().__init__(list(parents))
        self.fill = dict(fill)

    def __iter__(self):
        return _ConcatIterator(self)


class _ConcatIterator(grain.DatasetIterator):
    def __init__(self, ds: Concatenated):
        super().__init__([iter(p) for p in ds._parents])
        self._fill = ds.fill

    def __next__(self):
        batches = [dict(next(p)) for p in self._parents]
        names = list(dict.fromkeys(k for b in batches for k in b))
        dtypes = {name: np.asarray(b[name]).dtype for b in reversed(batches) for name in b}
        for b in batches:
            rows = len(next(iter(b.values())))
            for name in names:
                if name not in b:
                    if name not in self._fill:
                        raise ValueError(f"Concatenated: field {name!r} is missing from a stream and has no fill value")
                    b[name] = np.full(rows, self._fill[name], dtypes[name])
        out = {name: np.concatenate([b[name] for b in batches]) for name in names}
        out["domain"] = np.concatenate([np.full(len(next(iter(b.values()))), d, np.int32)
                                        for d, b in enumerate(batches)])
        return out

    def get_state(self):
        return {"streams": [p.get_state() for p in self._parents]}

    def set_state(self, state):
        for p, s in zip(self._parents, state["streams"], strict=True):
            p.set_state(s)
