"""Speaker-independent folds over every example of a dataset (k-fold and leave-one-speaker-out).

``make_folds`` pools the examples of all splits and groups them by speaker (or, ``by="session"``,
by recording session: IEMOCAP) into K folds (LOSO: one speaker or session per fold), balancing the
number of examples per fold. Fold i tests on group i,
validates on the next group(s) in order (speakers taken from what would otherwise be training
speakers) and trains on the rest, so no speaker is ever in two of a fold's splits and every
speaker is tested exactly once over the K folds. The result is a JSON-serialisable dict that
``avpretrain kfold`` writes to ``<workdir>/folds.json``; a training or evaluation run reads one
fold's split through ``split_source`` (``config.data.folds`` + ``config.data.fold``), which maps
its records back onto the dataset's own splits without copying anything.
"""
from __future__ import annotations

import collections

import numpy as np

from avpretrain.data import jobs, source as source_lib

SPLITS = ("train", "validation", "test")
# --by: what no two folds share. "session": speakers whose ids share the part before the last "_"
# (IEMOCAP's Ses01_F and Ses01_M: session Ses01) stay together, so folds are leave-sessions-out.
BY = ("speaker", "session")


def group_of(speaker: str, by: str) -> str:
    if by == "speaker":
        return speaker
    if "_" not in speaker.strip("_"):
        raise ValueError(f"--by=session: speaker {speaker!r} has no '<session>_<speaker>' form (IEMOCAP: Ses01_F)")
    return speaker.rsplit("_", 1)[0]
VALIDATION_SHARE = 0.2  # LOSO: validation speakers = this share of the non-test speakers (at least 1)


def dataset_records(data_dir) -> list[dict]:
    """Every example of every split, in dataset order: ``split``, ``index``, ``id``, ``speaker``, ``label``."""
    source_lib.require_single_label(data_dir, "folds (avpretrain kfold)")
    builder = source_lib.open_builder(data_dir)
    out = []
    for split in builder.info.splits:
        src = builder.as_data_source(split=split)
        for i in range(len(src)):
            ex = src[i]
            out.append({"split": split, "index": i, "id": _text(ex.get("id", b"")),
                        "speaker": _text(ex.get("speaker", b"")), "label": int(ex["label"])})
    return out


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def speaker_groups(records: list[dict], folds: int, *, loso: bool = False, seed: int = 0) -> list[list[str]]:
    """The speakers of each fold: LOSO one per fold (sorted), else ``folds`` groups balanced by
    example count (speakers shuffled by ``seed``, then largest first into the smallest group)."""
    empty = [r for r in records if not r["speaker"].strip()]
    if empty:
        r = empty[0]
        raise ValueError(f"folds by speaker: {len(empty)} of {len(records)} examples have an empty speaker "
                         f"(e.g. record {r['index']} of split {r['split']!r}, id {r['id']!r}); this dataset "
                         "cannot be split by speaker")
    counts = collections.Counter(r["speaker"] for r in records)
    speakers = sorted(counts)
    if loso:
        if len(speakers) < 3:
            raise ValueError(f"leave-one-speaker-out needs at least 3 speakers (test, validation, train); the "
                             f"dataset has {len(speakers)}: {speakers}")
        return [[s] for s in speakers]
    if folds < 3:
        raise ValueError(f"--folds={folds}: need at least 3 (each fold tests on one group of speakers, validates "
                         "on another and trains on the rest)")
    if folds > len(speakers):
        raise ValueError(f"--folds={folds} but the dataset has only {len(speakers)} speakers: {speakers}")
    order = [speakers[i] for i in np.random.default_rng(seed).permutation(len(speakers))]
    order.sort(key=lambda s: -counts[s])  # stable: the shuffle breaks ties
    groups, sizes = [[] for _ in range(folds)], [0] * folds
    for s in order:
        g = int(np.argmin(sizes))
        groups[g].append(s)
        sizes[g] += counts[s]
    return [sorted(g) for g in groups]


def make_folds(data_dir, folds: int, *, loso: bool = False, seed: int = 0, by: str = "speaker") -> dict:
    """Fold i: test = group i; validation = the next group (LOSO: the next ``VALIDATION_SHARE`` of
    the other speakers, at least one); train = every other group. Refuses a fold whose training
    examples miss a class (its head could not learn it)."""
    if by not in BY:
        raise ValueError(f"--by={by!r}: folds are made by one of {BY}")
    records = dataset_records(data_dir)
    for r in records:  # the groups no two folds share: speakers, or sessions of speakers
        r["speaker"] = group_of(r["speaker"], by) if r["speaker"].strip() else r["speaker"]
    if not records:
        raise ValueError(f"{data_dir}: the dataset has no examples")
    names = list(source_lib.open_builder(data_dir).info.features["label"].names)
    groups = speaker_groups(records, folds, loso=loso, seed=seed)
    k = len(groups)
    n_valid = max(1, round(VALIDATION_SHARE * (k - 1))) if loso else 1
    by_speaker = collections.defaultdict(list)
    for r in records:
        by_speaker[r["speaker"]].append([r["split"], r["index"]])
    label_of = {(r["split"], r["index"]): r["label"] for r in records}
    out = []
    for i in range(k):
        valid_groups = [(i + j) % k for j in range(1, n_valid + 1)]
        spk = {"test": groups[i], "validation": sorted(s for g in valid_groups for s in groups[g]),
               "train": sorted(s for g in range(k) if g != i and g not in valid_groups for s in groups[g])}
        fold = {"speakers": spk, "records": {split: [rec for s in spk[split] for rec in by_speaker[s]]
                                             for split in SPLITS}}
        present = {label_of[tuple(rec)] for rec in fold["records"]["train"]}
        missing = [c for c in range(len(names)) if c not in present]
        if missing:
            raise ValueError(f"fold {i}: its training speakers {spk['train']} have no example of class "
                             + ", ".join(f"{names[c]!r} (label {c})" for c in missing))
        out.append(fold)
    return {"data": str(data_dir), "by": by, "loso": bool(loso), "seed": int(seed), "num_folds": k,
            "class_names": names, "num_examples": len(records), "folds": out}


def write(path, folds: dict) -> None:
    jobs.write_json(path, folds)


def read(path) -> dict:
    folds = jobs.read_json(path)
    if "folds" not in folds:
        raise ValueError(f"{path}: not a folds file written by `avpretrain kfold` (no 'folds' key)")
    return folds


class SubsetSource:
    """Random access over ``records`` ([split, index] pairs) of a dataset's splits."""

    def __init__(self, data_dir, records):
        builder = source_lib.open_builder(data_dir)
        self.records = [(str(s), int(i)) for s, i in records]
        self.sources = {}
        for split in sorted({s for s, _ in self.records}):
            if split not in builder.info.splits:
                raise ValueError(f"{data_dir}: the folds name split {split!r}, which this dataset does not have "
                                 f"({list(builder.info.splits)}): were they made for another dataset?")
            self.sources[split] = builder.as_data_source(split=split)
        for split, index in self.records:
            if not 0 <= index < len(self.sources[split]):
                raise ValueError(f"{data_dir}: the folds name record {index} of split {split!r}, which has "
                                 f"{len(self.sources[split])}: were they made for another dataset?")

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        split, index = self.records[i]
        return self.sources[split][index]


class ClassSubset(SubsetSource):
    """The records of ``records`` whose class is one of ``classes`` (names), each relabelled to its
    class's index in ``classes``; ``dropped`` counts the others. Every record's label is read once."""

    def __init__(self, data_dir, records, classes):
        names = dataset_class_names(data_dir)
        classes = [str(c) for c in classes]
        missing = [c for c in classes if c not in names]
        if missing:
            raise ValueError(f"config.data.classes={tuple(classes)}: {data_dir} has no class {missing} (its classes: "
                             f"{names})")
        super().__init__(data_dir, records)
        self.classes, self.remap = classes, np.array([classes.index(n) if n in classes else -1 for n in names])
        kept = [r for r in self.records if self.remap[int(self.sources[r[0]][r[1]]["label"])] >= 0]
        self.dropped, self.records = len(self.records) - len(kept), kept

    def __getitem__(self, i):
        element = super().__getitem__(i)
        return element | {"label": np.int64(self.remap[int(element["label"])])}


def dataset_class_names(data_dir) -> list[str]:
    """The names of the dataset's classes (its ``label`` feature), in label order, for a consumer of
    one class per clip (fine-tuning, validation, ``data.classes``): a multi-label dataset is refused."""
    features = source_lib.open_builder(data_dir).info.features
    if "label" not in features or not hasattr(features["label"], "names"):
        raise ValueError(f"{data_dir} has no class labels")
    source_lib.require_single_label(data_dir, "fine-tuning, validation and config.data.classes")
    return list(features["label"].names)


def class_names(data) -> list[str]:
    """The classes a ``config.data`` reads: ``data.classes`` when set (a subset, in that order), else
    all of the dataset's."""
    return [str(c) for c in data.get("classes", ())] or dataset_class_names(data.dir)


def split_source(data, split: str):
    """The records of ``split`` (a ``config.data``): the dataset's own split, or, with ``data.folds``
    and ``data.fold`` >= 0, that fold's ``train`` / ``validation`` / ``test`` examples; with
    ``data.classes``, only the examples of those classes, relabelled in that order (``ClassSubset``)."""
    folds_file, fold = str(data.get("folds", "") or ""), int(data.get("fold", -1))
    classes = tuple(data.get("classes", ()))
    if not folds_file or fold < 0:
        if not classes or list(classes) == dataset_class_names(data.dir):
            return source_lib.data_source(data.dir, split)
        return ClassSubset(data.dir, [(split, i) for i in range(len(source_lib.data_source(data.dir, split)))], classes)
    folds = read(folds_file)
    if fold >= len(folds["folds"]):
        raise ValueError(f"config.data.fold={fold} but {folds_file} has {len(folds['folds'])} folds")
    records = folds["folds"][fold]["records"]
    if split not in records:
        raise ValueError(f"split {split!r} of fold {fold}: a fold has {list(records)}")
    if classes:
        return ClassSubset(data.dir, records[split], classes)
    return SubsetSource(data.dir, records[split])
