"""The JAX log-mel front end against librosa (DESIGN §5), frame counts, resampling."""
import jax
import librosa
import numpy as np
import pytest
import scipy.signal

from avpretrain import audio

SR = 16000
TOL = 1e-3


def librosa_log_mel(y, n_fft=400, win_length=400):
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=n_fft, hop_length=160, win_length=win_length, n_mels=80, fmin=50,
        fmax=8000, center=True, pad_mode="reflect", power=2.0, htk=False, norm="slaney")
    return np.log(mel + np.finfo(np.float32).eps)


def chirp_and_noise(seconds=3.0, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + (7000 - 100) / (2 * seconds) * t**2))
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return (chirp + noise).astype(np.float32)


def pulse_train(seconds=2.0, f0=120.0):
    """Speech-like: a glottal pulse train through two formant resonances, with a gliding f0."""
    n = int(seconds * SR)
    phase = np.cumsum(f0 * (1 + 0.2 * np.sin(2 * np.pi * 3 * np.arange(n) / SR)) / SR)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    y = pulses
    for formant_hz, bandwidth_hz in ((700, 130), (1200, 70)):  # two-pole resonators
        r = np.exp(-np.pi * bandwidth_hz / SR)
        a = [1.0, -2 * r * np.cos(2 * np.pi * formant_hz / SR), r * r]
        y = scipy.signal.lfilter([1.0], a, y)
    y *= np.hanning(n) ** 0.1  # syllable-like envelope
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


@pytest.mark.parametrize("make_signal", [
    chirp_and_noise,
    pulse_train,
    lambda: chirp_and_noise(seconds=0.0771, seed=1),  # 1233 samples: short and odd length
], ids=["chirp_noise", "pulse_train", "short_odd"])
def test_log_mel_matches_librosa(make_signal):
    y = make_signal()
    lms = np.asarray(audio.log_mel(y))
    expected = librosa_log_mel(y)
    assert lms.shape == expected.shape == (80, audio.num_frames(y.size))
    np.testing.assert_allclose(lms, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("n_fft, win_length", [(512, 400), (401, 401), (400, 301)])
def test_log_mel_other_fft_sizes_match_librosa(n_fft, win_length):
    y = chirp_and_noise(0.3, seed=2)
    lms = np.asarray(audio.log_mel(y, n_fft=n_fft, win_length=win_length))
    np.testing.assert_allclose(lms, librosa_log_mel(y, n_fft, win_length), rtol=0, atol=TOL)


def test_log_mel_batched_jit_matches_librosa_and_per_example():
    y_BS = np.stack([chirp_and_noise(1.0, seed=s) for s in range(3)])
    y_BS[1] *= 0.01
    y_BS[2] = pulse_train(1.0)
    lms_BNT = np.asarray(jax.jit(audio.log_mel)(y_BS))
    assert lms_BNT.shape == (3, 80, 101)
    for y, lms in zip(y_BS, lms_BNT):
        np.testing.assert_allclose(lms, librosa_log_mel(y), rtol=0, atol=TOL)
        np.testing.assert_allclose(lms, np.asarray(audio.log_mel(y)), rtol=0, atol=1e-4)


def test_log_mel_silence_is_log_eps():
    lms = np.asarray(audio.log_mel(np.zeros(1600, np.float32)))
    np.testing.assert_allclose(lms, np.log(np.finfo(np.float32).eps), rtol=1e-6)


def test_log_mel_rejects_bad_rank():
    with pytest.raises(ValueError, match="samples"):
        audio.log_mel(np.zeros((2, 2, 1600), np.float32))


def test_frame_counts():
    assert audio.num_frames(160000) == 1001  # 10 s
    assert audio.num_samples_for_frames(608) == 607 * 160
    for frames in (1, 2, 608, 1001):
        samples = audio.num_samples_for_frames(frames)
        assert audio.num_frames(samples) == frames
        assert samples == 0 or audio.num_frames(samples - 1) == frames - 1
    assert audio.num_frames(481, hop_length=160) == 4
    assert audio.log_mel(np.zeros(481, np.float32)).shape == (80, 4)
    with pytest.raises(ValueError):
        audio.num_samples_for_frames(0)


def test_normalize():
    lms = np.array([-7.1, -2.9])
    np.testing.assert_allclose(audio.normalize(lms, audio.M2D_NORM_MEAN, audio.M2D_NORM_STD),
                               [0.0, 1.0])


def peak_hz(y, sr):
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return np.argmax(spectrum) * sr / y.size


def test_resample_keeps_length_and_frequency():
    tone = np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100).astype(np.float32)
    out = audio.resample(tone, 44100, SR)
    assert out.shape == (SR,) and out.dtype == np.float32
    assert abs(peak_hz(out, SR) - 1000) <= 1.0
    assert abs(np.sqrt(np.mean(out[1000:-1000] ** 2)) - np.sqrt(0.5)) < 1e-2


def test_resample_batch_equals_per_example_and_noop():
    y_BS = np.stack([chirp_and_noise(0.5, seed=s) for s in range(2)]).astype(np.float64)
    batched = audio.resample(y_BS, SR, 22050)
    assert batched.shape == (2, 11025)
    for y, out in zip(y_BS, batched):
        np.testing.assert_allclose(out, audio.resample(y, SR, 22050), atol=1e-6)
    assert audio.resample(y_BS, SR, SR) is y_BS


def test_log_mel_batch_sharded_over_devices():
    mesh = jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    y_BS = np.stack([chirp_and_noise(0.2, seed=s) for s in range(jax.device_count())])
    y_BS = jax.device_put(y_BS, batch_sharding)
    compiled_hlo = jax.jit(audio.log_mel).lower(y_BS).compile().as_text()
    for collective in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
        assert collective not in compiled_hlo  # purely per example
    lms_BNT = jax.jit(audio.log_mel)(y_BS)
    assert lms_BNT.sharding.is_equivalent_to(batch_sharding, lms_BNT.ndim)
    np.testing.assert_allclose(np.asarray(lms_BNT), np.asarray(audio.log_mel(y_BS)), atol=1e-4)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 400, 80, 50.0, 8000.0), (16000, 1024, 64, 0.0, 8000.0),
                                                       (22050, 2048, 128, 20.0, 11025.0), (48000, 960, 96, 0.0, 14000.0)])
def test_mel_filterbank_is_librosas(sr, n_fft, n_mels, fmin, fmax):
    """The numpy Slaney filterbank is librosa.filters.mel's array, bit for bit (the scale's linear
    and log parts, the Slaney area normalisation, float32 rows)."""
    expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    np.testing.assert_array_equal(audio._mel_filterbank(sr, n_fft, n_mels, fmin, fmax), expected.T)
