"""A procedural audiovisual demo corpus: cartoon faces speaking with espeak-ng voices in 6 emotions.

Ten speakers, spk00..spk09, each with a fixed espeak-ng voice (accent and variant), base pitch and
speaking rate and a fixed cartoon face (shape, size, skin, hair, eye spacing, brow weight, clothes,
background colour), say short sentences in six emotions. The label is the emotion; the sentences
(12, those of CREMA-D) carry none of it. Both modalities carry the emotion, neither perfectly:

  heard  espeak-ng prosody per emotion: speaking rate, pitch, pitch range, loudness, pauses between
         words; angry speech is also soft-saturated (harsher), sad speech low-passed (darker),
         fearful speech has a 5-8 Hz tremolo.
  seen   the expression per emotion: brow height and slant, eye openness, mouth curvature, width and
         roundness, how far the jaw opens, head motion (nod, shake, jitter, lowered or raised head).
         The mouth opens frame by frame with the clip's own voice: the RMS of the voice in the 640
         samples of each frame, in dB below the clip's loudest frame.

Each clip draws an intensity that blends its expression and prosody from neutral towards the
emotion, jitters both around the emotion's values, and adds nuisance: to the audio a gain and
background noise (white, pink or brown at 5-30 dB SNR), to the video lighting (brightness, a
side-light gradient, a colour cast), a position offset, per-frame jitter, blinks and pixel noise.
Speakers also differ in resting brows, mouth and eyes, so a face's look alone is not its emotion.

Frames are the 96x96 RGB face crops themselves: the face is drawn (anti-aliased, sub-pixel) as if
already cropped. `face_boxes` places each crop in a notional source frame: the box
[0.25, 0.1, 0.75, 0.9] moved by the head's offset in that frame (1 px of the crop = 0.5/96 of the
source width and 0.8/96 of its height), as a face tracker would report it; the drawn head moves
within the crop by the same offset, so both the boxes and the pixels show the head motion. The one
caption of a clip is its transcript (the sentence spoken).

Clip `index` (speaker `index % 10`, emotion `(index + index // 10) % 6`: any 60 consecutive clips
hold every speaker-emotion pair once) depends only on (seed, index); the speakers are the same in
every build. Splits are speaker-disjoint: spk00-05 train, spk06-07
validation, spk08-09 test, each split with female and male voices. Clips last 2-3 s (uniform, cut
to whole frames) at 25 fps: len(audio) == 640 * len(video).

    python -m data_pipelines.demo_av --out DATA_DIR [--num_clips 1600 --seed 0]
"""
from __future__ import annotations

import _ctypes
import argparse
import collections
import concurrent.futures
import ctypes
import dataclasses
import multiprocessing
import os
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from avpretrain import audio as audio_lib
from data_pipelines import common, demo

DEFAULT_NUM_CLIPS = 1600
EMOTIONS = ('neutral', 'happy', 'sad', 'angry', 'fearful', 'surprised')
SENTENCES = (  # CREMA-D's twelve
    "It's eleven o'clock.", 'That is exactly what happened.', "I'm on my way to the meeting.",
    'I wonder what this is about.', 'The airplane is almost full.', 'Maybe tomorrow it will be cold.',
    'I would like a new alarm clock.', 'I think I have a doctor\'s appointment.',
    "Don't forget a jacket.", "I think I've seen this before.", 'The surface is slick.',
    "We'll stop in a couple of minutes.",
)
# espeak-ng voice+variant per speaker, female and male in turn. Variants with 'breath' (f2, f3, f5,
# whisper, ...) are left out: their breath noise differs from run to run.
VOICES = ('en-US+f1', 'en+m3', 'en-GB-scotland+f4', 'en-US+m1', 'en-GB-x-rp+Andrea', 'en-029+m7',
          'en-US+steph', 'en+m2', 'en-GB-x-rp+linda', 'en-US+m6')
SPEAKERS = tuple(f'spk{k:02d}' for k in range(len(VOICES)))
SPLIT_SPEAKERS = {'train': SPEAKERS[:6], 'validation': SPEAKERS[6:8], 'test': SPEAKERS[8:]}
SPEAKER_SEED = 20240611  # the speakers' looks and voices are drawn from this, whatever the build's seed

FACE_SIZE = common.FACE_SIZE
SR, FPS, HOP = common.AV_SAMPLE_RATE, common.VIDEO_FPS, common.SAMPLES_PER_FRAME
ESPEAK_SR = 22050


def clip_speaker_emotion(index: int) -> tuple[str, str]:
    """(speaker id, emotion) of clip `index`."""
    return SPEAKERS[index % len(SPEAKERS)], EMOTIONS[(index + index // len(SPEAKERS)) % len(EMOTIONS)]


# ----------------------------------------------------------------------------- emotions
# Prosody in espeak-ng's units: rate (words/min), volume (0-200), pitch and range (0-99), word gap
# (10 ms units); `effect` is the emotion's post-processing strength (saturation, low-pass, tremolo).
_PROSODY_FIELDS = ('rate', 'volume', 'pitch', 'range', 'word_gap', 'effect')
_PROSODY = {
    'neutral':   (165, 100, 45, 35, 0, 0.0),
    'happy':     (190, 125, 68, 85, 0, 0.0),
    'sad':       (125, 65, 28, 12, 3, 1.0),
    'angry':     (210, 170, 52, 70, 0, 1.0),
    'fearful':   (215, 95, 76, 55, 1, 1.0),
    'surprised': (170, 135, 72, 99, 1, 0.0),
}
# Expression in pixels of the 96x96 crop: brow raise and slant (inner ends down > 0), eye openness
# (x rest height), mouth corners up, mouth width (x rest), mouth roundness (0 lens, 1 'O'), jaw
# (opening at the loudest frame), opening at rest, nod / shake amplitude, their rate (Hz), jitter
# (std per frame), head lowered (> 0) or raised (< 0).
FACE_FIELDS = ('brow_raise', 'brow_slant', 'eye_open', 'mouth_curve', 'mouth_width', 'mouth_round',
               'jaw', 'rest_open', 'nod', 'shake', 'motion_hz', 'jitter', 'head_drop')
_EXPRESSION = {
    'neutral':   (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 6.0, 0.0, 0.3, 0.3, 0.8, 0.1, 0.0),
    'happy':     (1.5, -0.5, 0.75, 4.0, 1.2, 0.0, 8.0, 0.8, 1.5, 0.4, 2.0, 0.2, -0.5),
    'sad':       (1.0, -3.5, 0.7, -3.5, 0.9, 0.0, 4.0, 0.0, 0.5, 0.3, 0.6, 0.1, 3.0),
    'angry':     (-3.0, 4.0, 0.65, -1.5, 0.95, 0.0, 8.0, 0.0, 0.8, 1.8, 2.5, 0.4, 1.0),
    'fearful':   (4.0, -2.5, 1.35, -1.5, 1.15, 0.2, 7.0, 1.5, 0.3, 1.0, 3.5, 0.8, -1.0),
    'surprised': (6.0, -1.0, 1.5, 0.0, 0.7, 1.0, 11.0, 3.0, 0.5, 0.3, 1.2, 0.3, -2.5),
}


def _blend(table: dict, emotion: str, intensity: float) -> np.ndarray:
    """The emotion's row of `table`, `intensity` of the way from neutral (0) to it (1)."""
    neutral = np.asarray(table['neutral'], float)
    return neutral + intensity * (np.asarray(table[emotion], float) - neutral)


def expression(emotion: str, intensity: float = 1.0) -> np.ndarray:
    """The values of the expression fields (`FACE_FIELDS`) for `emotion` at `intensity`."""
    return _blend(_EXPRESSION, emotion, intensity)


# ----------------------------------------------------------------------------- speakers

@dataclasses.dataclass(frozen=True)
class Speaker:
    """A speaker's voice and looks (colours RGB 0-255, lengths in px of the 96x96 crop)."""

    voice: str
    pitch_offset: float  # added to the emotion's espeak pitch
    rate_factor: float
    head_w: float  # half-axes of the head ellipse
    head_h: float
    eye_gap: float  # half the distance between the eyes
    eye_y: float  # eye line below the head centre (negative: above)
    brow_thickness: int
    hair_style: int  # 0 short, 1 long, 2 bald with side hair
    skin: tuple
    hair: tuple
    iris: tuple
    shirt: tuple
    background: tuple
    rest: np.ndarray  # offsets to the expression fields at rest (brows, eyes, mouth)


_SKINS = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
          (255, 224, 196), (234, 192, 134), (170, 110, 70), (250, 205, 160), (120, 72, 40))
_HAIRS = ((40, 30, 20), (90, 60, 30), (200, 170, 90), (20, 20, 20), (150, 70, 30), (120, 120, 120),
          (60, 40, 30), (230, 210, 150), (30, 25, 40), (110, 80, 50))
_BACKGROUNDS = ((120, 160, 200), (200, 200, 170), (150, 190, 150), (190, 150, 170), (90, 110, 140),
                (210, 180, 140), (140, 140, 140), (170, 200, 210), (200, 160, 120), (110, 140, 110))


def _make_speakers() -> dict[str, Speaker]:
    rng = np.random.default_rng(SPEAKER_SEED)
    skins, hairs, backgrounds = (rng.permutation(len(p)) for p in (_SKINS, _HAIRS, _BACKGROUNDS))
    speakers = {}
    for k, (name, voice) in enumerate(zip(SPEAKERS, VOICES)):
        female = k % 2 == 0
        rest = np.zeros(len(FACE_FIELDS))
        for field, spread in (('brow_raise', 1.5), ('brow_slant', 1.5), ('eye_open', 0.15),
                              ('mouth_curve', 1.5), ('mouth_width', 0.1)):
            rest[FACE_FIELDS.index(field)] = rng.uniform(-spread, spread)
        speakers[name] = Speaker(
            voice=voice, pitch_offset=rng.uniform(-8, 8), rate_factor=rng.uniform(0.9, 1.1),
            head_w=rng.uniform(23, 29), head_h=rng.uniform(30, 36), eye_gap=rng.uniform(8.5, 12.5),
            eye_y=rng.uniform(-7, -3), brow_thickness=int(rng.integers(1, 3)) + (not female),
            hair_style=int(rng.choice([0, 1])) if female else int(rng.choice([0, 0, 2])),
            skin=_SKINS[skins[k]], hair=_HAIRS[hairs[k]],
            iris=tuple(int(c) for c in rng.integers(20, 120, 3)),
            shirt=tuple(int(c) for c in rng.integers(30, 230, 3)),
            background=_BACKGROUNDS[backgrounds[k]], rest=rest)
    return speakers


SPEAKER_PROFILES = _make_speakers()


# ----------------------------------------------------------------------------- voice

class _Espeak:
    """espeak-ng from the espeakng-loader wheel through ctypes, synchronous output (22.05 kHz int16).

    espeak-ng keeps synthesis state in static variables from one utterance to the next (the same
    text in the same voice comes out differently after another sentence), even across
    espeak_Terminate/espeak_Initialize. `say` therefore loads a fresh copy of the library each time
    (dlclose + dlopen + initialise: ~5 ms), so that a clip depends only on its own parameters,
    whichever process renders it and whatever it rendered before. Not thread-safe: one per process.
    """

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    # espeak_PARAMETER values; AUDIO_OUTPUT_SYNCHRONOUS, POS_CHARACTER, espeakCHARS_UTF8 (speak_lib.h)
    _PARAMETERS = {'rate': 1, 'volume': 2, 'pitch': 3, 'range': 4, 'word_gap': 7}
    _SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1

    def __init__(self):
        import espeakng_loader

        self._path, self._data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        self._lib = None
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept alive as long as the library uses it

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        return 0

    def _reload(self):
        if self._lib is not None:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
        lib = self._lib = ctypes.CDLL(self._path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(self._SYNCHRONOUS, 0, self._data.encode(), 0)
        if rate != ESPEAK_SR:
            raise RuntimeError(f'espeak_Initialize returned {rate}, expected sample rate {ESPEAK_SR}')
        lib.espeak_SetSynthCallback(self._callback)

    def say(self, text: str, voice: str, **prosody: int) -> np.ndarray:
        """int16 speech [samples] at 22.05 kHz; `prosody`: rate, volume, pitch, range, word_gap."""
        self._reload()
        self._chunks.clear()
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f'espeak-ng has no voice {voice!r}')
        for name, value in prosody.items():
            self._lib.espeak_SetParameter(self._PARAMETERS[name], int(value), 0)
        data = text.encode()
        error = self._lib.espeak_Synth(data, len(data) + 1, 0, self._POS_CHARACTER, 0, self._CHARS_UTF8,
                                       None, None)
        if error != 0 or self._lib.espeak_Synchronize() != 0:
            raise RuntimeError(f'espeak_Synth failed (error {error}) on {text!r}')
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_espeak: _Espeak | None = None  # one per process, made on first use


def speak(text: str, voice: str, **prosody) -> np.ndarray:
    """int16 speech at ESPEAK_SR from this process's espeak-ng (made on first use); `prosody`: rate,
    volume, pitch, range, word_gap in espeak-ng's units (also used by data_pipelines.demo_emotion)."""
    global _espeak
    if _espeak is None:
        _espeak = _Espeak()
    return _espeak.say(text, voice, **prosody)


def _speech(rng, text: str, speaker: Speaker, emotion: str, intensity: float) -> np.ndarray:
    """The emotional utterance, float at 16 kHz without leading/trailing silence, before level."""
    p = dict(zip(_PROSODY_FIELDS, _blend(_PROSODY, emotion, intensity)))
    x = speak(
        text, speaker.voice,
        rate=np.clip(p['rate'] * speaker.rate_factor * np.exp(rng.normal(0, 0.08)), 80, 400),
        volume=np.clip(p['volume'] * np.exp(rng.normal(0, 0.1)), 10, 200),
        pitch=np.clip(p['pitch'] + speaker.pitch_offset + rng.normal(0, 6), 0, 99),
        range=np.clip(p['range'] + rng.normal(0, 10), 0, 99),
        word_gap=round(p['word_gap']))
    x = audio_lib.resample(x.astype(np.float32) / 32768, ESPEAK_SR, SR).astype(np.float64)
    active = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    x = x[active[0]:active[-1] + 1]
    effect = p['effect']
    if emotion == 'angry':  # soft saturation: louder harmonics high up
        drive = 1 + effect * rng.uniform(1.5, 3.5)
        peak = np.abs(x).max()
        x = np.tanh(drive * x / peak) * peak / np.tanh(drive)
    elif emotion == 'sad':  # darker: first-order low-pass at 1.2-2.5 kHz
        cutoff = rng.uniform(1200, 2500)
        f = np.fft.rfftfreq(len(x), 1 / SR)
        x = np.fft.irfft(np.fft.rfft(x) / np.sqrt(1 + (effect * f / cutoff) ** 2), len(x))
    elif emotion == 'fearful':  # tremolo
        t = np.arange(len(x)) / SR
        x = x * (1 + effect * rng.uniform(0.2, 0.45) * np.sin(2 * np.pi * rng.uniform(5, 8) * t))
    return x


def _frame_rms(x: np.ndarray) -> np.ndarray:
    """RMS of each whole frame of 640 samples."""
    return np.sqrt(np.mean(x[:len(x) // HOP * HOP].reshape(-1, HOP) ** 2, axis=1))


# ----------------------------------------------------------------------------- face

def _pt(x: float, y: float) -> tuple[int, int]:
    """Sub-pixel point for OpenCV drawing with shift=4."""
    return round(x * 16), round(y * 16)


def _ax(a: float, b: float) -> tuple[int, int]:
    return max(1, round(a * 16)), max(1, round(b * 16))


def _ellipse(img, center, axes, color, angle=0.0, start=0, end=360, thickness=-1):
    cv2.ellipse(img, _pt(*center), _ax(*axes), angle, start, end, color, thickness, cv2.LINE_AA, 4)


def draw_face(speaker: Speaker, face: np.ndarray, dx: float, dy: float, mouth_open: float,
              eye_closed: float = 0.0) -> np.ndarray:
    """The 96x96 RGB crop of `speaker` with expression `face` (values of `FACE_FIELDS`),
    the head moved by (dx, dy) px, the mouth open by `mouth_open` px, eyes closed by `eye_closed`
    (0 open .. 1 shut). No lighting or noise."""
    e = {k: float(v) for k, v in zip(FACE_FIELDS, face + speaker.rest)}
    dx, dy, mouth_open, eye_closed = float(dx), float(dy), float(mouth_open), float(eye_closed)
    img = np.empty((FACE_SIZE, FACE_SIZE, 3), np.uint8)
    img[:] = speaker.background
    cx, cy = 48 + dx, 50 + dy
    hw, hh = speaker.head_w, speaker.head_h
    _ellipse(img, (48 + 0.3 * dx, cy + hh + 16), (hw + 14, 22), speaker.shirt)  # shoulders
    if speaker.hair_style == 1:  # long hair behind the head
        _ellipse(img, (cx, cy + 0.15 * hh), (hw + 5, hh + 6), speaker.hair)
    cv2.rectangle(img, _pt(cx - 0.4 * hw, cy + 0.6 * hh), _pt(cx + 0.4 * hw, cy + hh + 8),
                  speaker.skin, -1, cv2.LINE_AA, 4)  # neck
    for side in (-1, 1):  # ears
        _ellipse(img, (cx + side * hw, cy + speaker.eye_y + 4), (3.5, 6), speaker.skin)
    _ellipse(img, (cx, cy), (hw, hh), speaker.skin)
    if speaker.hair_style in (0, 1):  # a cap of hair over the top of the head
        _ellipse(img, (cx, cy - 0.55 * hh), (hw + 1.5, 0.55 * hh), speaker.hair, start=180, end=360)
    else:  # bald on top, hair at the sides
        for start, end in ((160, 215), (-35, 20)):
            _ellipse(img, (cx, cy), (hw - 0.5, hh - 0.5), speaker.hair, start=start, end=end, thickness=3)
    eye_y = cy + speaker.eye_y
    eye_h = max(0.3, 3.4 * e['eye_open'] * (1 - eye_closed))
    brow_y = eye_y - 6.5 - max(0.0, e['eye_open'] - 1) * 2 - e['brow_raise']
    brow_colour = tuple(int(0.55 * c) for c in speaker.hair)  # darker: visible against the hair too
    for side in (-1, 1):
        ex = cx + side * speaker.eye_gap
        _ellipse(img, (ex, eye_y), (5, eye_h), (250, 250, 250))
        if eye_h > 1.2:
            cv2.circle(img, _pt(ex, eye_y), round(min(2.6, eye_h) * 16), speaker.iris, -1, cv2.LINE_AA, 4)
            cv2.circle(img, _pt(ex, eye_y), round(min(1.2, eye_h / 2) * 16), (10, 10, 10), -1, cv2.LINE_AA, 4)
        _ellipse(img, (ex, eye_y), (5, eye_h), tuple(int(0.6 * c) for c in speaker.skin), thickness=1)
        inner, outer = ex - side * 5.5, ex + side * 6
        cv2.line(img, _pt(inner, brow_y + e['brow_slant']), _pt(outer, brow_y - 0.5 * e['brow_slant']),
                 brow_colour, speaker.brow_thickness, cv2.LINE_AA, 4)
    nose = np.array([_pt(cx, eye_y + 4), _pt(cx - 3, cy + 0.22 * hh), _pt(cx + 1.5, cy + 0.24 * hh)], np.int32)
    cv2.polylines(img, [nose], False, tuple(int(0.75 * c) for c in speaker.skin), 1, cv2.LINE_AA, 4)
    _draw_mouth(img, speaker, e, cx, cy + 0.5 * hh, mouth_open)
    return img


def _draw_mouth(img, speaker: Speaker, e: dict, mx: float, my: float, mouth_open: float):
    half = 8.5 * e['mouth_width'] * (1 - 0.25 * e['mouth_round'] * min(1.0, mouth_open / 6))
    u = np.linspace(-1, 1, 21)
    bulge = (1 - u ** 2) ** (0.5 + 0.5 * (1 - e['mouth_round']))  # rounder for an 'O'
    centre_line = my - e['mouth_curve'] * u ** 2 + 0.3 * e['mouth_curve']
    upper = centre_line - 0.35 * mouth_open * bulge
    lower = centre_line + 0.65 * mouth_open * bulge
    x = mx + half * u
    lip = (int(0.8 * speaker.skin[0]), int(0.45 * speaker.skin[1]), int(0.45 * speaker.skin[2]))
    outline = np.round(16 * np.stack([np.r_[x, x[::-1]], np.r_[upper, lower[::-1]]], 1)).astype(np.int32)
    if mouth_open > 0.4:
        cv2.fillPoly(img, [outline], (60, 15, 25), cv2.LINE_AA, 4)
    cv2.polylines(img, [outline], True, lip, 2 if mouth_open > 0.4 else 1, cv2.LINE_AA, 4)


# ----------------------------------------------------------------------------- clips

@dataclasses.dataclass
class Clip:
    """One rendered clip, before encoding."""

    audio: np.ndarray  # float32 [frames * 640] in [-1, 1]
    frames: np.ndarray  # uint8 [frames, 96, 96, 3] RGB
    face_boxes: np.ndarray  # float32 [frames, 4]
    speaker: str
    emotion: str
    text: str


def generate_clip(index: int, seed: int) -> Clip:
    """Clip `index` of the corpus; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index])
    speaker_id, emotion = clip_speaker_emotion(index)
    speaker = SPEAKER_PROFILES[speaker_id]
    frames = int(rng.uniform(2.0, 3.0) * FPS)
    intensity = rng.uniform(0.35, 1.0)
    text = str(rng.choice(SENTENCES))
    audio, voice = _clip_audio(rng, frames * HOP, text, speaker, emotion, intensity)
    # The mouth opens with the voice's level per frame: closed 30 dB below the loudest frame.
    rms = _frame_rms(voice)
    openness = np.clip(1 + 20 * np.log10(rms / rms.max() + 1e-6) / 30, 0, 1)
    video, boxes = _clip_video(rng, speaker, emotion, intensity, openness)
    return Clip(audio.astype(np.float32), video, boxes, speaker_id, emotion, text)


def _clip_audio(rng, n: int, text: str, speaker: Speaker, emotion: str, intensity: float):
    """(audio [n], the voice alone [n]): the utterance starts after 0.05-0.5 s (cut at the end),
    with a gain and background noise at 5-30 dB SNR (against the voice's RMS while it speaks)."""
    speech = _speech(rng, text, speaker, emotion, intensity)
    start = int(rng.uniform(0.05, 0.5) * SR)
    part = speech[:n - start] * 10 ** (rng.uniform(-8, 4) / 20)
    part *= np.minimum(1.0, np.arange(len(part), 0, -1) / (0.02 * SR))  # 20 ms fade-out where cut
    voice = np.zeros(n)
    voice[start:start + len(part)] = part
    noise_rms = np.sqrt(np.mean(part ** 2)) / 10 ** (rng.uniform(5, 30) / 20)
    noise = noise_rms * demo._noise(rng, n, SR, int(rng.integers(0, 3)))
    x = voice + noise
    return x / max(1.0, np.abs(x).max() / 0.99), voice


def _clip_video(rng, speaker: Speaker, emotion: str, intensity: float, openness: np.ndarray):
    """(frames uint8 [F, 96, 96, 3], face boxes [F, 4]) for a mouth `openness` [F] in 0..1."""
    frames = len(openness)
    face = expression(emotion, intensity)
    face += rng.normal(0, 0.08, len(face)) * np.maximum(np.abs(face), 1.0)
    e = dict(zip(FACE_FIELDS, face))
    t = np.arange(frames) / FPS
    phase = rng.uniform(0, 2 * np.pi, 2)
    offset = rng.uniform(-4, 4, 2)
    jitter = rng.normal(0, max(0.0, e['jitter']) + 0.1, (frames, 2))
    dx = offset[0] + e['shake'] * np.sin(2 * np.pi * e['motion_hz'] * t + phase[0]) + jitter[:, 0]
    dy = (offset[1] + e['head_drop'] + jitter[:, 1]
          + e['nod'] * np.sin(2 * np.pi * 0.8 * e['motion_hz'] * t + phase[1]))
    mouth = np.maximum(0.0, e['rest_open'] + e['jaw'] * openness)
    blink = np.zeros(frames + 2)  # eyes closed 0..1
    for b in rng.integers(0, frames, rng.poisson(0.4 * frames / FPS)):  # ~0.4 blinks/s, 3 frames each
        blink[b:b + 3] = np.maximum(blink[b:b + 3], (0.6, 1.0, 0.6))
    # Lighting: brightness, a left-right gradient, a colour cast.
    gradient = 1 + rng.uniform(-0.3, 0.3) * np.linspace(-1, 1, FACE_SIZE)
    light_1W3 = rng.uniform(0.65, 1.3) * gradient[None, :, None] * np.exp(rng.normal(0, 0.06, 3))
    noise_std = rng.uniform(2, 10)
    video = np.stack([draw_face(speaker, face, dx[f], dy[f], mouth[f], blink[f]) for f in range(frames)])
    # Uniform pixel noise of std `noise_std` (from raw bytes: 8x faster than normal deviates); +0.5 rounds.
    noise = np.frombuffer(rng.bytes(video.size), np.uint8).reshape(video.shape) - np.float32(127.5)
    video = video * light_1W3.astype(np.float32) + noise * np.float32(noise_std * 12 ** 0.5 / 256)
    video = np.clip(video + 0.5, 0, 255).astype(np.uint8)
    x0, y0 = 0.25 + dx * 0.5 / FACE_SIZE, 0.1 + dy * 0.8 / FACE_SIZE
    return video, np.stack([x0, y0, x0 + 0.5, y0 + 0.8], 1).astype(np.float32)


def clip_example(index: int, seed: int) -> dict:
    """Clip `index` in the storage contract (`common.av_example`), frames as JPEG."""
    clip = generate_clip(index, seed)
    return common.av_example(
        f'demo_av-{index:06d}', common.to_int16(clip.audio), [common.encode_frame(f) for f in clip.frames],
        clip.face_boxes, clip.emotion, clip.speaker, captions=[clip.text])


# ----------------------------------------------------------------------------- builder

def _single_thread_worker():
    """Worker initialiser: one OpenCV thread per worker process (the workers are the parallelism)."""
    cv2.setNumThreads(1)


def render(indices: Sequence[int], seed: int, workers: int) -> Iterator[dict]:
    """`clip_example` of each index, in order, from `workers` processes (in-process for 1).

    Processes rather than threads: espeak-ng's state is process-global. Spawned, not forked (the
    parent may hold JAX's or TFDS's threads); at most 4 clips per worker are in flight, so memory
    stays flat however many clips are rendered.
    """
    if workers <= 1:
        yield from (clip_example(i, seed) for i in indices)
        return
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(workers, context, _single_thread_worker) as pool:
        pending = collections.deque()
        for i in indices:
            pending.append(pool.submit(clip_example, i, seed))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# Starting a worker process costs ~3 s (it imports TFDS and JAX through `common`), about 40 clips'
# worth: smaller builds render in-process.
CLIPS_PER_WORKER = 200


class DemoAV(common.AudioBuilder, skip_registration=True):
    """The procedural audiovisual demo corpus as a TFDS dataset; ids are 'demo_av-000123'."""

    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, num_clips: int = DEFAULT_NUM_CLIPS, seed: int = 0, **kwargs):
        self.num_clips, self.seed = num_clips, seed
        self.skipped = []
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='Procedural talking cartoon faces with espeak-ng voices in 6 emotions '
                        '(data_pipelines/demo_av.py).',
            features=common.av_features(EMOTIONS),
            metadata=tfds.core.MetadataDict(
                sample_rate=SR, fps=FPS, frame_size=FACE_SIZE, modalities='audio,video', seed=self.seed,
                num_clips=self.num_clips, speakers={s: list(v) for s, v in SPLIT_SPEAKERS.items()}),
        )

    def _split_generators(self, dl_manager):
        split_of = {spk: split for split, speakers in SPLIT_SPEAKERS.items() for spk in speakers}
        indices = {split: [] for split in common.SPLITS}
        for i in range(self.num_clips):
            indices[split_of[clip_speaker_emotion(i)[0]]].append(i)
        # One pool for the whole build: TFDS writes the splits one after another, in this order.
        workers = max(1, min(len(os.sched_getaffinity(0)), self.num_clips // CLIPS_PER_WORKER))
        examples = render([i for s in common.SPLITS for i in indices[s]], self.seed, workers)
        return {s: self._generate_examples(examples, indices[s]) for s in common.SPLITS if indices[s]}

    def _generate_examples(self, examples: Iterator[dict], indices: Sequence[int]):
        for i in indices:
            example = next(examples)
            if example['id'] != f'demo_av-{i:06d}':
                raise RuntimeError(f'splits generated out of order: expected clip {i}, got {example["id"]}')
            yield example['id'], example


def build(out: str, *, num_clips: int = DEFAULT_NUM_CLIPS, seed: int = 0) -> common.BuildReport:
    """Generates the audiovisual demo corpus into a TFDS dataset in DATA_DIR `out`.

    Builds of CLIPS_PER_WORKER * 2 clips or more render in spawned worker processes: a script that
    calls this must do so under `if __name__ == '__main__':`, as for any multiprocessing code.
    """
    return common.prepare_dataset(DemoAV, out, num_clips=num_clips, seed=seed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--num_clips', type=int, default=DEFAULT_NUM_CLIPS)
    parser.add_argument('--seed', type=int, default=0)
    build(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
