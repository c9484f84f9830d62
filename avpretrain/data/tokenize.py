"""Offline tokenization: exported VQ-VAE tokenizers over every example of a dataset → a token dataset.

    avpretrain data tokenize --audio-vq=E1 --video-vq=E2 --data=D --out=T [--shard i/n]

``T`` receives one TFDS dataset (ArrayRecord), ``T/<source name>_tokens/1.0.0/``, with the source's
splits and, per example:

    id, label, speaker       as in the source (same label names)
    audio_codes  int16 [2F, 64]      (--audio-vq) 50 frames/s: frame t is the power spectrum centred
                                     on sample 320·t, as the tokenizer sees it in training
    video_codes  int16 [F, 24, 24]   (--video-vq) 25 frames/s: one grid per face frame

Alignment: an example with both audio and video is cut to their common length first (F frames and
640·F samples), so its audio codes are exactly 2F frames: audio frames 2f and 2f+1 cover video frame
f. An example lacking a modality gets an empty grid of it ([0, 64] / [0, 24, 24]); its other
modality is tokenized whole. Metadata: sample rate, frame rates, the source and both tokenizers.

The job: records are cut into chunks (``jobs``), shard i of n takes the chunks k with k % n == i, and
each finished chunk is one ArrayRecord shard file of the final dataset, renamed into place (so a
killed job resumes at its first missing chunk). Whichever call finds every chunk present writes
the TFDS metadata (dataset_info.json: the dataset is readable from then on) and
``T/tokenize_report.json``. ``T/tokenize_job.json`` holds the job's settings (source, tokenizers
and a fingerprint of each, chunk size); a run with other settings is refused.

On the device: all frames of a group of examples are packed into fixed-size rows (one compile per
tokenizer), the rows sharded over this host's devices. The tokenizers are per frame: packing does
not change a code. Audio: each clip is reflect-padded by 512 samples at both ends (the centred STFT
of ``frontend.PowerSpectrogram``) and placed at a multiple of the 320-sample hop, so its frames are
a contiguous run of the packed stream's frames; frames straddling two clips are computed and
dropped. Host work (reading, JPEG decoding) runs in grain threads ahead of the device.

A frame that cannot be decoded skips its example: counted, listed with the reason in the report
and on the console, never written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import time

import numpy as np

from avpretrain.data import jobs, source
from avpretrain.data.frames import FACE_SIZE, SAMPLES_PER_FRAME, VIDEO_FPS, decode_frame

VERSION = "1.0.0"
JOB_NAME = "tokenize_job.json"
REPORT_NAME = "tokenize_report.json"
PARTS_NAME = "tokenize_parts"
METHODS = {"audio": "vqvae_audio", "video": "vqvae_video"}
HOP, N_FFT = 320, 1024                      # frontend.PowerSpectrogram's
AUDIO_FRAME_RATE = 16000 // HOP             # 50
CODES = {"audio": (64,), "video": (24, 24)}  # code grid per frame (vqvae.AUDIO_CODES, VIDEO_GRID)


@dataclasses.dataclass
class TokenizeResult:
    directory: pathlib.Path        # the token dataset (…/<name>_tokens/1.0.0)
    complete: bool                 # every chunk present and the metadata written
    examples: int                  # in the chunks present (all shards): the dataset when complete
    audio_frames: int              # code frames in the chunks present
    video_frames: int
    skipped: list                  # (split, id, reason) in the chunks present
    tokenized: int = 0             # examples tokenized by this call
    seconds: float = 0.0           # this call's wall time over its chunks
    signal_seconds: float = 0.0    # seconds of video (else audio) this call tokenized
    timings: dict = dataclasses.field(default_factory=dict)  # host wait / device / write seconds
    chunks_done: int = 0
    chunks_total: int = 0
    shard: tuple = (0, 1)

    def summary(self) -> str:
        """The last line of ``avpretrain data tokenize``."""
        return (f"tokenized {self.examples} examples audio={self.audio_frames}x{CODES['audio'][0]} "
                f"video={self.video_frames}x{CODES['video'][0]}x{CODES['video'][1]}")


# -- inputs: the tokenizers and the source dataset ------------------------------------------------
def load_tokenizer(path, modality: str):
    """The export at ``path`` as a ``vqvae.Tokenizer`` of ``modality``; anything else is a ValueError
    naming the path and what it is."""
    from avpretrain import export
    from avpretrain import workdir as workdir_lib

    option = f"--{modality}-vq"
    try:
        meta = workdir_lib.export_meta(path)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{option}={path}: {e}") from None
    method = meta["config"].get("method")
    if method != METHODS[modality]:
        raise ValueError(f"{option}={path} is an export of method {method!r}, not the {modality} tokenizer "
                         f"({METHODS[modality]}): export a run of configs/{METHODS[modality]}.py")
    return export.load_pretrained(path)


def fingerprint(path, model) -> str:
    """A short hash of an export's training config and its parameter values (``model``: the loaded
    tokenizer's module): the same weights exported again give the same fingerprint (Orbax's file
    names do not enter it), other weights or settings another."""
    import jax
    from flax import nnx

    meta = json.loads((pathlib.Path(path) / "config.json").read_text())
    h = hashlib.sha256(json.dumps(meta.get("config"), sort_keys=True).encode())
    for key, value in sorted(nnx.to_flat_state(nnx.state(model)), key=lambda kv: str(kv[0])):
        array = np.asarray(jax.device_get(value.get_value() if hasattr(value, "get_value") else value[...]))
        h.update(f"{key}:{array.dtype}:{array.shape}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def _features(label_names, modalities):
    import tensorflow_datasets as tfds

    feats = {"id": tfds.features.Text(), "label": tfds.features.ClassLabel(names=list(label_names)),
             "speaker": tfds.features.Text()}
    for m in modalities:
        feats[f"{m}_codes"] = tfds.features.Tensor(shape=(None, *CODES[m]), dtype=np.int16, encoding="bytes")
    return tfds.features.FeaturesDict(feats)


# -- on the device ----------------------------------------------------------------------------------
class _DeviceEncoder:
    """One tokenizer's jitted ``rows → codes`` over fixed-size packed rows, sharded over the local devices.

    audio rows: float32 [R, (K - 1)·320 + 1024] → int16 [R, K, 64] (K frames per row, no padding here);
    video rows: uint8 [R, 96, 96, 3] → int16 [R, 24, 24].
    """

    def __init__(self, tokenizer, modality: str, frames_per_call: int):
        import jax
        import jax.numpy as jnp
        from flax import nnx
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        from avpretrain import audio, frontend

        devices = jax.local_devices()
        mesh = Mesh(np.array(devices), ("data",))
        self.modality, self.frames_per_call = modality, frames_per_call
        self.frames_per_row = 50 if modality == "audio" else 1
        rows = max(1, math.ceil(frames_per_call / self.frames_per_row))
        self.rows_per_call = math.ceil(rows / len(devices)) * len(devices)
        graphdef, state = nnx.split(tokenizer.model)
        replicated, by_row = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        self._state = jax.device_put(state, replicated)
        if modality == "audio":
            def encode(state, rows_RL):
                spec = audio.power_spectrogram(rows_RL, n_fft=N_FFT, hop_length=HOP, center=False)
                return nnx.merge(graphdef, state).encode(spec).astype(jnp.int16)
        else:
            op = frontend.VideoFrames()

            def encode(state, frames_RHWC):
                frames = op({"video": frames_RHWC[:, None]}, None)["frames"]
                return nnx.merge(graphdef, state).encode(frames)[:, 0].astype(jnp.int16)
        self._encode = jax.jit(encode, in_shardings=(replicated, by_row), out_shardings=by_row)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Codes of all ``rows`` (any count: split into calls of ``rows_per_call``, the last zero-padded),
        flattened to one code grid per packed frame."""
        import jax

        n, per = len(rows), self.rows_per_call
        outs = []
        for i in range(0, n, per):  # dispatched asynchronously, fetched together
            part = rows[i:i + per]
            if len(part) < per:
                part = np.concatenate([part, np.zeros((per - len(part), *rows.shape[1:]), rows.dtype)])
            outs.append(self._encode(self._state, part))
        codes = np.concatenate(jax.device_get(outs))[:n] if outs else np.zeros((0,), np.int16)
        return codes.reshape(-1, *CODES[self.modality])


def pack_audio(clips, frames_per_row: int):
    """Float clips → (rows [R, (K - 1)·320 + 1024], spans): clip i's ``len // 320`` frames are the
    packed frames [start_i, start_i + n_i). Each clip is reflect-padded by 512 (a centred STFT) and
    starts at a multiple of the hop."""
    pieces, spans, offset = [], [], 0
    for x in clips:
        n = len(x) // HOP
        spans.append((offset, n))
        if n == 0:
            continue
        padded = np.pad(x, N_FFT // 2, mode="reflect")
        slots = -(-len(padded) // HOP)
        pieces += [padded, np.zeros(slots * HOP - len(padded), np.float32)]
        offset += slots
    K = frames_per_row
    num_rows = -(-offset // K)
    row_len = (K - 1) * HOP + N_FFT
    stream = np.zeros(num_rows * K * HOP + N_FFT - HOP, np.float32)
    if pieces:
        flat = np.concatenate(pieces)
        stream[:len(flat)] = flat
    rows = np.lib.stride_tricks.sliding_window_view(stream, row_len)[::K * HOP][:num_rows]
    return np.ascontiguousarray(rows), spans


# -- on the host: one example ---------------------------------------------------------------------
@dataclasses.dataclass
class _Loaded:
    split: str
    index: int
    id: str
    label: int
    speaker: str
    audio: np.ndarray | None = None   # float32 [S] (S = 640·F when the example has video too)
    video: np.ndarray | None = None   # uint8 [F, 96, 96, 3]
    problem: str | None = None        # why it is skipped


def _text(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _load(ds, split: str, index: int, modalities) -> _Loaded:
    ex = ds[index]
    out = _Loaded(split, index, _text(ex["id"]), int(ex["label"]), _text(ex.get("speaker", b"")))
    wave = np.asarray(ex["audio"])
    jpegs = list(ex.get("video", ()))
    if len(wave) and jpegs:  # both: their common length, F frames and 640·F samples
        frames = min(len(jpegs), len(wave) // SAMPLES_PER_FRAME)
        wave, jpegs = wave[:frames * SAMPLES_PER_FRAME], jpegs[:frames]
    if "audio" in modalities:
        out.audio = wave.astype(np.float32) / 32768.0
    if "video" in modalities:
        try:
            decoded = [decode_frame(j) for j in jpegs]
        except ValueError as e:
            out.problem = str(e)
            return out
        bad = next((f.shape for f in decoded if f.shape != (FACE_SIZE, FACE_SIZE, 3)), None)
        if bad is not None:
            out.problem = f"a stored frame is {bad}, expected ({FACE_SIZE}, {FACE_SIZE}, 3)"
            return out
        out.video = np.stack(decoded) if decoded else np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
    return out


# -- the job ---------------------------------------------------------------------------------------
def _shard_path(version_dir: pathlib.Path, name: str, chunk: jobs.Chunk) -> pathlib.Path:
    return version_dir / f"{name}-{chunk.split}.array_record-{chunk.index:05d}-of-{chunk.count:05d}"


def _stats_path(out: pathlib.Path, chunk: jobs.Chunk) -> pathlib.Path:
    return out / PARTS_NAME / f"{chunk.split}-{chunk.index:05d}.json"


def _check_job(path: pathlib.Path, job: dict) -> None:
    if not path.is_file():
        return
    stored = jobs.read_json(path)
    for key in job:
        if stored.get(key) != job[key]:
            raise ValueError(f"{path.parent} holds a tokenization with other settings ({key}: {stored.get(key)!r}, "
                             f"this run: {job[key]!r}): use the same settings, or another --out")


def tokenize(data_dir, out, *, audio_vq=None, video_vq=None, shard=(0, 1), chunk_records: int = 128,
             audio_frames_per_call: int = 2048, video_frames_per_call: int = 256, read_threads: int = 8,
             progress: bool = True, max_chunks: int | None = None, encoders: dict | None = None) -> TokenizeResult:
    """Tokenizes this shard's missing chunks of every split of ``data_dir`` into ``out`` (resuming),
    and writes the metadata when every chunk is there. ``max_chunks``: stop after that many chunks
    (benchmarks; a later call continues); ``encoders``: ``make_encoders`` already built (and compiled) for
    these tokenizers (the benchmark's). Bad input (an export of the wrong kind, a dataset without
    the modality asked for, other settings than ``out``'s job) is a ValueError before any work."""
    from tqdm.auto import tqdm

    if audio_vq is None and video_vq is None:
        raise ValueError("nothing to do: give --audio-vq and/or --video-vq (exports of configs/vqvae_*.py)")
    if chunk_records < 1:
        raise ValueError(f"chunk_records={chunk_records}: must be >= 1")
    out = pathlib.Path(out)
    dataset_dir = source.find_dataset_dir(data_dir)
    info = source.open_builder(dataset_dir).info
    meta = source.dataset_meta(dataset_dir)
    source.require_single_label(dataset_dir, "data tokenize")
    paths = {m: p for m, p in (("audio", audio_vq), ("video", video_vq)) if p is not None}
    if "video" in paths and "video" not in info.features:
        raise ValueError(f"{dataset_dir} ({meta.name}) has no video: --video-vq needs an audiovisual dataset "
                         "(avpretrain data build demo_av|av_folder|ravdess|crema_d)")
    tokenizers = {m: load_tokenizer(p, m) for m, p in paths.items()}
    for m, tok in tokenizers.items():
        if tok.sample_rate != meta.sample_rate:
            raise ValueError(f"--{m}-vq={paths[m]} was trained at {tok.sample_rate} Hz, {dataset_dir} stores "
                             f"{meta.sample_rate} Hz audio")
    name = f"{meta.name}_tokens"
    version_dir = out / name / VERSION
    splits = {s: n for s, n in meta.num_examples.items() if n}
    job = {"source": str(dataset_dir.absolute()), "source_splits": splits, "chunk_records": chunk_records,
           **{f"{m}_vq": ({"path": str(pathlib.Path(paths[m]).absolute()), "fingerprint": fingerprint(paths[m], tokenizers[m].model)}
                          if m in paths else None) for m in METHODS}}
    chunks = jobs.plan(splits, chunk_records)
    mine = jobs.of_shard(chunks, shard)
    others = [p.parent for p in out.rglob("dataset_info.json") if version_dir != p.parent] if out.is_dir() else []
    if others:
        raise ValueError(f"{out} already holds another dataset ({', '.join(map(str, others))}): use an empty --out")
    _check_job(out / JOB_NAME, job)
    version_dir.mkdir(parents=True, exist_ok=True)
    if not (out / JOB_NAME).is_file():
        jobs.write_json(out / JOB_NAME, job)
    _check_job(out / JOB_NAME, job)  # shards may start together: the last writer wins, a loser fails here

    pending = [c for c in mine if not _shard_path(version_dir, name, c).is_file()]
    if max_chunks is not None:
        pending = pending[:max_chunks]
    modalities = tuple(tokenizers)
    features = _features(meta.label_names, modalities)
    if pending and encoders is None:
        encoders = make_encoders(tokenizers, audio_frames_per_call, video_frames_per_call)
    order = [(c.split, i) for c in pending for i in range(c.start, c.stop)]
    loaded = _loader(dataset_dir, order, modalities, read_threads)

    timings = {"host_wait": 0.0, "device": 0.0, "write": 0.0}
    tokenized, signal_frames, t_start = 0, {"audio": 0, "video": 0}, time.perf_counter()
    with tqdm(total=len(order), desc=f"tokenize {meta.name}", unit="clip", file=sys.stderr,
              disable=not progress or not order, smoothing=0.1) as bar:
        for chunk in pending:
            records, skipped = [], []
            for group in _groups(loaded, chunk.size, encoders, timings, skipped, bar):
                t0 = time.perf_counter()
                codes = {m: _encode_group(encoders[m], [getattr(x, m) for x in group]) for m in modalities}
                timings["device"] += time.perf_counter() - t0
                records += [(x, {m: codes[m][k] for m in modalities}) for k, x in enumerate(group)]
            t0 = time.perf_counter()
            stats = _write_chunk(out, version_dir, name, chunk, features, records, skipped)
            timings["write"] += time.perf_counter() - t0
            tokenized += stats["examples"]
            for m in modalities:
                signal_frames[m] += stats[f"{m}_frames"]
    seconds = time.perf_counter() - t_start
    result = _finish(out, version_dir, name, chunks, features, meta, job)
    return dataclasses.replace(result, tokenized=tokenized, seconds=seconds if pending else 0.0,
                               signal_seconds=_signal_seconds(signal_frames, modalities), timings=timings,
                               shard=tuple(shard))


def make_encoders(tokenizers: dict, audio_frames_per_call: int = 2048, video_frames_per_call: int = 256) -> dict:
    return {m: _DeviceEncoder(tok, m, audio_frames_per_call if m == "audio" else video_frames_per_call)
            for m, tok in tokenizers.items()}


def _loader(dataset_dir, order, modalities, read_threads: int):
    """Examples ``order`` ([(split, index)]) loaded in grain threads, in order, a bounded window ahead."""
    import grain

    sources = {s: source.data_source(dataset_dir, s) for s in {s for s, _ in order}}
    return iter(grain.MapDataset.source(order)
                .map(lambda si: _load(sources[si[0]], si[0], si[1], modalities))
                .to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * read_threads)))


def _groups(loaded, count: int, encoders: dict, timings: dict, skipped: list, bar=None):
    """The next ``count`` loaded examples in groups of about one device call's frames of each tokenizer;
    examples with a problem go to ``skipped`` (split, id, reason) and the console."""
    group = []
    for _ in range(count):
        t0 = time.perf_counter()
        x = next(loaded)
        timings["host_wait"] += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        if x.problem:
            skipped.append((x.split, x.id, x.problem))
            print(f"skipped {x.split}/{x.id}: {x.problem}", file=sys.stderr)
            continue
        group.append(x)
        if any(sum(_num_frames(g, m) for g in group) >= e.frames_per_call for m, e in encoders.items()):
            yield group
            group = []
    if group:
        yield group


def _signal_seconds(frames: dict, modalities) -> float:
    """Seconds of video, else of audio, in ``frames`` (code frames per modality)."""
    return frames["video"] / VIDEO_FPS if "video" in modalities else frames["audio"] / AUDIO_FRAME_RATE


def _num_frames(x: _Loaded, modality: str) -> int:
    return len(x.audio) // HOP if modality == "audio" else len(x.video)


def _encode_group(encoder: _DeviceEncoder, signals: list) -> list:
    """Per-example codes of one group: pack, encode on the device, unpack."""
    if encoder.modality == "audio":
        rows, spans = pack_audio(signals, encoder.frames_per_row)
    else:
        lengths = [len(v) for v in signals]
        rows = np.concatenate(signals) if signals else np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        spans = list(zip(np.cumsum([0] + lengths[:-1]).tolist(), lengths))
    flat = encoder(rows)
    return [flat[start:start + n] for start, n in spans]


def _write_chunk(out, version_dir, name, chunk, features, records, skipped) -> dict:
    """Serialises a chunk's examples into its shard file (atomic: the rename commits the chunk), after
    its statistics (examples, code frames, skips) in tokenize_parts/."""
    from array_record.python.array_record_module import ArrayRecordWriter

    stats = {"examples": len(records), "skipped": [list(s) for s in skipped]}
    serialized = []
    for x, codes in records:
        example = {"id": x.id, "label": x.label, "speaker": x.speaker}
        for m, c in codes.items():
            example[f"{m}_codes"] = c
        serialized.append(features.serialize_example(example))
    for m in METHODS:
        stats[f"{m}_frames"] = int(sum(len(codes[m]) for _, codes in records if m in codes))
    jobs.write_json(_stats_path(out, chunk), stats)

    def write(tmp):
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        for record in serialized:
            writer.write(record)
        writer.close()

    jobs.atomic_file(_shard_path(version_dir, name, chunk), write)
    return stats


def _finish(out, version_dir, name, chunks, features, meta, job) -> TokenizeResult:
    """The result over the chunks present; with all present, writes the TFDS metadata and the report."""
    import tensorflow_datasets as tfds

    present = [c for c in chunks if _shard_path(version_dir, name, c).is_file() and _stats_path(out, c).is_file()]
    stats = {c: jobs.read_json(_stats_path(out, c)) for c in present}
    skipped = [tuple(s) for c in present for s in stats[c]["skipped"]]
    result = TokenizeResult(
        directory=version_dir, complete=False, examples=sum(s["examples"] for s in stats.values()),
        audio_frames=sum(s["audio_frames"] for s in stats.values()),
        video_frames=sum(s["video_frames"] for s in stats.values()), skipped=skipped,
        chunks_done=len(present), chunks_total=len(chunks))
    if len(present) < len(chunks):
        return result
    if not (version_dir / "dataset_info.json").is_file():
        template = tfds.core.ShardedFileTemplate(data_dir=version_dir, dataset_name=name,
                                                 filetype_suffix="array_record")
        split_infos = [
            tfds.core.SplitInfo(
                name=split, shard_lengths=[stats[c]["examples"] for c in chunks if c.split == split],
                num_bytes=sum(_shard_path(version_dir, name, c).stat().st_size for c in chunks if c.split == split),
                filename_template=template.replace(split=split))
            for split in dict.fromkeys(c.split for c in chunks)]
        metadata = tfds.core.MetadataDict(
            sample_rate=meta.sample_rate, audio_frame_rate=AUDIO_FRAME_RATE, video_frame_rate=VIDEO_FPS,
            source=job["source"], source_name=meta.name, audio_vq=job["audio_vq"], video_vq=job["video_vq"])
        tfds.folder_dataset.write_metadata(
            data_dir=version_dir, features=features, split_infos=split_infos, filename_template=template,
            check_data=False, metadata=metadata,
            description=f"VQ-VAE codes of {meta.name} (avpretrain data tokenize)")
        report = {"dataset_dir": str(version_dir), "source": job["source"],
                  "counts": {s.name: int(sum(s.shard_lengths)) for s in split_infos},
                  "audio_frames": result.audio_frames, "video_frames": result.video_frames,
                  "skipped": [{"split": s, "id": i, "reason": r} for s, i, r in skipped]}
        jobs.write_json(out / REPORT_NAME, report)
    return dataclasses.replace(result, complete=True)


# -- the benchmark (avpretrain bench --tokenize) ------------------------------------------------------
def benchmark(data_dir, *, audio_vq=None, video_vq=None, examples: int = 128, read_threads: int = 8,
              audio_frames_per_call: int = 2048, video_frames_per_call: int = 256, repeats: int = 3) -> dict:
    """The job's rates on the first ``examples`` training examples, three ways: the host alone (read +
    JPEG decode in ``read_threads`` threads), the device alone (packed encode of preloaded examples,
    compiled first; median of ``repeats``) and end to end (``tokenize`` into a temporary directory:
    host and device overlapped, plus serialising and writing). Rates in clips/s and seconds of signal
    (video when tokenized, else audio) per second."""
    import tempfile

    paths = {m: p for m, p in (("audio", audio_vq), ("video", video_vq)) if p is not None}
    if not paths:
        raise ValueError("nothing to benchmark: give --audio-vq and/or --video-vq")
    dataset_dir = source.find_dataset_dir(data_dir)
    meta = source.dataset_meta(dataset_dir)
    source.require_single_label(dataset_dir, "bench --tokenize")
    if "video" in paths and "video" not in source.open_builder(dataset_dir).info.features:
        raise ValueError(f"{dataset_dir} ({meta.name}) has no video: --video-vq needs an audiovisual dataset")
    tokenizers = {m: load_tokenizer(p, m) for m, p in paths.items()}
    modalities = tuple(tokenizers)
    encoders = make_encoders(tokenizers, audio_frames_per_call, video_frames_per_call)
    n = min(examples, meta.num_examples["train"])
    order = [("train", i) for i in range(n)]

    t0 = time.perf_counter()
    loaded = list(_loader(dataset_dir, order, modalities, read_threads))
    host_s = time.perf_counter() - t0
    timings = {"host_wait": 0.0}
    groups = list(_groups(iter(loaded), n, encoders, timings, []))
    kept = sum(len(g) for g in groups)
    frames = {m: sum(_num_frames(x, m) for g in groups for x in g) for m in METHODS if m in modalities}
    frames.update({m: 0 for m in METHODS if m not in modalities})

    def encode_all():
        for g in groups:
            for m in modalities:
                _encode_group(encoders[m], [getattr(x, m) for x in g])

    t0 = time.perf_counter()
    for m in modalities:  # compile: one call of each encoder
        _encode_group(encoders[m], [getattr(x, m) for x in groups[0]])
    compile_s = time.perf_counter() - t0
    device_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode_all()
        device_times.append(time.perf_counter() - t0)
    device_s = float(np.median(device_times))

    with tempfile.TemporaryDirectory(prefix="avp-tokenize-bench-") as tmp:
        r = tokenize(dataset_dir, tmp, **{f"{m}_vq": p for m, p in paths.items()}, chunk_records=n, max_chunks=1,
                     read_threads=read_threads, progress=False, encoders=encoders)
    signal = _signal_seconds(frames, modalities)
    return {"examples": kept, "frames": frames, "signal": "video" if "video" in modalities else "audio",
            "signal_seconds": signal, "compile_s": compile_s, "host_s": host_s, "device_s": device_s,
            "device_times_s": device_times, "end_to_end_s": r.seconds, "timings": r.timings,
            "rows_per_call": {m: e.rows_per_call for m, e in encoders.items()},
            "host_clips_per_s": len(loaded) / host_s, "device_clips_per_s": kept / device_s,
            "clips_per_s": r.tokenized / r.seconds, "host_signal_per_s": signal / host_s,
            "device_signal_per_s": signal / device_s, "signal_per_s": r.signal_seconds / r.seconds,
            "read_threads": read_threads}
