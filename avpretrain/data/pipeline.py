"""grain input pipelines: seeded global shuffle → random crop/pad → per-process block → batch → global jax.Array.

Training iterators are infinite and checkpointable (``get_state``/``set_state`` via Orbax). The
evaluation pipeline visits every example of a split exactly once, each clip at its own length.
"""
from __future__ import annotations

import os
import threading

import jax
import numpy as np

from avpretrain import metrics as metrics_lib
from avpretrain.data.frames import AV_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, decode_frame

# grain and TFDS (``source``) are imported where datasets are built: the step helpers here
# (``process_batch_size``, ``to_global``) serve `avpretrain bench` without them.

INT16_SCALE = 1.0 / 32768.0


# The batch fields the pipeline can produce (a method's ``inputs`` picks among them, with shapes):
FIELDS = {
    "audio": "float32 [S]: a random window of the waveform (int16 / 32768), zero-padded when shorter",
    "video": "uint8 [T, H, W, 3]: the face frames of the same window (T·640 = S when both are read)",
    "text_emb": "float16 [D]: one of the clip's stored caption embeddings, drawn at random (evaluation: the "
                "first), or its transcript's (data.text_field)",
    "label": "int32 []: the class index; declared float32 [C] (a multi-label dataset): the multi-hot of the "
             "clip's classes",
    # emotion corpora (data_pipelines.emotion): ratings on the corpus's scale, NaN when unrated
    "arousal": "float32 []: the clip's arousal rating",
    "valence": "float32 []: the clip's valence rating",
    "dominance": "float32 []: the clip's dominance rating",
    # from a token dataset (`avpretrain data tokenize`): the code grids of one window of T video frames
    "audio_codes": "int32 [2T, 64]: audio code frames (50/s) of the window, frames [2f, 2f + 2T)",
    "video_codes": "int32 [T, 24, 24]: video code frames (25/s) of the window, frames [f, f + T)",
}
CODE_FIELDS = ("audio_codes", "video_codes")
DIMENSION_FIELDS = ("arousal", "valence", "dominance")
TARGET_FIELDS = ("label", *DIMENSION_FIELDS)  # what a supervised model learns from, not what it reads
# Added by a method's own training stream (``data.streams``), not read from a record: which corpus
# (``task``) or which dataset, source 0 / target 1 (``domain``), a row came from.
STREAM_FIELDS = ("task", "domain")


def model_fields(inputs: dict) -> dict:
    """The fields of a method's ``inputs`` that its model reads to predict (no targets, no stream tags)."""
    return {k: v for k, v in inputs.items() if k not in TARGET_FIELDS + STREAM_FIELDS}
AUDIO_CODE_FRAMES_PER_VIDEO_FRAME = 2  # 20 ms audio code frames, 40 ms video frames


def batch_label(stored, num_classes: int | None = None) -> np.ndarray:
    """A record's stored ``label`` as a batch label: without ``num_classes`` its class index, int32 [];
    with it the multi-hot float32 [C=num_classes] of its classes (a multi-label record's int array
    of positive classes, possibly empty, or a single-label record's one class). A multi-label record
    where a class index is expected is a ValueError (``source.require_single_label`` names the
    dataset before that)."""
    if num_classes is None:
        if np.ndim(stored):
            raise ValueError(f"a multi-label record (label {np.asarray(stored).tolist()}, a list of classes) where one "
                             "class index is expected")
        return np.int32(stored)
    classes = np.atleast_1d(np.asarray(stored, np.int64))
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"label {classes.tolist()} is outside the {num_classes} classes [0, {num_classes})")
    multi_hot = np.zeros(num_classes, np.float32)
    multi_hot[classes] = 1.0
    return multi_hot


def _crop_or_pad(wave: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """A random window of ``length`` samples (start 0 without rng); shorter clips are zero-padded."""
    if len(wave) > length:
        start = int(rng.integers(0, len(wave) - length + 1)) if rng is not None else 0
        wave = wave[start:start + length]
    return _padded(wave, length)


def _padded(wave: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, np.float32)
    out[:len(wave)] = wave.astype(np.float32) * INT16_SCALE
    return out


class Crop:
    """grain ``random_map`` callable: one example's fields for a method's ``inputs``.

    One random window per example: audio-only at sample resolution; with video, at frame resolution,
    the frames [f, f+T) and the samples [f·640, (f+T)·640) (a missing modality is zeros). A caption
    embedding (``text_emb``) is drawn after the window. The per-element rng is seeded by grain from
    the seed and the position in the repeated stream: deterministic by seed, new draws each epoch.
    """

    def __init__(self, inputs: dict):
        unknown = sorted(set(inputs) - set(FIELDS))
        if unknown:
            raise ValueError(f"the method asks for batch fields {unknown}; the input pipeline provides {sorted(FIELDS)}")
        self.samples = inputs["audio"].shape[0] if "audio" in inputs else None
        self.frames = inputs["video"].shape[0] if "video" in inputs else None
        if self.samples is not None and self.frames is not None and self.samples != self.frames * SAMPLES_PER_FRAME:
            raise ValueError(f"audio window of {self.samples} samples and video window of {self.frames} frames are not "
                             f"aligned: audio must be frames x {SAMPLES_PER_FRAME} samples ({VIDEO_FPS} fps at "
                             f"{AV_SAMPLE_RATE} Hz)")
        self.frame_shape = inputs["video"].shape[1:] if "video" in inputs else None
        # a label declared [C]: the multi-hot of a multi-label record's classes, else the class index
        self.label_classes = (int(inputs["label"].shape[0]) if "label" in inputs and len(inputs["label"].shape) == 1
                              else None)
        self.fields = tuple(inputs)
        self.codes = {name: inputs[name] for name in CODE_FIELDS if name in inputs}
        if self.codes and (self.samples is not None or self.frames is not None):
            raise ValueError(f"the method asks for both raw signals and codes ({sorted(inputs)}): a token dataset "
                             "stores codes only")
        if self.codes:
            windows = {name: f.shape[0] // (AUDIO_CODE_FRAMES_PER_VIDEO_FRAME if name == "audio_codes" else 1)
                       for name, f in self.codes.items()}
            if len(set(windows.values())) > 1 or ("audio_codes" in self.codes and self.codes["audio_codes"].shape[0] % 2):
                raise ValueError(f"audio_codes window of {self.codes['audio_codes'].shape[0]} frames must be 2 x the "
                                 f"video_codes window of {self.codes['video_codes'].shape[0]} frames (50 and 25 per s)")
            self.code_window = next(iter(windows.values()))

    def _code_frames(self, element) -> int:
        """The example's length in video frames (the longer of its code grids)."""
        return max(len(element[name]) // (AUDIO_CODE_FRAMES_PER_VIDEO_FRAME if name == "audio_codes" else 1)
                   for name in self.codes)

    def _code_window(self, element, rng, out, start: int | None = None):
        """One window of T video frames (2T audio frames) of the code grids, at ``start`` or at random;
        a clip shorter than the window is repeated from its start until the window is full (no
        padding code exists); a modality the example lacks is code 0."""
        T = self.code_window
        available = self._code_frames(element)
        if start is None:
            start = int(rng.integers(0, available - T + 1)) if available > T else 0
        for name, field in self.codes.items():
            per = AUDIO_CODE_FRAMES_PER_VIDEO_FRAME if name == "audio_codes" else 1
            codes = np.asarray(element[name])
            if not len(codes):
                out[name] = np.zeros(field.shape, np.int32)
                continue
            window = codes[per * start:per * (start + T)]
            if len(window) < per * T:
                window = np.resize(window, (per * T, *codes.shape[1:]))  # repeats the rows cyclically
            out[name] = window.astype(np.int32)

    def eval_windows(self, element) -> list[dict]:
        """Every window an evaluation reads of one example: consecutive windows of the training length
        from the start, the last one ending at the clip's end (so it may overlap the one before); a
        clip no longer than a window gives one (codes repeated, audio zero-padded, as in training).
        Token inputs or a waveform alone (each window with the clip's ``text_emb`` when the method reads
        one); fields without ``label`` and the ratings."""
        if self.codes:
            size, length = self.code_window, self._code_frames(element)
        elif self.samples is not None and self.frames is None:
            size, length = self.samples, len(element["audio"])
        else:
            raise ValueError(f"evaluation windows are defined for token inputs ({CODE_FIELDS}) or a waveform alone; "
                             f"the method reads {self.fields}")
        starts = list(range(0, max(length - size, 0) + 1, size))
        if length > size and starts[-1] != length - size:
            starts.append(length - size)
        windows = []
        for start in starts:
            out = {}
            if self.codes:
                self._code_window(element, None, out, start)
            else:
                out["audio"] = _padded(element["audio"][start:start + size], size)
            if "text_emb" in self.fields:  # the clip's first stored text (a transcript has one)
                out["text_emb"] = np.asarray(element["caption_embeddings"][0])
            windows.append(out)
        return windows

    def __call__(self, element, rng: np.random.Generator):
        out = {}
        if self.codes:
            self._code_window(element, rng, out)
        elif self.frames is None:
            if self.samples is not None:
                out["audio"] = _crop_or_pad(element["audio"], self.samples, rng)
        else:
            frames = element["video"]
            available = len(frames) if len(frames) else len(element["audio"]) // SAMPLES_PER_FRAME
            start = int(rng.integers(0, available - self.frames + 1)) if available > self.frames else 0
            video = np.zeros((self.frames, *self.frame_shape), np.uint8)
            for i, jpeg in enumerate(frames[start:start + self.frames]):
                video[i] = decode_frame(jpeg)
            out["video"] = video
            if self.samples is not None:
                first = start * SAMPLES_PER_FRAME
                out["audio"] = _padded(element["audio"][first:first + self.samples], self.samples)
        if "text_emb" in self.fields:
            captions = element["caption_embeddings"]
            out["text_emb"] = np.asarray(captions[rng.integers(len(captions))])
        if "label" in self.fields:
            out["label"] = batch_label(element["label"], self.label_classes)
        for name in DIMENSION_FIELDS:
            if name in self.fields:
                out[name] = np.float32(element[name])
        return {k: out[k] for k in self.fields}


class CaptionedSource:
    """The records of ``src`` that have stored text (captions, or a transcript), each with its stored
    embeddings (``caption_embeddings``, float16 [n, D]).

    ``src``: one split's data source and ``stores`` that split's ``CaptionEmbeddings``; or a fold's
    ``folds.SubsetSource`` and ``stores`` a dict split → ``CaptionEmbeddings`` of the splits it reads.
    Records without text are left out (and counted in ``num_without_captions``); with ``required``
    they are an error naming how many and how to get their text. Each record's id is checked against
    the store, so a dataset rebuilt after embedding fails loudly.
    """

    def __init__(self, src, stores, *, required: bool = False, what: str = ""):
        from avpretrain.data.captions import NOUN

        if not isinstance(stores, dict):
            stores = {stores.split: stores}
        records = getattr(src, "records", None)
        sizes = ({split: len(s) for split, s in src.sources.items()} if records is not None
                 else {next(iter(stores)): len(src)})
        if records is None:
            records = [(next(iter(stores)), i) for i in range(len(src))]
        for split, n in sizes.items():
            store = stores[split]
            if len(store) != n:
                raise ValueError(f"{NOUN[store.field]} embeddings of {store.model!r} list {len(store)} records of split "
                                 f"{split!r} but the dataset has {n}: the dataset changed since "
                                 "`avpretrain data embed-captions`; run it again")
        self.src, self.stores, self.records = src, stores, records
        self._noun = NOUN[next(iter(stores.values())).field]
        have = np.array([stores[s].offsets[r + 1] > stores[s].offsets[r] for s, r in records], bool)
        self.index = np.flatnonzero(have)
        self.num_without_captions = len(records) - len(self.index)
        field = next(iter(stores.values())).field
        if required and self.num_without_captions:
            split, r = records[int(np.flatnonzero(~have)[0])]
            raise ValueError(
                f"{what or 'the data'}: {self.num_without_captions} of {len(records)} records have no {field} (e.g. "
                f"{stores[split].ids[r]!r} of split {split!r}), and the model reads one per clip: give the dataset "
                f"transcripts, or transcribe them (avpretrain data embed-captions --field {field} --asr-model DIR, a "
                "local speech-recognition model) before training or evaluating with text")
        if not len(self.index):
            raise ValueError(f"{what or 'split ' + repr(next(iter(stores)))} has no records with {field}"
                             + (" (no captioned records)" if field == "captions" else ""))

    # a single store's attribute, as before folds were supported
    @property
    def store(self):
        return next(iter(self.stores.values()))

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        record = int(self.index[i])
        split, r = self.records[record]
        store = self.stores[split]
        element = self.src[record]
        if element["id"].decode() != store.ids[r]:
            raise ValueError(f"record {r} of split {split!r} is {element['id'].decode()!r} but the "
                             f"{self._noun} embeddings expect {store.ids[r]!r}: run embed-captions again")
        return element | {"caption_embeddings": store.for_record(r)}


def with_text(data, split: str, src, inputs: dict, *, what: str = ""):
    """``src`` (``folds.split_source(data, split)``) with each record's stored text embeddings when
    ``inputs`` has ``text_emb``: captions (M2D-CLAP; uncaptioned records left out) or, with
    ``data.text_field="transcript"``, transcripts (audio-text fusion; every record must have one)."""
    if "text_emb" not in inputs:
        return src
    from avpretrain.data import captions

    field = str(data.get("text_field", "captions") or "captions")
    splits = sorted({s for s, _ in src.records}) if hasattr(src, "records") else [split]
    stores = {s: captions.CaptionEmbeddings.open(data.dir, s, data.get("text_model") or None, field) for s in splits}
    return CaptionedSource(src, stores, required=field != "captions", what=what or f"{data.dir} split {split!r}")


def training_source(config, inputs: dict):
    """The training split as a random-access source (``CaptionedSource`` when ``inputs`` has ``text_emb``)."""
    from avpretrain.data import folds, source as source_lib

    src = folds.split_source(config.data, config.data.split)
    stored = source_lib.open_builder(config.data.dir).info.features
    missing = [name for name in inputs if name != "text_emb" and name not in stored]
    if missing:
        raise ValueError(f"{config.data.dir}: method {config.method!r} reads {missing}, which this dataset does not "
                         f"store (it has {sorted(stored.keys())}); "
                         + ("codes need a token dataset (avpretrain data tokenize)" if set(missing) & set(CODE_FIELDS)
                            else "video needs an audiovisual dataset (data build av_folder|ravdess|crema_d|demo_av)"))
    if "label" in inputs and not len(inputs["label"].shape):
        source_lib.require_single_label(config.data.dir, f"method {config.method!r}")
    if "text_emb" not in inputs:
        return src
    captioned = with_text(config.data, config.data.split, src, inputs)
    if captioned.num_without_captions:
        metrics_lib.log(f"{config.data.dir}: {captioned.num_without_captions} of {len(src)} {config.data.split} "
                        "records have no caption and are left out of caption-conditioned training")
    return captioned


def process_batch_size(global_batch: int) -> int:
    if global_batch % jax.process_count():
        raise ValueError(f"batch_size={global_batch} is not divisible by {jax.process_count()} processes")
    return global_batch // jax.process_count()


class BadDataError(ValueError):
    """More of the training records were unreadable than ``data.max_bad_fraction`` allows."""


class TolerantRead:
    """``random_map`` body: reads record ``index`` of ``src`` and crops it; a record that cannot be
    read or decoded (a corrupt ArrayRecord chunk, a broken JPEG frame, ...) is skipped, counted and
    logged with its index and id, and the next record stands in for it, so that every position of
    the stream still yields one example (the stream, and a resume, stay deterministic).

    More than ``max_bad_fraction`` of the reads of this process (or worker; counted over at least
    1000 reads, so a few bad records early on do not stop a run; 0: any bad record stops it) raises
    BadDataError with the last problem.
    """

    MAX_IN_A_ROW = 16  # substitutes tried for one position before giving up on the stream

    def __init__(self, src, crop, what: str, max_bad_fraction: float):
        self.src, self.crop, self.what, self.max_bad_fraction = src, crop, what, max_bad_fraction
        self.reads = self.bad = 0
        self._lock = threading.Lock()

    def __getstate__(self):  # grain's worker processes get a copy (and count their own reads)
        return {k: v for k, v in vars(self).items() if k != "_lock"}

    def __setstate__(self, state):
        vars(self).update(state, _lock=threading.Lock())

    def __call__(self, index, rng: np.random.Generator):
        n = len(self.src)
        for k in range(self.MAX_IN_A_ROW):
            i, id_ = (int(index) + k) % n, None
            try:
                element = self.src[i]
                id_ = element["id"].decode() if "id" in element else None
                out = self.crop(element, rng)
            except Exception as e:  # noqa: BLE001: any unreadable record (the share caps it)
                self._count(i, id_, e)
                continue
            with self._lock:
                self.reads += 1
            return out
        raise BadDataError(f"{self.what}: {self.MAX_IN_A_ROW} unreadable records in a row from record {int(index)} on")

    def _count(self, i: int, id_: str | None, error: Exception) -> None:
        with self._lock:
            self.reads += 1
            self.bad += 1
            reads, bad = self.reads, self.bad
        problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        who = f"process {jax.process_index()}" + (f" (pid {os.getpid()})" if jax.process_count() == 1 else "")
        print(f"warning: skipped a bad record of {self.what}: record {i}" + (f" ({id_})" if id_ else "")
              + f": {problem} [{bad} bad of {reads} read by {who}]", flush=True)
        if bad > self.max_bad_fraction * max(reads, 1000):
            raise BadDataError(f"{self.what}: {bad} bad records of {reads} read, more than data.max_bad_fraction="
                               f"{self.max_bad_fraction:g} allows (last: record {i}: {problem}); check the "
                               "dataset (rebuild it) or raise data.max_bad_fraction")


def train_dataset(config, *, seed: int | None = None, inputs: dict | None = None, start: int = 0):
    """This process's infinite, shuffled stream (a ``grain.IterDataset``) of cropped-and-batched
    training examples with the fields of ``inputs`` (default: the method's ``inputs(config)``),
    positioned after ``start`` examples of the global stream (``data.order``: the batches are a
    function of the step, whatever the process count)."""
    return batched(global_stream(config, seed=seed, inputs=inputs), config, start)


def global_stream(config, *, seed: int | None = None, inputs: dict | None = None):
    """The training split as one infinite ``grain.MapDataset`` shared by all processes: reshuffled every
    epoch, each element read (``TolerantRead``) and cropped with an RNG of its global position. Opening
    it checks the dataset (a clear error before any work)."""
    import grain

    from avpretrain import method as method_lib

    seed = config.seed if seed is None else seed
    inputs = method_lib.of(config).inputs(config) if inputs is None else inputs
    src = training_source(config, inputs)
    read = TolerantRead(src, Crop(inputs), f"{config.data.dir} split {config.data.split!r}",
                        float(config.data.get("max_bad_fraction", 0.01)))
    ds = grain.MapDataset.range(len(src))  # record indices: a record is read (and may fail) inside `read`
    if not len(ds):
        raise ValueError(f"{config.data.dir}: split {config.data.split!r} has no examples")
    return ds.shuffle(seed=seed).repeat(None).random_map(read, seed=seed)


def batched(stream, config, start: int = 0):
    """This process's block of every global batch of ``stream`` (``data.order.ProcessBlocks``) after
    ``start`` examples, read ahead by threads (and worker processes with ``data.num_workers``), batched."""
    import grain

    from avpretrain.data import order

    ds = order.ProcessBlocks(stream, start=start, global_batch=config.batch_size, process_index=jax.process_index(),
                             process_count=jax.process_count())
    # Threads read and crop single clips ahead of the consumer; the buffer counts clips, not
    # batches (grain's default of 500 *batches* held gigabytes per host at pretraining batch sizes).
    batch = process_batch_size(config.batch_size)
    buffer = config.data.prefetch_batches * batch
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=min(config.data.read_threads, buffer),  # more would idle
                                              prefetch_buffer_size=buffer))
    ds = ds.batch(batch, drop_remainder=True)
    if config.data.num_workers > 0:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
    return ds


def _absl_flags_parsed() -> None:
    """grain 0.2.18's ``mp_prefetch`` reads an absl flag (``grain_enable_multiprocess_worker_profiling``)
    that nothing parses outside ``absl.app``, so it raised UnparsedFlagAccessError and any
    ``data.num_workers > 0`` failed (google/grain#1355, fixed after 0.2.18). Marking the flags parsed
    keeps every default; a program that parses them itself is left alone."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def to_global(batch: dict, sharding) -> dict:
    """Per-process numpy batch → global jax.Arrays sharded over the data-parallel axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def eval_batches(data_dir: str, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1):
    """Every example of ``split`` once, in order, ``batch_size`` examples at a time (the last batch
    shorter), each example read once.

    Each batch: ``audio`` (a list of float32 [samples] arrays, every clip at its own length: nothing is
    padded), ``label`` [B] int32 (a multi-label dataset: [B, C] float32, each row the multi-hot of
    the clip's classes, all zeros for a clip without any), and lists ``record`` (index in the split),
    ``id`` (str) and ``captions`` (list of str).
    """
    from avpretrain.data import source as source_lib

    meta = source_lib.dataset_meta(data_dir)
    num_classes = len(meta.label_names) if meta.multi_label else None
    src = source_lib.data_source(data_dir, split)
    indices = np.arange(len(src))[process_index::process_count]
    for start in range(0, len(indices), batch_size):
        batch = {"audio": [], "label": [], "record": [], "id": [], "captions": []}
        for i in indices[start:start + batch_size]:
            example = src[int(i)]
            batch["audio"].append(example["audio"].astype(np.float32) * INT16_SCALE)
            batch["label"].append(batch_label(example["label"], num_classes))
            batch["record"].append(int(i))
            batch["id"].append(example["id"].decode())
            batch["captions"].append([c.decode() for c in example.get("captions", [])])
        yield batch | {"label": np.stack(batch["label"])}
