"""The order in which training examples reach the processes: a function of the step, not of the
process count.

``pipeline.train_dataset`` builds one global stream (shuffled per epoch, each element cropped with
an RNG of its global position) and gives process ``p`` of ``P`` its block of every global batch:
global batch ``s`` is elements ``[start + s·B, start + (s+1)·B)`` in order, whatever ``P``, and process
``p`` reads rows ``[p·b, (p+1)·b)`` of it (``b = B / P``), which is where
``jax.make_array_from_process_local_data`` puts them. A run is positioned by the number of
examples consumed (``start``), which the trainer checkpoints, so a run saved by 2 processes resumes
on 1 or 4 with the same batches, and a changed ``batch_size`` continues after the last example read.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import grain


class ProcessBlocks(grain.MapDataset):
    """Process ``process_index``'s share of the infinite global stream ``parent``, after ``start``
    examples: its j-th element is ``parent[start + (j // b)·B + p·b + j % b]``."""

    def __init__(self, parent: grain.MapDataset, *, start: int, global_batch: int, process_index: int,
                 process_count: int):
        super().__init__(parent)
        if global_batch % process_count:
            raise ValueError(f"batch_size={global_batch} is not divisible by {process_count} processes")
        if start < 0:
            raise ValueError(f"a data position must be >= 0, got {start}")
        self.start, self.global_batch = int(start), int(global_batch)
        self.block = global_batch // process_count
        self.offset = process_index * self.block

    def __len__(self) -> int:
        return sys.maxsize

    def global_index(self, j: int) -> int:
        step, row = divmod(int(j), self.block)
        return self.start + step * self.global_batch + self.offset + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.global_index(index)]

    def _getitems(self, indices: Sequence[int]):
        return self._parent._getitems([self.global_index(j) for j in indices])  # noqa: SLF001

    def __str__(self) -> str:
        return f"ProcessBlocks(start={self.start}, global_batch={self.global_batch}, rows {self.offset}+{self.block})"
