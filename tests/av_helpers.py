"""Small synthetic talking-face videos written with PyAV, for the audiovisual builder tests.

The face (light skin ellipse, dark eyes and brows, nose line, a mouth that opens with the audio)
is drawn with OpenCV primitives on a light background; OpenCV's Haar `frontalface_default` finds
it (tests/test_av_datasets.py measures how often). Audio frames get explicit timestamps: without
them PyAV's AAC encoder does not mark its 1024 priming samples, and the audio plays 1024 samples
late.
"""
from __future__ import annotations

import fractions
import math
import pathlib

import av
import cv2
import numpy as np

SKIN, SWAPPED_SKIN = (190, 160, 140), (140, 160, 190)  # RGB; close in luminance, far in red - blue


def draw_face(rgb: np.ndarray, cx: int, cy: int, half_width: int, mouth: float = 0.3,
              skin=SKIN) -> None:
    """Draws a frontal face centred at (cx, cy) into uint8 rgb [H, W, 3]; `mouth` in [0, 1] opens it."""
    s = half_width
    cv2.ellipse(rgb, (cx, cy), (s, int(s * 1.3)), 0, 0, 360, skin, -1)
    eye_y, eye_dx = cy - int(0.25 * s), int(0.4 * s)
    for side in (-1, 1):
        cv2.ellipse(rgb, (cx + side * eye_dx, eye_y), (int(0.2 * s), int(0.1 * s)), 0, 0, 360, (40, 30, 30), -1)
        cv2.line(rgb, (cx + side * int(0.2 * s), eye_y - int(0.25 * s)),
                 (cx + side * int(0.6 * s), eye_y - int(0.28 * s)), (50, 40, 40), max(1, int(0.08 * s)))
    cv2.line(rgb, (cx, eye_y + int(0.1 * s)), (cx, cy + int(0.3 * s)), (120, 90, 80), max(1, int(0.06 * s)))
    cv2.ellipse(rgb, (cx, cy + int(0.6 * s)), (int(0.35 * s), max(1, int((0.05 + 0.15 * mouth) * s))),
                0, 0, 360, (80, 40, 50), -1)


def face_centre(i: int, fps: float, width: int, height: int) -> tuple[int, int]:
    """Where frame i's face is: slowly swaying left and right of the frame centre."""
    return width // 2 + int(round(0.04 * width * np.sin(2 * np.pi * 0.5 * i / fps))), height // 2


def speech_like(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """float32 [N]: a 150 Hz harmonic tone with a 4 Hz syllable envelope."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    tone = sum(np.sin(2 * np.pi * 150 * k * t + seed) / k for k in range(1, 6))
    return (0.2 * tone * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def write_video(
    path: str | pathlib.Path, *, seconds: float = 1.2, fps: float = 25, size: tuple[int, int] = (128, 96),
    face: bool = True, video: bool = True, audio: bool = True, sample_rate: int = 16000,
    channels: int = 1, swap_skin_at: float | None = None, click_at: float | None = None,
    rotation: int = 0, vcodec: str = 'libx264', acodec: str = 'aac', seed: int = 0, **open_options,
) -> pathlib.Path:
    """Writes a video (container from the suffix) and returns its path.

    `swap_skin_at`: from this time on (s) the face's skin colour is `SWAPPED_SKIN`; `click_at`: a
    loud 5 ms burst in the audio at this time (s). `face=False` draws moving boxes instead.
    `rotation` (a multiple of 90): the frames are stored turned clockwise by it, with a display
    rotation of that much counter-clockwise (as a phone stores portrait video).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rate = fractions.Fraction(fps).limit_denominator(1001)
    swap_from = math.inf if swap_skin_at is None else math.ceil(swap_skin_at * rate - 1e-6)  # frame index
    x = speech_like(seconds, sample_rate, seed)
    if click_at is not None:
        at = int(round(click_at * sample_rate))
        x[at:at + sample_rate // 200] = 0.9
    with av.open(str(path), 'w', **open_options) as container:
        if video:
            vstream = container.add_stream(vcodec, rate=rate)
            turns = rotation // 90
            vstream.width, vstream.height = (height, width) if turns % 2 else (width, height)
            vstream.pix_fmt = 'yuv420p'
            if rotation:
                vstream.set_display_rotation(rotation)
            if vcodec == 'libx264':
                vstream.options = {'preset': 'ultrafast', 'crf': '18'}
        if audio:
            astream = container.add_stream(acodec, rate=sample_rate)
            astream.layout = 'mono' if channels == 1 else 'stereo'
        if video:
            background = np.linspace(200, 240, width, dtype=np.float32)[None, :, None]
            envelope = np.abs(x).reshape(-1)
            for i in range(int(round(seconds * rate))):
                t = i / rate
                rgb = np.empty((height, width, 3), np.uint8)
                rgb[:] = background
                cx, cy = face_centre(i, float(rate), width, height)
                if face:
                    loudness = envelope[int(t * sample_rate):][:sample_rate // 25]
                    mouth = min(1.0, 4 * float(loudness.mean())) if loudness.size else 0.0
                    skin = SWAPPED_SKIN if i >= swap_from else SKIN
                    draw_face(rgb, cx, cy, int(0.2 * min(width, height) * 1.25), mouth, skin)
                else:
                    cv2.rectangle(rgb, (cx - 20, cy - 15), (cx + 20, cy + 15), (60, 90, 160), -1)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(rgb, -turns)), format='rgb24')
                frame.pts, frame.time_base = i, 1 / rate
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
        if audio:
            planar = np.repeat(x[None], channels, axis=0)
            for start in range(0, planar.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + 1024]),
                                                   format='fltp', layout=astream.layout.name)
                frame.sample_rate, frame.pts = sample_rate, start
                frame.time_base = fractions.Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode())
    return path
