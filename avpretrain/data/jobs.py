"""Resumable, shardable offline jobs over a dataset (caption embeddings, tokenization).

Work is cut into chunks of ``chunk_records`` consecutive records of a split; all chunks of all
splits are numbered in one sequence (splits in dataset order) and shard i of n takes the chunks k
with k % n == i. Each finished chunk is one file written atomically (``atomic_write``), so a killed
job resumes where it stopped and whichever call finds every chunk present finishes the job.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import uuid


@dataclasses.dataclass(frozen=True)
class Chunk:
    split: str
    index: int      # within the split
    count: int      # chunks in the split
    start: int      # records [start, stop) of the split
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def chunk_counts(splits: dict[str, int], chunk_records: int) -> dict[str, int]:
    return {split: math.ceil(n / chunk_records) for split, n in splits.items()}


def plan(splits: dict[str, int], chunk_records: int) -> list[Chunk]:
    """Every chunk of every split, in the job's one sequence."""
    return [Chunk(split, c, count, c * chunk_records, min(n, (c + 1) * chunk_records))
            for (split, n), count in zip(splits.items(), chunk_counts(splits, chunk_records).values())
            for c in range(count)]


def of_shard(chunks: list, shard: tuple[int, int]) -> list:
    """The chunks of shard i of n: k % n == i."""
    index, count = (int(v) for v in shard)
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= i < n")
    return [c for k, c in enumerate(chunks) if k % count == index]


def atomic_write(path: pathlib.Path, write) -> None:
    """Writes through ``write(file)`` into a temporary file beside ``path``, then renames it."""
    atomic_file(path, lambda tmp: _write_with(tmp, write))


def atomic_file(path: pathlib.Path, write_path) -> None:
    """``write_path(tmp)`` writes a temporary path beside ``path`` (for writers that open files
    themselves); it is then renamed to ``path`` (the commit point), or removed on failure."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_path(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_with(tmp: pathlib.Path, write) -> None:
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: pathlib.Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
