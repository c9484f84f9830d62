"""Params-only encoder export and the downstream API.

``avpretrain export --workdir=W --out=E`` writes ``E/config.json`` (the training config, the
normalisation statistics and the sample rate) and ``E/params`` (Orbax, the online encoder only:
no target encoder, predictor or optimizer state). Downstream::

    encoder = avpretrain.load_pretrained("E")
    frames, times, valid = encoder.frame_embeddings(waveforms, sample_rate=44100)  # [B, T', D'], seconds, mask
    scene = encoder.scene_embeddings(waveforms, sample_rate=44100)                 # [B, D']

Every clip is cut into training-length chunks and the encoder runs over fixed-size batches of
chunks (one compiled shape), so time and memory follow the total audio length, never the number
of clips times the longest one.
"""
from __future__ import annotations

import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import nnx

from avpretrain import audio, checkpoint, config as config_lib, method as method_lib, sharding
from avpretrain import workdir as workdir_lib
from avpretrain.models import vit

HOP = 160  # log-mel hop in samples (audio.log_mel's default)
# Log-mel frames of context on each side of a chunk's window: 2 hops cover the STFT's half window
# (200 samples), so a chunk's frames see exactly the samples they see in the whole clip's log-mel.
CONTEXT_FRAMES = 2
# A 2-D array whose rows are shorter than one STFT window (400 samples) while it has more rows
# than that length is read as [samples, channels], not as [clips, samples].
MIN_CLIP_SAMPLES = 400


def _encoder_model(config, mesh, seed: int | None = None):
    seed = config.seed if seed is None else seed
    with sharding.mesh_rules(mesh, config.sharding_rules):  # Rngs made inside the trace (mutated there)
        return nnx.jit(lambda: method_lib.of(config).create(config, nnx.Rngs(seed), True))()


def export(workdir: str, out: str, *, step: int | None = None) -> pathlib.Path:
    """Writes the online encoder of ``workdir`` to ``out``: the given checkpointed ``step``, else the
    step selected by validation (``selected.json``, runs with ``eval_every``), else the latest."""
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    config_file = workdir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: is {workdir} a training workdir?")
    if step is None:
        from avpretrain import validation

        best = validation.selected_export(workdir)
        if best is not None:
            return _copy_export(best, out, {"selected": validation.selected(workdir)["selected"]})
    config = config_lib.from_json(config_file.read_text())
    stats = workdir_lib.stored_norm_stats(config, workdir)
    if stats is None and method_lib.of(config).needs_stats:
        raise FileNotFoundError(f"{workdir / 'norm_stats.json'} not found and config.data.norm_stats is empty")
    model = _encoder_model(config, sharding.single_device_mesh())
    params = checkpoint.restore_params(workdir / "checkpoints", nnx.to_pure_dict(nnx.state(model)), step)
    return write_export(out, config, params, stats)


def exported_part(config, params: dict) -> dict:
    """The part of a training model's pure-dict ``params`` that its export keeps: the variables of the
    method's ``encoder_only`` model (shapes only are built to know them)."""
    keep = nnx.to_pure_dict(nnx.state(_abstract_model(config, sharding.single_device_mesh())))

    def pick(tree, like):
        return {k: pick(tree[k], v) if isinstance(v, dict) else tree[k] for k, v in like.items()}

    return pick(params, keep)


def _copy_export(src: pathlib.Path, out: pathlib.Path, extra: dict) -> pathlib.Path:
    """A copy of the export ``src`` at ``out`` (replacing one there), ``extra`` added to its config.json."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    if (out / "params").exists():
        shutil.rmtree(out / "params")
    shutil.copytree(src / "params", out / "params")
    meta = workdir_lib.read_json(src / workdir_lib.CONFIG_NAME) | extra
    (out / workdir_lib.CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out


def per_block(config, params: dict):
    """(config, params) of an encoder in the per-block layout: a ``model.scan_layers`` encoder's
    stacked blocks unstacked and the flag cleared, so that exports have one layout whatever the
    training run used (``vit.unstack_params``); anything else as it is."""
    if not config.get("model") or not config.model.get("scan_layers"):
        return config, params
    config = config_lib.from_json(config_lib.to_json(config))  # an unlocked copy
    config.model.scan_layers = False
    return config, vit.unstack_params(params, vit.stacks_in(params))


def write_export(out, config, params, norm_stats, extra: dict | None = None) -> pathlib.Path:
    """Writes an export: ``out/params`` (Orbax, the encoder's pure-dict ``params``) and ``out/config.json``
    (``norm_stats`` null for a method whose front end has no statistics)."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config, params = per_block(config, params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((out / "params").absolute(), params, force=True)
        ckptr.wait_until_finished()
    meta = {"config": json.loads(config_lib.to_json(config)), "norm_stats": None if norm_stats is None else [float(v) for v in norm_stats],
            "sample_rate": int(config.data.sample_rate), "format": workdir_lib.EXPORT_FORMAT, **(extra or {})}
    if jax.process_index() == 0:
        (out / workdir_lib.CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out


class PretrainedEncoder:
    """A frozen encoder for downstream use; waveforms at any sample rate (resampled).

    Audio-language models (M2D-CLAP stage 1, M2D2 stage 2) also offer the joint audio-text space:
    ``embed_audio`` and ``embed_text`` (``is_audio_language``).
    """

    def __init__(self, model, config, norm_stats, sample_rate: int):
        self.model, self.config = model, config
        self.norm_stats = tuple(norm_stats)
        self.sample_rate = sample_rate
        self.input_frames = model.input_frames
        self.patch = model.patch
        self.hop_seconds = HOP / sample_rate
        self.chunk_samples = self.input_frames * HOP
        self.window_samples = self.chunk_samples + 2 * CONTEXT_FRAMES * HOP
        self.text_model = config.data.get("text_model") or None
        self._sentence_encoder = None
        graphdef, state = nnx.split(model)
        frames = self.input_frames

        def chunk_lms(windows_CW):
            """Chunk windows [C, window_samples] → the chunks' normalised log-mel [C, 1, F, frames]."""
            lms = audio.log_mel(windows_CW, sample_rate=sample_rate)[:, :, CONTEXT_FRAMES:CONTEXT_FRAMES + frames]
            return audio.normalize(lms, *self.norm_stats)[:, None]

        @jax.jit
        def embed_frames(state, windows_CW):
            """→ the frame embeddings of each chunk [C, T/p, D']."""
            return nnx.merge(graphdef, state).frame_embeddings(chunk_lms(windows_CW))

        @jax.jit
        def encode_tokens(state, windows_CW):
            """→ the encoder's patch tokens of each chunk [C, gF·gT, D] (CLS dropped)."""
            return nnx.merge(graphdef, state).encode(chunk_lms(windows_CW))[:, 1:]

        @jax.jit
        def embed_joint(state, tokens_HKND, cols_H):
            """Tokens of the K chunks of H clips → the joint-space embedding [H, D] over each clip's valid columns."""
            m = nnx.merge(graphdef, state)
            H, K, N, D = tokens_HKND.shape
            gF, gT = m.grid
            column = (jnp.arange(K)[:, None, None] * gT + jnp.arange(gT)[None, None, :]).repeat(gF, axis=1)
            return m.embed_tokens(tokens_HKND.reshape(H, K * N, D), column.reshape(1, -1) < cols_H[:, None])

        @jax.jit
        def layer_columns(state, windows_CW):
            """→ each block's hidden states per patch column of each chunk [C, depth, T/p, D]."""
            return nnx.merge(graphdef, state).layer_columns(chunk_lms(windows_CW))

        self._state = state
        self._embed_frames, self._encode_tokens, self._embed_joint = embed_frames, encode_tokens, embed_joint
        self._layer_columns = layer_columns
        self._embed_text = jax.jit(lambda state, x: nnx.merge(graphdef, state).embed_text(x))

    @property
    def embedding_dim(self) -> int:
        return self.model.grid[0] * self.model.dims["width"]

    @property
    def is_audio_language(self) -> bool:
        return hasattr(self.model, "embed_tokens")

    def _prepare(self, waveforms, sample_rate, lengths) -> list[np.ndarray]:
        """The clips as 1-D float32 arrays at the model's rate. Accepted: a list of 1-D clips, one 1-D clip,
        or a [clips, samples] array (numpy or anything with ``__array__``)."""
        if isinstance(waveforms, (list, tuple)):
            waves = [np.asarray(w, np.float32) for w in waveforms]
            for i, w in enumerate(waves):
                if w.ndim != 1:
                    raise ValueError(f"clip {i} has shape {w.shape}: expected 1-D mono samples "
                                     "(down-mix a [samples, channels] clip with x.mean(axis=1))")
        else:
            array = np.asarray(waveforms, np.float32)
            if array.ndim not in (1, 2):
                raise ValueError(f"waveforms must be a list of 1-D clips or a [clips, samples] array, got shape "
                                 f"{array.shape}")
            if array.ndim == 2 and array.shape[1] < MIN_CLIP_SAMPLES < array.shape[0]:
                raise ValueError(f"waveforms of shape {array.shape} look like [samples, channels] (rows shorter than "
                                 f"one {MIN_CLIP_SAMPLES}-sample STFT window): pass a list of mono clips or "
                                 "down-mix with x.mean(axis=1)")
            waves = [array] if array.ndim == 1 else list(array)
        for i, w in enumerate(waves):
            if not np.all(np.isfinite(w)):
                raise ValueError(f"clip {i} contains NaN or inf samples")
        if lengths is not None:
            if len(lengths) != len(waves):
                raise ValueError(f"lengths has {len(lengths)} entries for {len(waves)} clips")
            waves = [w[:int(n)] for w, n in zip(waves, lengths)]
        if sample_rate is not None and sample_rate != self.sample_rate:
            waves = [audio.resample(w, sample_rate, self.sample_rate) for w in waves]
        return waves

    def _num_chunks(self, num_samples: int) -> int:
        return max(1, -(-num_samples // self.chunk_samples))

    def _chunk_windows(self, wave) -> np.ndarray:
        """The clip zero-padded to whole chunks, as one window per chunk with the log-mel's context on both
        sides (reflected at the clip's ends, as the whole clip's log-mel does): [n, window_samples], a view."""
        padded = np.pad(wave, (0, self._num_chunks(len(wave)) * self.chunk_samples - len(wave)))
        padded = np.pad(padded, CONTEXT_FRAMES * HOP, mode="reflect")
        return np.lib.stride_tricks.sliding_window_view(padded, self.window_samples)[::self.chunk_samples]

    def _per_clip(self, fn, waves, order, batch_size):
        """Yields (clip index, ``fn``'s output for each of its chunks [n, ...]) for the clips in ``order``.

        The chunks of all clips, one after another, go through the jitted ``fn`` ``batch_size`` at a time
        (one compiled shape; only the last batch is padded), so time and memory follow the total number
        of chunks and one clip's length, never the number of clips times the longest.
        """
        windows = ((i, w) for i in order for w in self._chunk_windows(waves[i]))
        batch = np.zeros((batch_size, self.window_samples), np.float32)
        parts = []
        while rows := list(itertools.islice(windows, batch_size)):
            for row, (_, w) in enumerate(rows):
                batch[row] = w
            batch[len(rows):] = 0
            out = np.asarray(fn(self._state, batch))
            for (i, _), chunk_out in zip(rows, out):
                parts.append(chunk_out)
                if len(parts) == self._num_chunks(len(waves[i])):
                    yield i, np.stack(parts)
                    parts = []

    def _columns(self, waves) -> np.ndarray:
        """Patch columns covered by each clip (at least one)."""
        return np.asarray([max(1, audio.num_frames(len(w)) // self.patch) for w in waves], np.int64)

    def frame_embeddings(self, waveforms, sample_rate: int | None = None, lengths=None, batch_size: int = 64):
        """Per patch column: (embeddings [B, T', D'] zeroed past each clip's end, timestamps [T'] in
        seconds (column centres), valid [B, T']); T' is the longest clip's number of columns.

        The log-mel of each whole clip is cut into training-length chunks that are embedded and
        concatenated along time (as M2D does); clips are zero-padded to whole chunks. ``batch_size``
        is the number of chunks per encoder call. No clips give empty arrays.
        """
        waves = self._prepare(waveforms, sample_rate, lengths)
        cols = self._columns(waves)
        total = int(cols.max(initial=0))
        emb = np.zeros((len(waves), total, self.embedding_dim), np.float32)
        for i, chunks in self._per_clip(self._embed_frames, waves, range(len(waves)), batch_size):
            emb[i, :cols[i]] = chunks.reshape(-1, chunks.shape[-1])[:cols[i]]
        valid = np.arange(total)[None] < cols[:, None]
        timestamps = (np.arange(total) * self.patch + self.patch / 2) * self.hop_seconds
        return emb, timestamps, valid

    def scene_embeddings(self, waveforms, sample_rate: int | None = None, lengths=None, batch_size: int = 64):
        """Mean of the frame embeddings over each clip's valid time: [B, D'] ([0, D'] for no clips)."""
        waves = self._prepare(waveforms, sample_rate, lengths)
        cols = self._columns(waves)
        scene = np.zeros((len(waves), self.embedding_dim), np.float32)
        for i, chunks in self._per_clip(self._embed_frames, waves, range(len(waves)), batch_size):
            scene[i] = chunks.reshape(-1, chunks.shape[-1])[:cols[i]].mean(0)
        return scene

    def layer_embeddings(self, waveforms, sample_rate: int | None = None, lengths=None, batch_size: int = 64):
        """Each encoder block's hidden states averaged over each clip's valid time and frequency:
        [B, depth, D] (the features of a layer analysis, ``avpretrain eval layers``)."""
        waves = self._prepare(waveforms, sample_rate, lengths)
        cols = self._columns(waves)
        out = None
        for i, chunks in self._per_clip(self._layer_columns, waves, range(len(waves)), batch_size):
            n, L, T, D = chunks.shape  # chunks of one clip: their columns, one after another
            columns = chunks.transpose(1, 0, 2, 3).reshape(L, n * T, D)[:, :cols[i]]
            if out is None:
                out = np.zeros((len(waves), L, D), np.float32)
            out[i] = columns.mean(1)
        return out if out is not None else np.zeros((0, 0, self.embedding_dim), np.float32)

    def _require_audio_language(self, what):
        if not self.is_audio_language:
            raise ValueError(f"{what} needs an audio-language model (method m2d_clap or m2d2); this one is "
                             f"{self.config.method!r}")

    def embed_audio(self, waveforms, sample_rate: int | None = None, lengths=None, batch_size: int = 64):
        """Joint audio-text space: L2-normalised [B, D] over the whole of each clip ([0, D] for no clips).

        The encoder runs over the chunks ``batch_size`` at a time; the head then takes each clip's
        tokens, clips grouped by their number of chunks rounded up to a power of two (one compiled
        shape per group size), at most ``batch_size`` chunks' tokens per call.
        """
        self._require_audio_language("embed_audio")
        waves = self._prepare(waveforms, sample_rate, lengths)
        cols = self._columns(waves)
        size = [1 << (self._num_chunks(len(w)) - 1).bit_length() for w in waves]
        groups = []  # head calls: clips of one size, at most max(1, batch_size // size) of them
        for s in sorted(set(size)):
            members = [i for i in range(len(waves)) if size[i] == s]
            per_call = max(1, batch_size // s)
            groups += [members[k:k + per_call] for k in range(0, len(members), per_call)]
        clips = self._per_clip(self._encode_tokens, waves, [i for g in groups for i in g], batch_size)
        (gF, gT), width = self.model.grid, self.model.dims["width"]
        out = np.zeros((len(waves), width), np.float32)
        for group in groups:
            s = size[group[0]]
            tokens = np.zeros((max(1, batch_size // s), s, gF * gT, width), np.float32)
            group_cols = np.ones(len(tokens), np.int32)
            for row, (i, clip_tokens) in zip(range(len(group)), clips):
                tokens[row, :len(clip_tokens)] = clip_tokens
                group_cols[row] = cols[i]
            out[group] = np.asarray(self._embed_joint(self._state, tokens, group_cols))[:len(group)]
        return _l2_normalize(out)

    def embed_text(self, texts, batch_size: int = 256):
        """Joint audio-text space: L2-normalised [B, D] for a list of strings (encoded with the sentence
        model the model was trained against; needs the ``text`` extra) or for precomputed sentence
        embeddings [B, T] of that model."""
        self._require_audio_language("embed_text")
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) and isinstance(texts[0], str):
            sentence = self.sentence_encoder().encode(list(texts))
        else:
            sentence = np.asarray(texts, np.float32)
            if sentence.ndim != 2 or sentence.shape[1] != self.model.text_dim:
                raise ValueError(f"precomputed sentence embeddings must be [B, {self.model.text_dim}] "
                                 f"({self.text_model}), got {sentence.shape}")
        outs = []
        for start in range(0, len(sentence), batch_size):
            batch = np.zeros((batch_size, sentence.shape[1]), np.float32)
            part = sentence[start:start + batch_size]
            batch[:len(part)] = part
            outs.append(np.asarray(self._embed_text(self._state, batch))[:len(part)])
        return _l2_normalize(np.concatenate(outs) if outs else np.zeros((0, self.model.dims["width"]), np.float32))

    def sentence_encoder(self):
        """The sentence-embedding model of the text side (loaded once; the ``text`` extra)."""
        if self._sentence_encoder is None:
            from avpretrain.data import captions

            self._sentence_encoder = captions.SentenceEncoder(self.text_model)
        return self._sentence_encoder


def _l2_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_pretrained(path: str, *, random_init: bool = False, seed: int = 0):
    """Loads an exported model (no training state) through its method's export adapter
    (``Method.pretrained``: a ``PretrainedEncoder`` for the M2D family). ``random_init``: same
    architecture, fresh weights.

    A training workdir, a missing or corrupt ``config.json`` and unreadable parameters are errors
    (ValueError / FileNotFoundError) naming the path.
    """
    path = pathlib.Path(path)
    meta = workdir_lib.export_meta(path)
    config = config_lib.from_json(json.dumps(meta["config"]))
    method = method_lib.of(config)
    if method.pretrained is None:
        raise ValueError(f"{path}: method {config.method!r} has no export adapter (Method.pretrained)")
    mesh = sharding.single_device_mesh()
    if random_init:
        model = _encoder_model(config, mesh, seed=seed)
    else:  # the stored state replaces every variable: no random init to compile and run
        model = _abstract_model(config, mesh)
        _restore_params(path / "params", model, mesh)
    return method.pretrained(model, config, meta)


def _abstract_model(config, mesh):
    """The export's model with shapes only (``nnx.eval_shape``), for ``_restore_params`` to fill."""
    with sharding.mesh_rules(mesh, config.sharding_rules):
        return nnx.eval_shape(lambda: method_lib.of(config).create(config, nnx.Rngs(config.seed), True))


def _restore_params(params_dir: pathlib.Path, model, mesh) -> None:
    """Fills ``model`` (concrete or ``_abstract_model``) with the variables stored in ``params_dir``,
    replicated on ``mesh``; a store that cannot be read is a ValueError naming it with the first line
    of the underlying error."""
    if not params_dir.is_dir():
        raise FileNotFoundError(f"{params_dir} not found: an export holds config.json and params/")
    state = nnx.state(model)
    replicated = sharding.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            nnx.to_pure_dict(state))
    try:
        # Orbax reads all arrays concurrently and closes its event loop at the first failure; every
        # read still pending then prints "Event loop is closed" from TensorStore's threads, late. So
        # the store is checked first with plain TensorStore reads, a window at a time, each awaited:
        # an unreadable index or a truncated data file is one error before Orbax starts.
        _check_store(params_dir)
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir.absolute(), abstract)
    except Exception as e:  # Orbax and TensorStore raise assorted types
        raise ValueError(f"{params_dir}: cannot restore the parameters (truncated or corrupt export?): "
                         f"{_first_line(_root_cause(e))}") from e
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def _check_store(params_dir: pathlib.Path, window: int = 16) -> None:
    """Reads every value of the OCDBT store at ``params_dir`` (``window`` reads in flight, each awaited;
    what is read is dropped): raises at the first unreadable one."""
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{params_dir.absolute()}/"}).result()
    keys = kv.list().result()
    for i in range(0, len(keys), window):
        for read in [kv.read(k) for k in keys[i:i + window]]:
            read.result()


def _root_cause(e: BaseException) -> BaseException:
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
