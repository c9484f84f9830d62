"""A procedural demo corpus: 12 classes of synthetic sounds, no downloads, numpy only.

Classes differ in spectral and temporal structure (tones, sweeps, bursts, vowels, textures,
clicks, drips, ...). Every clip draws its own parameters (pitch, rates, durations, loudness,
background noise at a random SNR), so classes overlap: learnable, not trivial. Clip `index`
is class `CLASSES[index % 12]` and depends only on (seed, index, sample_rate).

Each clip also gets `num_captions` distinct captions written from its parameters by
`caption_clip` ('a rising whistle, fairly loud', 'there are short bursts of hiss', ...), about a
third of them with the literal label words ('harmonic tone', 'noise bursts', ...). They draw from
their own random stream, so the audio does not depend on them.

    python -m data_pipelines.demo --out DATA_DIR [--num_clips 2400 --seed 0 --num_captions 3]
"""
from __future__ import annotations

import argparse

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import common


# ----------------------------------------------------------------------------- helpers

_COLORS = ('white', 'pink', 'brown')  # noise spectra 1/f**0, 1/f**1, 1/f**2


def _loguniform(rng, low, high) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _filter(x, sr, gain_fn):
    """Zero-phase FFT filter with magnitude response `gain_fn(frequencies_hz)`."""
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return np.fft.irfft(np.fft.rfft(x) * gain_fn(f), len(x))


def _band(f, center_hz, octaves):
    """Gaussian bump on a log-frequency axis, `octaves` wide at about half height."""
    return np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / center_hz) / (octaves / 2.355)) ** 2)


def _noise(rng, n, sr, exponent):
    """Unit-variance noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    x = _filter(rng.standard_normal(n), sr, lambda f: np.maximum(f, 20.0) ** (-exponent / 2))
    return x / (np.std(x) + 1e-12)


def _ramp(n, sr, attack_s, release_s):
    """Linear attack/release envelope of length n."""
    t = np.arange(n)
    rise, fall = (t + 1) / max(1, attack_s * sr), (n - t) / max(1, release_s * sr)
    return np.minimum(1.0, np.minimum(rise, fall))


def _tone(freq_hz, sr, n_harmonics=1, tilt_db=6.0):
    """Harmonic tone following the instantaneous frequency `freq_hz` [n]; partials < 0.45 sr."""
    phase = 2 * np.pi * np.cumsum(freq_hz) / sr
    x = np.zeros_like(phase)
    for k in range(1, n_harmonics + 1):
        x += 10 ** (-tilt_db * np.log2(k) / 20) * np.sin(k * phase) * (k * freq_hz < 0.45 * sr)
    return x


def _place(x, segment, start):
    """Adds `segment` into `x` at sample `start` (clipped at the end)."""
    end = min(len(x), start + len(segment))
    if end > start:
        x[start:end] += segment[:end - start]


def _pulses_at(n, times_s, sr, amplitudes=None):
    x = np.zeros(n)
    idx = np.clip((np.asarray(times_s) * sr).astype(int), 0, n - 1)
    np.add.at(x, idx, 1.0 if amplitudes is None else amplitudes)
    return x


# ----------------------------------------------------------------------------- classes
# Each takes (rng, n samples, sample rate) and returns (waveform [n], class parameters).

def _harmonic_tone(rng, n, sr):
    dur = n / sr
    f0 = _loguniform(rng, 100, 900)
    harmonics = int(rng.integers(1, 9))
    vib_rate, vib_depth = rng.uniform(3, 8), rng.uniform(0, 0.03)
    start = rng.uniform(0, 0.3 * dur)
    length = rng.uniform(0.5, 1.0) * (dur - start)
    t = np.arange(int(length * sr)) / sr
    freq = f0 * (1 + vib_depth * np.sin(2 * np.pi * vib_rate * t))
    tone = _tone(freq, sr, harmonics, tilt_db=rng.uniform(3, 15))
    attack, release = rng.uniform(0.005, 0.2), rng.uniform(0.05, 0.5)
    x = np.zeros(n)
    _place(x, tone * _ramp(len(t), sr, attack, release), int(start * sr))
    return x, dict(f0_hz=round(f0), harmonics=harmonics, vibrato_rate_hz=round(vib_rate, 1),
                   vibrato_depth_percent=round(100 * vib_depth, 1), tone_seconds=round(length, 2))


def _chirp(rng, n, sr):
    dur = n / sr
    direction = str(rng.choice(['rising', 'falling']))
    low = _loguniform(rng, 150, 1500)
    high = min(low * _loguniform(rng, 2, 8), 0.4 * sr)
    sweeps = int(rng.integers(1, 5))
    sweep_s = rng.uniform(0.15, min(1.5, dur / sweeps))
    harmonics = int(rng.integers(1, 4))
    t = np.arange(int(sweep_s * sr)) / sr
    freq = low * (high / low) ** (t / sweep_s)
    freq = freq if direction == 'rising' else freq[::-1]
    sweep = _tone(freq, sr, harmonics, 8.0) * _ramp(len(t), sr, 0.01, 0.03)
    x = np.zeros(n)
    slot = dur / sweeps
    for i in range(sweeps):
        _place(x, sweep, int((i * slot + rng.uniform(0, max(0.0, slot - sweep_s))) * sr))
    start_hz, end_hz = (low, high) if direction == 'rising' else (high, low)
    return x, dict(direction=direction, start_hz=round(start_hz), end_hz=round(end_hz),
                   sweeps=sweeps, sweep_seconds=round(sweep_s, 2))


def _noise_bursts(rng, n, sr):
    dur = n / sr
    bursts = int(rng.integers(2, 10))
    envelope = str(rng.choice(['decaying', 'smooth']))
    color = int(rng.integers(0, 3))
    lengths = rng.uniform(0.03, 0.4, bursts)
    x = np.zeros(n)
    for length, start in zip(lengths, rng.uniform(0, dur - 0.05, bursts)):
        m = int(length * sr)
        shape = np.exp(-np.arange(m) / (0.25 * m)) if envelope == 'decaying' else np.hanning(m)
        _place(x, _noise(rng, m, sr, color) * shape * rng.uniform(0.4, 1.0), int(start * sr))
    return x, dict(bursts=bursts, burst_seconds=round(float(lengths.mean()), 2), envelope=envelope,
                   noise_color=_COLORS[color])


_VOWEL_FORMANTS = {  # Hz, first three formants of an adult voice
    'a': (730, 1090, 2440), 'e': (530, 1840, 2480), 'i': (270, 2290, 3010),
    'o': (570, 840, 2410), 'u': (300, 870, 2240),
}


def _vowel(rng, n, sr):
    dur = n / sr
    vowel = str(rng.choice(list(_VOWEL_FORMANTS)))
    f0 = _loguniform(rng, 80, 300)
    scale = rng.uniform(0.85, 1.25)
    syllables = int(rng.integers(1, 5))
    t = np.arange(n) / sr
    drift = rng.uniform(-0.2, 0.2) * t / dur  # linear pitch drift
    wander = 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n)  # slow random pitch walk
    f0_t = f0 * (1 + drift) * (1 + wander)
    pulses = np.diff(np.floor(np.cumsum(f0_t) / sr), prepend=0.0)
    formants = [(scale * fk, bw) for fk, bw in zip(_VOWEL_FORMANTS[vowel], (0.35, 0.25, 0.2))]
    voice = _filter(pulses, sr, lambda f: sum(_band(f, fk, bw) for fk, bw in formants)
                    / np.maximum(f / 100, 1.0))
    envelope = np.zeros(n)
    slot = dur / syllables
    for i in range(syllables):
        m = int(rng.uniform(0.2, min(0.6, slot)) * sr)
        start = i * slot + rng.uniform(0, max(0.0, slot - m / sr))
        _place(envelope, np.hanning(m) ** 0.5, int(start * sr))
    return voice * envelope, dict(vowel=vowel, f0_hz=round(f0), syllables=syllables,
                                  formant_scale=round(scale, 2))


def _am_texture(rng, n, sr):
    carrier = str(rng.choice(['noise', 'tone']))
    center = _loguniform(rng, 300, 5000) if carrier == 'noise' else _loguniform(rng, 100, 600)
    if carrier == 'noise':
        width = rng.uniform(1, 3)
        x = _filter(rng.standard_normal(n), sr, lambda f: _band(f, center, width))
    else:
        x = _tone(np.full(n, center), sr, int(rng.integers(1, 6)))
    rate, depth = _loguniform(rng, 2, 20), rng.uniform(0.3, 1.0)
    t = np.arange(n) / sr
    lfo = 0.5 + 0.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    x *= (1 - depth) + depth * lfo
    return x * _ramp(n, sr, 0.2, 0.2), dict(carrier=carrier, center_hz=round(center),
                                            am_rate_hz=round(rate, 1), am_depth=round(depth, 2))


def _fm_texture(rng, n, sr):
    dur = n / sr
    carrier = _loguniform(rng, 150, 2500)
    ratio, index = rng.uniform(0.5, 4.0), rng.uniform(0.5, 8.0)
    strikes = int(rng.integers(1, 5))
    decay = rng.uniform(0.2, 1.5)
    t = np.arange(n) / sr
    env = np.zeros(n)
    for start in np.sort(rng.uniform(0, 0.7 * dur, strikes)):
        _place(env, np.exp(-t / decay) * _ramp(n, sr, 0.003, 0.01), int(start * sr))
    x = env * np.sin(2 * np.pi * carrier * t + index * env / env.max()
                     * np.sin(2 * np.pi * ratio * carrier * t))
    return x, dict(carrier_hz=round(carrier), ratio=round(ratio, 2), index=round(index, 1),
                   strikes=strikes, decay_seconds=round(decay, 2))


def _click_train(rng, n, sr):
    dur = n / sr
    rate = _loguniform(rng, 4, 120)
    jitter = rng.uniform(0, 0.15)
    center = _loguniform(rng, 800, 6000)
    segments = int(rng.integers(1, 4))
    slot = dur / segments
    times = []
    for i in range(segments):
        start = i * slot + rng.uniform(0, 0.3 * slot)
        count = 1 + int(rng.uniform(0.5, 1.0) * ((i + 1) * slot - start) * rate)
        times += list(start + (np.arange(count) + jitter * rng.standard_normal(count)) / rate)
    width = rng.uniform(1, 3)
    x = _filter(_pulses_at(n, np.clip(times, 0, dur), sr), sr, lambda f: _band(f, center, width))
    return x, dict(click_rate_hz=round(rate, 1), jitter_percent=round(100 * jitter),
                   center_hz=round(center), segments=segments)


def _band_noise(rng, n, sr):
    center, width = _loguniform(rng, 200, 6000), rng.uniform(0.3, 2.5)
    x = _filter(rng.standard_normal(n), sr, lambda f: _band(f, center, width))
    drift_hz, drift_phase = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
    drift = 1 + 0.3 * np.sin(2 * np.pi * drift_hz * np.arange(n) / sr + drift_phase)
    fade_in, fade_out = rng.uniform(0.05, 0.8, 2)
    return x * drift * _ramp(n, sr, fade_in, fade_out), dict(
        center_hz=round(center), bandwidth_octaves=round(width, 1))


_SCALES = {  # semitones above the base note
    'major': (0, 2, 4, 5, 7, 9, 11), 'minor': (0, 2, 3, 5, 7, 8, 10), 'pentatonic': (0, 2, 4, 7, 9),
}


def _arpeggio(rng, n, sr):
    dur = n / sr
    base = _loguniform(rng, 200, 900)
    scale = str(rng.choice(list(_SCALES)))
    notes = int(rng.integers(3, 11))
    pattern = str(rng.choice(['up', 'down', 'random']))
    note_s, gap_s = rng.uniform(0.06, 0.3), rng.uniform(0.0, 0.1)
    note_s = min(note_s, dur / notes - gap_s)
    steps = _SCALES[scale]
    if pattern == 'random':
        degrees = rng.integers(0, 2 * len(steps), notes)
    else:
        degrees = np.arange(notes) if pattern == 'up' else np.arange(notes)[::-1]
    harmonics = int(rng.integers(1, 4))
    x = np.zeros(n)
    start = rng.uniform(0, max(0.0, dur - notes * (note_s + gap_s)))
    m = int(note_s * sr)
    for i, d in enumerate(degrees):
        semitones = 12 * (d // len(steps)) + steps[d % len(steps)]
        pip = _tone(np.full(m, base * 2 ** (semitones / 12)), sr, harmonics)
        pip *= _ramp(m, sr, 0.005, 0.03)
        _place(x, pip, int((start + i * (note_s + gap_s)) * sr))
    return x, dict(base_hz=round(base), scale=scale, notes=notes, pattern=pattern,
                   note_seconds=round(note_s, 2))


def _drips(rng, n, sr):
    dur = n / sr
    drops = int(rng.integers(3, 16))
    freq, decay = _loguniform(rng, 500, 3000), rng.uniform(0.01, 0.06)
    glide = rng.uniform(1.2, 2.5)
    x = np.zeros(n)
    t = np.arange(int(6 * decay * sr)) / sr
    for start in rng.uniform(0, dur - 0.1, drops):
        f = freq * rng.uniform(0.85, 1.15) * glide ** (t / t[-1])
        drop = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / decay) * rng.uniform(0.3, 1.0)
        _place(x, drop, int(start * sr))
    room = rng.uniform(0.05, 0.4)  # exponentially decaying noise as a cheap reverb tail
    m = int(room * sr)
    tail = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.2 * m))
    x += 0.3 * np.convolve(x, tail / np.sqrt(np.sum(tail ** 2)))[:n]
    return x, dict(drops=drops, freq_hz=round(freq), decay_ms=round(1000 * decay),
                   glide_ratio=round(glide, 1), reverb_seconds=round(room, 2))


def _siren(rng, n, sr):
    center = _loguniform(rng, 400, 1500)
    rate, depth = _loguniform(rng, 0.2, 2.5), rng.uniform(0.1, 0.4)
    shape = str(rng.choice(['sine', 'triangle']))
    t = np.arange(n) / sr
    phase = 2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)
    lfo = np.sin(phase) if shape == 'sine' else 2 / np.pi * np.arcsin(np.sin(phase))
    x = _tone(center * (1 + depth * lfo), sr, int(rng.integers(1, 5)))
    return x * _ramp(n, sr, 0.1, 0.1), dict(center_hz=round(center), sweep_rate_hz=round(rate, 2),
                                            sweep_depth_percent=round(100 * depth), shape=shape)


def _crackle(rng, n, sr):
    dur = n / sr
    rate = _loguniform(rng, 10, 300)
    count = rng.poisson(rate * dur)
    x = _pulses_at(n, rng.uniform(0, dur, count), sr, rng.pareto(2.0, count) + 0.1)
    center = _loguniform(rng, 1000, 5000)
    x = _filter(x, sr, lambda f: _band(f, center, 4.0))
    x /= np.std(x) + 1e-12
    bed_db = rng.uniform(-25, -5)
    x += 10 ** (bed_db / 20) * _noise(rng, n, sr, int(rng.integers(0, 3)))
    return x, dict(crackle_rate_hz=round(rate), center_hz=round(center), bed_level_db=round(bed_db))


_GENERATORS = {
    'harmonic_tone': _harmonic_tone, 'chirp': _chirp, 'noise_bursts': _noise_bursts,
    'vowel': _vowel, 'am_texture': _am_texture, 'fm_texture': _fm_texture,
    'click_train': _click_train, 'band_noise': _band_noise, 'arpeggio': _arpeggio,
    'drips': _drips, 'siren': _siren, 'crackle': _crackle,
}
CLASSES = tuple(_GENERATORS)


def generate_clip(index: int, seed: int, sample_rate: int = 16000) -> tuple[np.ndarray, str, dict]:
    """Clip `index` of the corpus: (waveform float32 [T] in [-1, 1], class name, parameters).

    The parameters are human-meaningful (pitch, direction, counts, loudness, SNR, ...), enough to
    write a caption from.
    """
    rng = np.random.default_rng([seed, index])
    class_name = CLASSES[index % len(CLASSES)]
    duration = round(rng.uniform(2.0, 4.0), 2)
    n = int(duration * sample_rate)
    x, params = _GENERATORS[class_name](rng, n, sample_rate)
    loudness_db, snr_db = rng.uniform(-35, -12), rng.uniform(3, 30)
    color = int(rng.integers(0, 3))
    x = x * 10 ** (loudness_db / 20) / (np.sqrt(np.mean(x ** 2)) + 1e-12)
    x += 10 ** ((loudness_db - snr_db) / 20) * _noise(rng, n, sample_rate, color)
    x /= max(1.0, np.max(np.abs(x)) / 0.99)  # peak limit; the loudness below is measured after it
    params = dict(duration_seconds=duration, loudness_db=round(10 * np.log10(np.mean(x ** 2)), 1),
                  snr_db=round(snr_db, 1), background=_COLORS[color]) | params
    return x.astype(np.float32), class_name, params


# ----------------------------------------------------------------------------- captions
# Noun phrases per class; the first holds the label words (class name, '_' -> ' ') so that a
# zero-shot prompt like 'chirp can be heard' means something. '+' marks a plural noun (takes
# counts like 'a few'), '*' a mass noun; neither gets an article.
_NOUNS = {
    'harmonic_tone': ('harmonic tone', 'steady tone', 'sustained note', 'hum'),
    'chirp': ('chirp', 'sweep', 'whistle', 'glide'),
    'noise_bursts': ('+noise bursts', '+bursts of noise', '+blasts of noise', '+puffs of noise'),
    'vowel': ('vowel', 'voice', 'sung note', 'vocal sound'),
    'am_texture': ('AM texture', 'tremolo sound', 'modulated drone', 'amplitude-modulated sound'),
    'fm_texture': ('FM texture', 'metallic tone', 'bell-like sound', 'clang'),
    'click_train': ('click train', '+clicks', '*ticking', 'rattle'),
    'band_noise': ('*band noise', 'band of noise', '*filtered noise', 'whoosh'),
    'arpeggio': ('arpeggio', 'melody', 'tune', '+beeping notes'),
    'drips': ('+drips', '*dripping water', '+water drops', '+droplets'),
    'siren': ('siren', 'wailing tone', 'alarm', 'wail'),
    'crackle': ('crackle', '*crackling', '*popping', '+pops and snaps'),
}
_COUNTED = {'noise_bursts': 'bursts', 'drips': 'drops', 'arpeggio': 'notes'}  # counts of '+' nouns
_NUMBERS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten')
_SOUNDS = {'a': 'ah', 'e': 'eh', 'i': 'ee', 'o': 'oh', 'u': 'oo'}
_BACKGROUNDS = {'white': ('a hiss', 'white noise'), 'pink': ('pink noise', 'a soft hiss'),
                'brown': ('a rumble', 'brown noise')}


def _pitch(hz, low, high):
    """Words for a pitch below `low` / above `high` Hz, () in between. In these word lists a
    leading '~' puts the phrase after the noun, '>' at the very end (', loud')."""
    if hz < low:
        return ('low', 'low-pitched', 'deep', '~low in pitch')
    return ('high', 'high-pitched', '~high in pitch') if hz > high else ()


def _between(value, low, high, below, above):
    return below if value < low else above if value > high else ()


def _count(k):  # determiners of a plural noun
    return ('two', 'a couple of') if k == 2 else ('a few', _NUMBERS[k]) if k < 5 else \
        ('several',) if k < 8 else ('many', 'lots of')


def _times(k, verb='repeated'):
    word = 'twice' if k == 2 else f'{_NUMBERS[k]} times'
    return (f'~{verb} {word}', f'~{word} in a row') if k > 1 else ()


def _facts(c, p):
    """Word lists true of clip params `p` of class `c` (adjectives in their English order), and
    a list used only with a singular noun."""
    if c == 'harmonic_tone':
        return [_pitch(p['f0_hz'], 200, 450),
                _between(p['harmonics'], 2, 4, ('pure', 'clean'), ('bright', 'buzzy', 'rich')),
                ('~with vibrato', '~with a slight wobble') if p['vibrato_depth_percent'] >= 1.5 else ()], ()
    if c == 'chirp':
        return [_between(p['sweep_seconds'], 0.35, 0.9, ('quick', 'short'), ('slow', 'long')),
                ('rising', 'upward', '~climbing upward', '~going up in pitch') if p['direction'] == 'rising'
                else ('falling', 'downward', '~heading downward', '~dropping in pitch')], _times(p['sweeps'])
    if c == 'noise_bursts':
        return [_between(p['burst_seconds'], 0.18, 0.25, ('short', 'brief'), ('long',)),
                ('sharp', '~that die away quickly') if p['envelope'] == 'decaying' else
                ('soft-edged', '~fading in and out'),
                {'white': ('bright', 'harsh'), 'brown': ('dull', 'muffled')}.get(p['noise_color'], ())], ()
    if c == 'vowel':
        v = _SOUNDS[p['vowel']]
        return [_pitch(p['f0_hz'], 110, 170), (f'~singing "{v}"', f'~on an "{v}" sound')], \
            _times(p['syllables'])
    if c == 'am_texture':
        low, high = (200, 400) if p['carrier'] == 'tone' else (800, 2500)
        return [_between(p['am_rate_hz'], 5, 11, ('slowly pulsing', '~pulsing slowly'),
                         ('fluttering', '~fluttering rapidly', '~with a fast tremolo')),
                _pitch(p['center_hz'], low, high),
                ('tonal', '~on a steady tone') if p['carrier'] == 'tone' else ('noisy', '~made of noise')], ()
    if c == 'fm_texture':
        return [_between(p['decay_seconds'], 0.4, 0.9, ('short', 'damped'), ('ringing', '~ringing out')),
                _between(p['index'], 1.5, 5, ('mellow', 'soft'), ('harsh', 'clangorous')),
                _pitch(p['carrier_hz'], 300, 1200)], \
            _times(p['strikes'], 'struck') or ('single', '~struck once')
    if c == 'click_train':
        return [_between(p['click_rate_hz'], 10, 40, ('slow', '~at a slow, steady rate'),
                         ('fast', 'buzzing', '~so fast it buzzes')),
                _between(p['jitter_percent'], 3, 10, ('regular', 'steady'), ('irregular', 'uneven')),
                ('~stopping and starting', f'~in {_NUMBERS[p["segments"]]} stretches')
                if p['segments'] > 1 else ()], ()
    if c == 'band_noise':
        return [_between(p['bandwidth_octaves'], 0.8, 1.8, ('narrow',), ('broad', 'wide')),
                _pitch(p['center_hz'], 500, 2500)], ()
    if c == 'arpeggio':
        return [_between(p['note_seconds'], 0.1, 0.2, ('quick', 'fast'), ('slow', 'unhurried')),
                _pitch(p['base_hz'], 300, 600),
                {'up': ('rising', 'ascending', '~going up'), 'down': ('falling', 'descending', '~going down')}
                .get(p['pattern'], ('wandering', '~jumping around')),
                (p['scale'], f'~in a {p["scale"]} scale')], \
            (f'{_NUMBERS[p["notes"]]}-note', f'~of {_NUMBERS[p["notes"]]} notes')
    if c == 'drips':
        return [_pitch(p['freq_hz'], 800, 2000),
                ('echoing', '~in a reverberant room', '~with an echo')
                if p['reverb_seconds'] > 0.25 else ()], ()
    if c == 'siren':
        return [_between(p['sweep_rate_hz'], 0.5, 1.3, ('slow', '~slowly going up and down'),
                         ('fast', 'rapid', '~wavering quickly')),
                _pitch(p['center_hz'], 600, 1000),
                ('~swinging widely in pitch',) if p['sweep_depth_percent'] > 30 else ()], ()
    return [_between(p['crackle_rate_hz'], 30, 100, ('sparse', 'occasional'), ('dense', 'busy')),
            ('~over a steady hiss', 'hissy') if p['bed_level_db'] > -12 else ()], ()


def _surroundings(p):
    """Loudness words, and background-noise phrases, of any clip."""
    db = p['loudness_db']
    loud = (('quiet', 'faint', '>quiet') if db <= -30 else () if db <= -24 else
            ('fairly loud', '>fairly loud') if db <= -18 else ('loud', '>loud'))
    pairs = [b.split(' ', 1) if b.startswith('a ') else ('', b) for b in _BACKGROUNDS[p['background']]]
    level = (('over {a} loud {b}', 'buried in {a} {b}') if p['snr_db'] < 8 else
             ('over {a} {b}', 'with {a} {b} in the background') if p['snr_db'] < 20 else
             ('over {a} faint {b}',))
    return loud, tuple(' '.join(t.format(a=a, b=b).split()) for t in level for a, b in pairs)


def caption_rng(seed: int, index: int) -> np.random.Generator:
    """The captions' random stream of clip `index`, apart from its audio's ([seed, index])."""
    return np.random.default_rng([seed, index, 1])


def caption_clip(class_name: str, params: dict, rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct captions of a clip from its class and `generate_clip` parameters.

    About a third use the class's literal label words ('harmonic tone', 'AM texture', ...), the
    rest a synonym; descriptors (pitch, direction, counts, rates, loudness, background noise) are
    only what is true of `params`; wording and word order vary with `rng`.
    """
    facts, single = _facts(class_name, params)
    loud, background = _surroundings(params)
    nouns, offset, captions = _NOUNS[class_name], int(rng.integers(3)), []
    for _ in range(100 * n):
        if len(captions) >= n:
            break
        noun = nouns[0] if (len(captions) + offset) % 3 == 0 else nouns[rng.integers(1, len(nouns))]
        kind, noun = noun[0] if noun[0] in '+*' else '', noun.lstrip('+*')
        if class_name == 'noise_bursts' and params['noise_color'] == 'white':
            noun = noun.replace('of noise', 'of hiss')
        lists = [loud, *facts, () if kind else single]
        words = [str(rng.choice(f)) for f in lists if f and rng.random() < 0.5]
        bg = str(rng.choice(background)) if rng.random() < 0.35 else ''
        phrase = ' '.join([w for w in words if w[0] not in '~>'][:2] + [noun])
        if not kind:
            phrase = ('an ' if phrase[0] in 'aeiou' or phrase[:3] in ('AM ', 'FM ') else 'a ') + phrase
        elif kind == '+' and class_name in _COUNTED and rng.random() < 0.6:
            phrase = f'{rng.choice(_count(params[_COUNTED[class_name]]))} {phrase}'
        after = ''.join(f', {w[1:]}' if i else f' {w[1:]}'
                        for i, w in enumerate(w for w in words if w[0] == '~'))
        tail = ''.join(f', {w[1:]}' for w in words if w[0] == '>')
        template = int(rng.integers(5 if bg else 4))
        caption = (f'{phrase}{after}', f'{phrase} can be heard{after}',
                   f'there {"are" if kind == "+" else "is"} {phrase}{after}', f'you can hear {phrase}{after}',
                   f'{bg}, {phrase}{after}')[template]
        caption += f' {bg}' if bg and template < 4 else ''
        caption += tail
        if caption not in captions:
            captions.append(caption)
    return captions + [f'{captions[-1]} ({i})' for i in range(2, n - len(captions) + 2)]


# ----------------------------------------------------------------------------- builder

class DemoSounds(common.AudioBuilder, skip_registration=True):
    """The procedural demo corpus as a TFDS dataset; ids are 'demo-000123'; captions included."""

    VERSION = tfds.core.Version('2.0.0')  # 2.0.0: 'caption' became 'captions' (a list)

    def __init__(
        self, *, num_clips: int = 2400, seed: int = 0, sample_rate: int = 16000, num_captions: int = 3,
        **kwargs,
    ):
        self.num_clips, self.seed, self.sample_rate = num_clips, seed, sample_rate
        self.num_captions = num_captions
        self.skipped = []
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='Procedural synthetic sounds in 12 classes (data_pipelines/demo.py).',
            features=common.audio_features(CLASSES),
            metadata=tfds.core.MetadataDict(
                sample_rate=self.sample_rate, seed=self.seed, num_clips=self.num_clips,
                num_captions=self.num_captions),
        )

    def _split_generators(self, dl_manager):
        labels = [CLASSES[i % len(CLASSES)] for i in range(self.num_clips)]
        splits = common.stratified_split(labels, self.seed, val_fraction=0.1, test_fraction=0.1)
        return {
            split: self._generate_examples([i for i, s in enumerate(splits) if s == split])
            for split in common.SPLITS if split in splits
        }

    def _generate_examples(self, indices):
        for i in indices:
            x, class_name, params = generate_clip(i, self.seed, self.sample_rate)
            id_ = f'demo-{i:06d}'
            reason = common.audio_problem(x, self.sample_rate, min_seconds=0.5)
            if reason:
                self.skipped.append((id_, reason))
                continue
            captions = caption_clip(class_name, params, caption_rng(self.seed, i), self.num_captions)
            yield id_, common.example(id_, common.to_int16(x), class_name, captions=captions)


def build(
    out: str, *, num_clips: int = 2400, seed: int = 0, sample_rate: int = 16000, num_captions: int = 3
) -> common.BuildReport:
    """Generates the demo corpus into a TFDS dataset in DATA_DIR `out` (splits 80/10/10)."""
    return common.prepare_dataset(
        DemoSounds, out, num_clips=num_clips, seed=seed, sample_rate=sample_rate,
        num_captions=num_captions)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--num_clips', type=int, default=2400)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--sample_rate', type=int, default=16000)
    parser.add_argument('--num_captions', type=int, default=3)
    build(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
