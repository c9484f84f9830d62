"""Params-only encoder export and the downstream API.

``avpretrain export --workdir=W --out=E`` writes ``E/config.json`` (the training config, the
normalisation statistics and the sample rate) and ``E/params`` (Orbax, the online encoder only:
no target encoder, predictor or optimizer state). Downstream::

    encoder = avpretrain.load_pretrained("E")
    frames, times = encoder.frame_embeddings(waveforms, sample_rate=44100)   # [B, T', D'], seconds
    scene = encoder.scene_embeddings(waveforms, sample_rate=44100)           # [B, D']
"""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from avpretrain import audio, checkpoint, config as config_lib, models, sharding, workdir as workdir_lib


def _encoder_model(config, mesh, seed: int | None = None):
    seed = config.seed if seed is None else seed
    with sharding.mesh_rules(mesh, config.sharding_rules):  # Rngs made inside the trace (mutated there)
        return nnx.jit(lambda: models.create(config, nnx.Rngs(seed), encoder_only=True))()


def export(workdir: str, out: str, *, step: int | None = None) -> pathlib.Path:
    """Writes the online encoder of the latest (or given) checkpoint of ``workdir`` to ``out``."""
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    config_file = workdir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: is {workdir} a training workdir?")
    config = config_lib.from_json(config_file.read_text())
    stats = workdir_lib.stored_norm_stats(config, workdir)
    if stats is None:
        raise FileNotFoundError(f"{workdir / 'norm_stats.json'} not found and config.data.norm_stats is empty")
    mean, std = stats
    model = _encoder_model(config, sharding.single_device_mesh())
    params = checkpoint.restore_params(workdir / "checkpoints", nnx.to_pure_dict(nnx.state(model)), step)
    out.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save((out / "params").absolute(), params, force=True)
    ckptr.wait_until_finished()
    meta = {"config": json.loads(config_lib.to_json(config)), "norm_stats": [float(mean), float(std)],
            "sample_rate": int(config.data.sample_rate), "format": "avpretrain-encoder-v1"}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
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
        self.hop_seconds = 160 / sample_rate
        self.text_model = config.data.get("text_model") or None
        self._sentence_encoder = None
        graphdef, state = nnx.split(model)
        frames = self.input_frames

        def chunked_lms(waves_BS):
            """[B, n·frames·hop] waveforms → the log-mel of each whole clip cut into n chunks [B·n, 1, F, frames]."""
            lms = audio.normalize(audio.log_mel(waves_BS, sample_rate=sample_rate), *self.norm_stats)
            B, F, T = lms.shape
            n = (T - 1) // frames
            chunks = lms[:, :, :n * frames].reshape(B, F, n, frames).transpose(0, 2, 1, 3)
            return chunks.reshape(B * n, 1, F, frames), n

        @jax.jit
        def embed(state, waves_BS):
            """→ frame embeddings of the chunks, concatenated along time: [B, n·T/p, D']."""
            m = nnx.merge(graphdef, state)
            chunks, _ = chunked_lms(waves_BS)
            emb = m.frame_embeddings(chunks)
            return emb.reshape(waves_BS.shape[0], -1, emb.shape[-1])

        @jax.jit
        def embed_joint(state, waves_BS, cols_B):
            """→ the joint-space audio embedding [B, D] over the tokens of each clip's valid columns."""
            m = nnx.merge(graphdef, state)
            chunks, n = chunked_lms(waves_BS)
            tokens = m.encode(chunks)[:, 1:]
            B, (gF, gT) = waves_BS.shape[0], m.grid
            tokens = tokens.reshape(B, n * gF * gT, tokens.shape[-1])
            column = (jnp.arange(n)[:, None, None] * gT + jnp.arange(gT)[None, None, :]).repeat(gF, axis=1)
            return m.embed_tokens(tokens, column.reshape(1, -1) < cols_B[:, None])

        self._state = state
        self._embed, self._embed_joint = embed, embed_joint
        self._embed_text = jax.jit(lambda state, x: nnx.merge(graphdef, state).embed_text(x))

    @property
    def embedding_dim(self) -> int:
        return self.model.grid[0] * self.model.dims["width"]

    @property
    def is_audio_language(self) -> bool:
        return hasattr(self.model, "embed_tokens")

    def _prepare(self, waveforms, sample_rate, lengths):
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            waveforms = [waveforms]
        waves = [np.asarray(w, np.float32) for w in waveforms]
        if lengths is not None:
            waves = [w[:int(n)] for w, n in zip(waves, lengths)]
        if sample_rate is not None and sample_rate != self.sample_rate:
            waves = [audio.resample(w, sample_rate, self.sample_rate) for w in waves]
        return waves

    def _batches(self, waves, batch_size):
        """(start, [batch_size, n_chunks·chunk] zero-padded waveforms) over ``waves``; every clip gets
        whole training-length chunks, all batches the same shape (one compilation)."""
        chunk_samples = self.input_frames * 160
        n_chunks = max(max(1, -(-len(w) // chunk_samples)) for w in waves)
        for start in range(0, len(waves), batch_size):
            batch = np.zeros((batch_size, n_chunks * chunk_samples), np.float32)
            for row, w in enumerate(waves[start:start + batch_size]):
                batch[row, :len(w)] = w[:n_chunks * chunk_samples]
            yield start, batch

    def _columns(self, waves):
        """Patch columns covered by each clip (at least one)."""
        return np.asarray([max(1, audio.num_frames(len(w)) // self.patch) for w in waves])

    def frame_embeddings(self, waveforms, sample_rate: int | None = None, lengths=None, batch_size: int = 32):
        """Per patch column: (embeddings [B, T', D'] zeroed past each clip's end, timestamps [T'] in
        seconds (column centres), valid [B, T']).

        The log-mel of each whole clip is cut into training-length chunks that are embedded and
        concatenated along time (as M2D does); clips are zero-padded to whole chunks.
        """
        waves = self._prepare(waveforms, sample_rate, lengths)
        cols = self._columns(waves)
        outs = [np.asarray(self._embed(self._state, batch))[:len(waves) - start]
                for start, batch in self._batches(waves, batch_size)]
        total = int(cols.max())
        emb = np.concatenate(outs)[:, :total]
        valid = np.arange(total)[None] < cols[:, None]
        timestamps = (np.arange(total) * self.patch + self.patch / 2) * self.hop_seconds
        return emb * valid[..., None], timestamps, valid

    def scene_embeddings(self, waveforms, sample_rate: int | None = None, lengths=None, batch_size: int = 64):
        """Mean of the frame embeddings over each clip's valid time: [B, D']."""
        emb, _, valid = self.frame_embeddings(waveforms, sample_rate, lengths, batch_size)
        return emb.sum(1) / np.maximum(valid.sum(1, keepdims=True), 1)

    def _require_audio_language(self, what):
        if not self.is_audio_language:
            raise ValueError(f"{what} needs an audio-language model (method m2d_clap or m2d2); this one is "
                             f"{self.config.method!r}")

    def embed_audio(self, waveforms, sample_rate: int | None = None, lengths=None, batch_size: int = 32):
        """Joint audio-text space: L2-normalised [B, D] over the whole of each clip."""
        self._require_audio_language("embed_audio")
        waves = self._prepare(waveforms, sample_rate, lengths)
        cols = np.zeros(batch_size, np.int32)
        outs = []
        for start, batch in self._batches(waves, batch_size):
            part = self._columns(waves[start:start + batch_size])
            cols[:] = 1
            cols[:len(part)] = part
            outs.append(np.asarray(self._embed_joint(self._state, batch, cols))[:len(part)])
        return _l2_normalize(np.concatenate(outs))

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


def load_pretrained(path: str, *, random_init: bool = False, seed: int = 0) -> PretrainedEncoder:
    """Loads an exported encoder (no training state). ``random_init``: same architecture, fresh weights."""
    path = pathlib.Path(path)
    meta_file = path / "config.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file} not found: is {path} a directory written by `avpretrain export`?")
    meta = json.loads(meta_file.read_text())
    config = config_lib.from_json(json.dumps(meta["config"]))
    model = _encoder_model(config, sharding.single_device_mesh(), seed=seed if random_init else None)
    if not random_init:
        state = nnx.state(model)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
        params = ocp.StandardCheckpointer().restore((path / "params").absolute(), abstract)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(model, state)
    return PretrainedEncoder(model, config, meta["norm_stats"], meta["sample_rate"])
