"""Log-mel audio front end (M2D, DESIGN §5), computed on device inside jitted steps.

Frames are gathered from the reflect-padded waveform and windowed; the real DFT is two
matmuls on the frame folded about its centre (x[n] ± x[N-n], since cos and sin are even
and odd there), and the mel filterbank is librosa's Slaney one (``librosa.filters.mel``,
written out in numpy: the same array, tested, without the ~1.5 s that importing librosa's
filters module costs a process's start). All ops are per example
matmuls, slices and gathers, so the batch axis shards with no collectives.

Why not `jnp.fft.rfft`: XLA's SPMD partitioner all-gathers the batch before an FFT. Why
folded: in float32 the 400-term DFT dot products of a plain [400, 402] matmul drift up to
6e-3 from librosa in log-mel (at bins ~80 dB under a pure tone, on CPU); the folded
200-term ones stay under 6e-4, as rfft does.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import soxr

M2D_NORM_MEAN = -7.1
M2D_NORM_STD = 4.2
LOG_EPS = float(np.finfo(np.float32).eps)


def num_frames(num_samples: int, hop_length: int = 160) -> int:
    """Frames of a centred STFT of `num_samples` samples."""
    return 1 + num_samples // hop_length


def num_samples_for_frames(frames: int, hop_length: int = 160) -> int:
    """Smallest sample count whose centred STFT has exactly `frames` frames."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return (frames - 1) * hop_length


@functools.lru_cache(maxsize=None)
def _hann_window(n_fft: int, win_length: int) -> np.ndarray:
    """[n_fft] periodic Hann of `win_length`, zero-padded to n_fft in the centre (as librosa)."""
    window = np.zeros(n_fft, np.float32)
    offset = (n_fft - win_length) // 2
    window[offset:offset + win_length] = 0.5 - 0.5 * np.cos(
        2 * np.pi * np.arange(win_length) / win_length)
    return window


@functools.lru_cache(maxsize=None)
def _folded_dft_bases(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """cos [n_fft // 2 + 1, F] for the even fold, -sin [(n_fft - 1) // 2, F] for the odd."""
    bins_F = np.arange(n_fft // 2 + 1)
    even_n = np.arange(n_fft // 2 + 1)
    odd_n = np.arange(1, (n_fft - 1) // 2 + 1)
    cos_EF = np.cos(2 * np.pi * np.outer(even_n, bins_F) / n_fft)
    sin_OF = -np.sin(2 * np.pi * np.outer(odd_n, bins_F) / n_fft)
    return cos_EF.astype(np.float32), sin_OF.astype(np.float32)


def _power_spectrum(frames_BTW: jnp.ndarray) -> jnp.ndarray:
    """|rfft|^2 of real frames [..., n_fft] -> [..., n_fft // 2 + 1], as two folded matmuls."""
    n_fft = frames_BTW.shape[-1]
    pairs = (n_fft - 1) // 2  # (n, n_fft - n); n = 0 and, if n_fft is even, n_fft / 2 are alone
    head = frames_BTW[..., 1:pairs + 1]
    tail = jnp.flip(frames_BTW[..., n_fft - pairs:], axis=-1)
    even_BTE = jnp.concatenate(
        [frames_BTW[..., :1], head + tail, frames_BTW[..., pairs + 1:n_fft - pairs]], axis=-1)
    cos_EF, sin_OF = _folded_dft_bases(n_fft)
    highest = jax.lax.Precision.HIGHEST
    real_BTF = jnp.matmul(even_BTE, cos_EF, precision=highest)
    imag_BTF = jnp.matmul(head - tail, sin_OF, precision=highest)
    return jnp.square(real_BTF) + jnp.square(imag_BTF)


def _hz_to_mel(hz):
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, hz / (200.0 / 3))


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@functools.lru_cache(maxsize=None)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                    fmax: float) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] Slaney-scale, Slaney-normalised mel filters: what
    ``librosa.filters.mel(..., htk=False, norm="slaney")`` returns (transposed), step for step."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    weights = np.zeros((n_mels, len(fft_hz)), dtype=np.float32)  # float32 rows, as librosa fills them
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_hz[2:n_mels + 2] - mel_hz[:n_mels]))[:, None]
    return np.ascontiguousarray(weights.T)


def _stft_power(wave_BS, n_fft: int, win_length: int, hop_length: int, center: bool = True):
    """Centred (reflect-padded) Hann STFT power of [B, samples]: [B, 1 + samples // hop, n_fft // 2 + 1];
    ``center=False``: frame t is samples [t·hop, t·hop + n_fft) of the input as given (the caller
    padded it), [B, 1 + (samples - n_fft) // hop, n_fft // 2 + 1]."""
    if wave_BS.ndim != 2:
        raise ValueError(f"waveform must be [samples] or [B, samples], got {wave_BS.shape}")
    padded_BS = jnp.pad(wave_BS, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect") if center else wave_BS
    frames = 1 + (padded_BS.shape[1] - n_fft) // hop_length  # num_frames() for even n_fft
    index_TW = hop_length * np.arange(frames)[:, None] + np.arange(n_fft)[None, :]
    return _power_spectrum(padded_BS[:, index_TW] * _hann_window(n_fft, win_length))


@functools.partial(jax.jit, static_argnames=("n_fft", "win_length", "hop_length", "center"))
def power_spectrogram(waveform, *, n_fft: int = 1024, win_length: int | None = None, hop_length: int = 320,
                      center: bool = True):
    """|STFT|² of a float waveform: [B, samples] -> [B, 1 + samples // hop, n_fft // 2 + 1] (centred
    frames, periodic Hann of ``win_length`` = n_fft by default; VQ-MAE-AV's audio: 1024 / 320 at 16 kHz).
    ``center=False``: no padding here, frame t = samples [t·hop, t·hop + n_fft) (offline tokenization
    pads each clip itself and packs several clips into one row)."""
    waveform = jnp.asarray(waveform, jnp.float32)
    power = _stft_power(jnp.atleast_2d(waveform), n_fft, win_length or n_fft, hop_length, center)
    return power[0] if waveform.ndim == 1 else power


@functools.partial(jax.jit, static_argnames=("sample_rate", "n_fft", "win_length",
                                             "hop_length", "n_mels", "fmin", "fmax"))
def log_mel(waveform, *, sample_rate: int = 16000, n_fft: int = 400, win_length: int = 400,
            hop_length: int = 160, n_mels: int = 80, fmin: float = 50.0,
            fmax: float = 8000.0) -> jnp.ndarray:
    """Log-mel spectrogram of a float waveform: [B, samples] -> [B, n_mels, frames].

    A single waveform [samples] gives [n_mels, frames]; frames = 1 + samples // hop_length.
    """
    waveform = jnp.asarray(waveform, jnp.float32)
    power_BTF = _stft_power(jnp.atleast_2d(waveform), n_fft, win_length, hop_length)
    mel_BTN = jnp.matmul(power_BTF, _mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax),
                         precision=jax.lax.Precision.HIGHEST)
    lms_BNT = jnp.log(mel_BTN + LOG_EPS).transpose(0, 2, 1)
    return lms_BNT[0] if waveform.ndim == 1 else lms_BNT


def normalize(lms, mean: float = M2D_NORM_MEAN, std: float = M2D_NORM_STD):
    """(lms - mean) / std."""
    return (lms - mean) / std


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Host-side high-quality (soxr HQ) resampling of [samples] or [B, samples]."""
    waveform = np.asarray(waveform)
    if waveform.ndim not in (1, 2):
        raise ValueError(f"waveform must be [samples] or [B, samples], got {waveform.shape}")
    if orig_sr == target_sr:
        return waveform
    # soxr takes [samples, channels]: the batch becomes the channels.
    resampled = soxr.resample(waveform.T, orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(resampled.T)
