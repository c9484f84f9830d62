"""Video decoding and face tracking for the audiovisual builders (pure functions, no TFDS).

`decode_av` turns a video file into 16 kHz mono audio and RGB frames at 25 fps; `face_clip`, what
the builders run per file, turns it into audio plus 96x96 face crops at 25 fps, holding at most
KEEP_BYTES of decoded frames in memory (a longer video is decoded twice instead).

Time. Frames are placed by their presentation timestamps. The clip starts at the later of the
first video frame and the first audio sample (the audio before it is dropped); tick k of the
25 fps grid, at start + k/25 s, shows the last source frame whose timestamp is at most the tick
(+1 ms for rounded container timestamps), so 30, 29.97, 50 fps or variable-rate sources drop
frames and 15 fps sources repeat them. The video lasts until its last frame's end (its timestamp
plus the previous frame interval). Frame i then covers audio samples [i·640, (i+1)·640), and both
are cut to the shared whole-frame length: len(audio) == 640 · len(frames).

Faces (DESIGN §5; the reference runs OpenCV's Haar `frontalface_default` on every frame with
scaleFactor 1.05, minNeighbors 20, minSize 30 and crops with a 30 px margin):
  * detection runs on every `detect_every`-th frame (default 5: 5 detections per second), on a
    grayscale copy scaled down so that its shorter side is at most DETECT_SIDE = 240 px, with the
    reference's scaleFactor 1.05 and minSize 30 px (of the copy: faces under 1/8 of the shorter
    side are not searched) but minNeighbors MIN_NEIGHBORS = 5, since a face in the smaller copy
    gathers fewer overlapping hits. Measured on the drawn faces of tests/av_helpers.py (H.264,
    128x96 to 1280x720): minNeighbors 5 finds them on 100 % of the frames, 10 on 84-100 %, 20 on
    0-84 %; none of them hits anything in faceless videos. Once a face is tracked, the search
    first covers the square of twice its size around it, for faces of 0.7-1.4 times its size
    (~7x cheaper), and the whole frame only when that finds none;
  * the first detection takes the largest face, each later one the face nearest to the previous
    pick; the box centre and size are interpolated linearly between detections, held before the
    first and after the last, then smoothed by a centred moving average over SMOOTH_FRAMES = 9
    frames (0.36 s) so that crops do not jitter;
  * the crop is the square of side (1 + 2·margin) · box size around the box centre, margin 0.1 of
    the box size per side (the reference's 30 px on its ~300 px faces at 1280x720), padded with
    black where it leaves the frame and resized to 96x96 in one step. The reference instead
    resizes to 128 and centre-crops 96, which keeps only the box's central 90 % and can cut the
    chin and mouth: we keep the whole margined box;
  * "no face" is measured where it is observed: `no_face_fraction` is the share of the sampled
    (detection) frames on which the cascade found no face, an unbiased estimate of the per-frame
    miss rate. A video without any detection (allowed only with max_no_face_fraction >= 1) is
    cropped to the centred square of its shorter side.
Frames carrying a display rotation (phone videos) are turned upright before detection and crops.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pathlib
import threading
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import cv2
import numpy as np
import soxr

from avpretrain.data.frames import AV_SAMPLE_RATE, FACE_SIZE, SAMPLES_PER_FRAME, VIDEO_FPS

CASCADE = 'haarcascade_frontalface_default.xml'
SCALE_FACTOR = 1.05
MIN_NEIGHBORS = 5
MIN_FACE = 30  # px, on the detection copy
DETECT_SIDE = 240  # px: detection runs on a copy whose shorter side is at most this
SMOOTH_FRAMES = 9
MARGIN = 0.1
KEEP_BYTES = 256 << 20  # decoded frames held for the crop pass; beyond this the video is decoded again
TICK_TOLERANCE = Fraction(1, 1000)  # s: container timestamps are often rounded to 1 ms
# A stream that decodes to less than its declared duration by more than this is truncated.
TRUNCATION_SLACK_S, TRUNCATION_SLACK_FRACTION = 0.5, 0.02


class VideoProblem(ValueError):
    """Why a video cannot be used, as one line without the path, e.g. 'no audio stream'."""


@dataclasses.dataclass
class Decoded:
    """`decode_av`'s result: audio float32 [T·640] at 16 kHz (None without an audio stream, when
    not needed) and frames uint8 RGB [T, H, W, 3] at 25 fps."""

    audio: np.ndarray | None
    frames: np.ndarray
    source_fps: float


@dataclasses.dataclass
class FaceClip:
    """`face_clip`'s result: audio float32 [T·640] at 16 kHz (None: no audio), face crops uint8 RGB
    [T, 96, 96, 3] at 25 fps, the crops' squares [T, 4] (x0, y0, x1, y1 as fractions of the source
    frame's width and height; beyond [0, 1] where padded) and the share of the sampled frames
    without a detected face."""

    audio: np.ndarray | None
    frames: np.ndarray
    boxes: np.ndarray
    no_face_fraction: float


# ----------------------------------------------------------------------------- decoding

@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[av.container.InputContainer]:
    """The container of `path` (any file name: opened by its bytes); FFmpeg errors while it is
    open become VideoProblem."""
    try:
        f = open(os.fsencode(path), 'rb')
    except OSError as e:
        raise VideoProblem(f'unreadable: {e.strerror}') from None
    with f:
        try:
            container = av.open(f)
        except av.FFmpegError as e:
            raise VideoProblem(f'unreadable container: {_message(e)}') from None
        with container:
            try:
                yield container
            except av.FFmpegError as e:
                raise VideoProblem(f'undecodable: {_message(e)}') from None


def _message(e: av.FFmpegError) -> str:
    return getattr(e, 'strerror', None) or str(e)


def _video_stream(container) -> av.VideoStream:
    """The first video stream that is not cover art."""
    for stream in container.streams.video:
        if av.stream.Disposition.attached_pic not in stream.disposition:
            return stream
    raise VideoProblem('no video stream')


def _stream_seconds(stream) -> float | None:
    """The stream's duration as the container states it, if it does."""
    return float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None


def _container_seconds(container) -> float | None:
    """The container's duration (that of its longest stream), if it states one."""
    return container.duration / av.time_base if container.duration else None


def _frame_interval(stream) -> Fraction | None:
    """1 / the stream's nominal frame rate, if it has one."""
    rate = stream.average_rate or stream.guessed_rate
    return 1 / Fraction(rate) if rate else None


def _truncated(declared: float | None, decoded: float) -> bool:
    return bool(declared) and declared - decoded > TRUNCATION_SLACK_S + TRUNCATION_SLACK_FRACTION * declared


def _decode(container, stream, what: str) -> Iterator[av.AudioFrame | av.VideoFrame]:
    """`container.decode(stream)`; a decoding error short of the stream's declared end is
    reported as truncation."""
    declared = _stream_seconds(stream) or _container_seconds(container)
    decoded = 0.0
    try:
        for frame in container.decode(stream):
            decoded = frame.time or decoded
            yield frame
    except av.FFmpegError as e:
        if _truncated(declared, decoded):
            raise VideoProblem(f'truncated: container says {declared:.2f} s of {what}, decoding '
                               f'fails after {decoded:.2f} s ({_message(e)})') from None
        raise


def _read_audio(path) -> tuple[np.ndarray, Fraction]:
    """The first audio stream as float32 mono at 16 kHz (channels averaged, soxr HQ) and the time
    of its first sample."""
    with _open(path) as container:
        stream = container.streams.audio[0]
        chunks, start, resampler = [], None, None
        for frame in _decode(container, stream, 'audio'):
            if resampler is None:  # planar float at the first frame's layout and rate throughout
                start = frame.pts * frame.time_base if frame.pts is not None else Fraction(0)
                rate = frame.sample_rate
                resampler = av.AudioResampler(format='fltp', layout=frame.layout, rate=rate)
            chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(frame)]
        if resampler is None:
            raise VideoProblem('no decodable audio in the audio stream')
        chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(None)]
        x = np.concatenate(chunks).astype(np.float32)
    if rate != AV_SAMPLE_RATE:  # soxr HQ, as avpretrain.audio.resample (which would import JAX here)
        x = soxr.resample(x, rate, AV_SAMPLE_RATE, quality='HQ')
    return x.astype(np.float32), start


def _timed_frames(container, stream) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """(presentation time in s, frame), times made non-decreasing (a missing timestamp follows the
    previous one by the nominal frame interval)."""
    step = _frame_interval(stream) or Fraction(1, VIDEO_FPS)
    t = None
    for frame in _decode(container, stream, 'video'):
        if frame.width == 0 or frame.height == 0:
            raise VideoProblem(f'zero-sized frames ({frame.width}x{frame.height})')
        if frame.pts is not None and frame.time_base:
            at = frame.pts * frame.time_base
        else:
            at = Fraction(0) if t is None else t + step
        t = at if t is None else max(t, at)
        yield t, frame


def at_fps(timed: Iterable[tuple[Fraction, object]], start: Fraction, fps: int = VIDEO_FPS,
           last_interval: Fraction | None = None) -> Iterator[object]:
    """Resamples `timed` ((time s, item), times non-decreasing) to `fps`: for tick k at
    start + k/fps, the last item with time <= tick + 1 ms (items repeat or drop). The last item
    lasts one previous interval (`last_interval`, else 1/fps, when it is the only one)."""
    k, previous, previous_t, interval = 0, None, None, last_interval or Fraction(1, fps)
    for t, item in timed:
        if previous is not None:
            interval = t - previous_t or interval
            while start + Fraction(k, fps) + TICK_TOLERANCE < t:
                yield previous
                k += 1
        previous, previous_t = item, t
    if previous is not None:
        while start + Fraction(k, fps) + TICK_TOLERANCE < previous_t + interval:
            yield previous
            k += 1


class _Video:
    """One video file: its audio (decoded up front) and its frames at 25 fps (decoded on each call
    of `frames`, from the start shared with the audio)."""

    def __init__(self, path, *, need_audio: bool, audio: np.ndarray | None = None):
        self.path = path
        with _open(path) as container:
            stream = _video_stream(container)
            own_audio = audio is None and bool(container.streams.audio)
            if need_audio and audio is None and not own_audio:
                raise VideoProblem('no audio stream')
            interval = _frame_interval(stream)
            self.source_fps = float(1 / interval) if interval else float('nan')
            self.declared = {'video': _stream_seconds(stream), 'total': _container_seconds(container)}
            if own_audio:
                self.declared['audio'] = _stream_seconds(container.streams.audio[0])
        # Given audio (e.g. a separate WAV) starts with the first video frame.
        self.audio, self.audio_start = _read_audio(path) if own_audio else (audio, None)
        self.start: Fraction | None = None  # the clip's start: set by the first `frames` call
        self.video_start: Fraction | None = None  # the first frame's time

    def frames(self) -> Iterator[av.VideoFrame]:
        with _open(self.path) as container:
            stream = _video_stream(container)
            timed = _timed_frames(container, stream)
            try:
                first = next(timed)
            except StopIteration:
                raise VideoProblem('no decodable video frames') from None
            if self.start is None:
                self.video_start = first[0]
                self.start = max(first[0], self.audio_start if self.audio_start is not None else first[0])
            yield from at_fps(itertools.chain([first], timed), self.start, last_interval=_frame_interval(stream))

    def shared_frames(self, num_frames: int, min_seconds: float = 0.0) -> int:
        """After a pass over `frames` (num_frames of them): the frames with audio under them (all
        without audio). VideoProblem when a stream decoded to less than the container declares
        (a stream without a declared duration: the longest one against the container's), and
        when fewer than one frame or `min_seconds` are shared."""
        decoded = {'video': float(self.start - self.video_start) + num_frames / VIDEO_FPS}
        if 'audio' in self.declared:
            decoded['audio'] = len(self.audio) / AV_SAMPLE_RATE
        for what, seconds in decoded.items():
            declared, of = self.declared[what], f' of {what}'
            if declared is None:
                declared, seconds, of = self.declared['total'], max(decoded.values()), ''
            if _truncated(declared, seconds):
                raise VideoProblem(f'truncated: container says {declared:.2f} s{of}, only {seconds:.2f} s decode')
        if self.audio is not None:
            num_frames = min(num_frames, len(self.aligned_audio()) // SAMPLES_PER_FRAME)
        if num_frames == 0 or num_frames < min_seconds * VIDEO_FPS:
            raise VideoProblem(f'too short: {num_frames / VIDEO_FPS:.2f} s'
                               + (f' < {min_seconds} s' if min_seconds else ''))
        return num_frames

    def aligned_audio(self, num_frames: int | None = None) -> np.ndarray | None:
        """The audio from the clip's start, cut to `num_frames` frames when given."""
        if self.audio is None:
            return None
        skip = 0 if self.audio_start is None else round((self.start - self.audio_start) * AV_SAMPLE_RATE)
        end = None if num_frames is None else skip + num_frames * SAMPLES_PER_FRAME
        return self.audio[skip:end]


def _upright(frame: av.VideoFrame, x: np.ndarray) -> np.ndarray:
    """`x` (converted from `frame`) turned as the frame's display matrix says (counter-clockwise)."""
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(x, quarter_turns)) if quarter_turns else x


def _upright_size(frame: av.VideoFrame) -> tuple[int, int]:
    """(width, height) of `frame` turned upright."""
    return (frame.height, frame.width) if round((frame.rotation or 0) / 90) % 2 else (frame.width, frame.height)


def _scaled(frame: av.VideoFrame, scale: float, format: str) -> np.ndarray:
    """`frame` as an array of `format` (rgb24 or gray), scaled by `scale` <= 1 (area averaging),
    turned upright."""
    if scale < 1:
        x = frame.reformat(width=max(1, round(frame.width * scale)), height=max(1, round(frame.height * scale)),
                           format=format, interpolation='AREA').to_ndarray()
    else:
        x = frame.to_ndarray(format=format)
    return _upright(frame, x)


def _rgb(frame: av.VideoFrame, scale: float = 1.0) -> np.ndarray:
    return _scaled(frame, scale, 'rgb24')


def decode_av(path: str | os.PathLike, *, need_audio: bool = True) -> Decoded:
    """Audio (16 kHz mono float32 [T·640]) and RGB frames (uint8 [T, H, W, 3] at 25 fps) of a video
    file, aligned by timestamps and cut to the shared whole-frame length (see the module doc).

    Without an audio stream: VideoProblem when `need_audio`, else audio None and all frames. All
    frames are held in memory: for long videos use `face_clip`.
    """
    video = _Video(path, need_audio=need_audio)
    frames, previous = [], None
    for frame in video.frames():
        frames.append(frames[-1] if frame is previous else _rgb(frame))
        previous = frame
    n = video.shared_frames(len(frames))
    return Decoded(video.aligned_audio(n), np.stack(frames[:n]), video.source_fps)


# ----------------------------------------------------------------------------- faces

_per_thread = threading.local()


def _cascade() -> cv2.CascadeClassifier:
    """The face cascade of this thread (one instance is not safe to share between threads)."""
    if (cascade := getattr(_per_thread, 'cascade', None)) is None:
        cascade = cv2.CascadeClassifier(str(pathlib.Path(cv2.data.haarcascades, CASCADE)))
        if cascade.empty():
            raise RuntimeError(f'cannot load the OpenCV cascade {CASCADE} from {cv2.data.haarcascades}')
        _per_thread.cascade = cascade
    return cascade


def detect_faces(frame: av.VideoFrame, min_neighbors: int = MIN_NEIGHBORS,
                 near: np.ndarray | None = None) -> np.ndarray:
    """Faces in `frame` (turned upright) as float [n, 4] x, y, w, h in source pixels.

    `near` (centre x, centre y, size of the face tracked so far): search the square of twice its
    size around it for faces of 0.7-1.4 times its size first (~7x cheaper), the whole frame when
    that finds none.
    """
    scale = min(1.0, DETECT_SIDE / min(frame.width, frame.height))
    gray = _scaled(frame, scale, 'gray')
    options = dict(scaleFactor=SCALE_FACTOR, minNeighbors=min_neighbors)
    if near is not None:
        cx, cy, size = near * scale
        x0, y0 = max(0, round(cx - size)), max(0, round(cy - size))
        faces = _cascade().detectMultiScale(
            gray[y0:round(cy + size), x0:round(cx + size)], **options,
            minSize=(max(MIN_FACE, int(0.7 * size)),) * 2, maxSize=(int(1.4 * size) + 1,) * 2)
        if len(faces):
            return (np.asarray(faces, np.float64) + [x0, y0, 0, 0]) / scale
    faces = _cascade().detectMultiScale(gray, **options, minSize=(MIN_FACE, MIN_FACE))
    return np.asarray(faces, np.float64).reshape(-1, 4) / scale


def pick_face(faces: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
    """Of `faces` (float [n, 4] x, y, w, h), the largest (without `previous`) or the one nearest to
    `previous`, as float [3] centre x, centre y, size; None when there is none."""
    if not len(faces):
        return None
    centres, sizes = faces[:, :2] + faces[:, 2:] / 2, np.sqrt(faces[:, 2] * faces[:, 3])
    if previous is None:
        i = int(np.argmax(sizes))
    else:
        i = int(np.argmin(np.hypot(*(centres - previous[:2]).T)))
    return np.array([*centres[i], sizes[i]])


def track_faces(picks: list[np.ndarray | None], num_frames: int, detect_every: int,
                smooth: int = SMOOTH_FRAMES) -> tuple[np.ndarray | None, float]:
    """Per-frame face squares from the faces picked on frames 0, detect_every, 2·detect_every, ...

    `picks[j]`: float [3] centre x, centre y, size on frame j·detect_every, None where no face was
    found. Returns (float [num_frames, 3] centre x, centre y, size in source pixels, interpolated
    and smoothed (see the module doc), or None when no face was found; the share of Nones).
    """
    found = [(j * detect_every, pick) for j, pick in enumerate(picks) if pick is not None]
    no_face = 1 - len(found) / len(picks) if picks else 1.0
    if not found:
        return None, no_face
    at, values = np.array([f for f, _ in found]), np.stack([pick for _, pick in found])
    frames = np.arange(num_frames)
    track = np.stack([np.interp(frames, at, values[:, d]) for d in range(3)], axis=1)
    r = smooth // 2
    padded = np.pad(track, ((r, r), (0, 0)), mode='edge')
    window = np.ones(2 * r + 1) / (2 * r + 1)
    return np.stack([np.convolve(padded[:, d], window, mode='valid') for d in range(3)], axis=1), no_face


def crop_face(rgb: np.ndarray, cx: float, cy: float, size: float,
              margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The square of side (1 + 2·margin)·size around (cx, cy) of uint8 rgb [H, W, 3], black where it
    leaves the frame, resized to uint8 [96, 96, 3]; and the square as fractions [4] x0, y0, x1, y1."""
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise VideoProblem(f'zero-sized frames ({w}x{h})')
    side = max(1, round(size * (1 + 2 * margin)))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if (ix0, iy0, ix1, iy1) == (x0, y0, x0 + side, y0 + side):
        square = rgb[y0:y0 + side, x0:x0 + side]
    else:
        square = np.zeros((side, side, 3), np.uint8)
        if ix1 > ix0 and iy1 > iy0:
            square[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = rgb[iy0:iy1, ix0:ix1]
    crop = cv2.resize(square, (FACE_SIZE, FACE_SIZE),
                      interpolation=cv2.INTER_AREA if side >= FACE_SIZE else cv2.INTER_LINEAR)
    return crop, np.array([x0 / w, y0 / h, (x0 + side) / w, (y0 + side) / h], np.float32)


def face_clip(
    path: str | os.PathLike, *, need_audio: bool = True, audio: np.ndarray | None = None,
    detect_every: int = 5, max_no_face_fraction: float = 1.0, min_seconds: float = 0.0,
    min_neighbors: int = MIN_NEIGHBORS, margin: float = MARGIN,
) -> FaceClip:
    """Audio and face crops of a video file at 25 fps, in bounded memory (see the module doc).

    `audio`: float32 [N] at 16 kHz to use instead of the file's (e.g. a separate WAV), starting at
    the first video frame. Raises VideoProblem for an unreadable, truncated or empty file, a missing
    video stream, a missing audio stream when `need_audio`, less than `min_seconds` of audio and
    video together, and no face on more than `max_no_face_fraction` of the sampled frames.
    """
    if detect_every < 1:
        raise ValueError(f'detect_every must be >= 1, got {detect_every}')
    video = _Video(path, need_audio=need_audio, audio=audio)
    # Pass 1: detect faces, keep the decoded frames while they fit in KEEP_BYTES.
    picks, pick, kept, kept_bytes, first, previous, total = [], None, [], 0, None, None, 0
    for total, frame in enumerate(video.frames(), start=1):
        if first is None:
            first = frame
        if (total - 1) % detect_every == 0:
            picks.append(pick_face(detect_faces(frame, min_neighbors, pick), pick))
            pick = pick if picks[-1] is None else picks[-1]
        if kept is not None:
            if frame is not previous:
                kept_bytes += sum(plane.buffer_size for plane in frame.planes)
            if kept_bytes > KEEP_BYTES:
                kept = None
            else:
                kept.append(frame)
        previous = frame
    n = video.shared_frames(total, min_seconds)
    track, no_face = track_faces(picks, total, detect_every)
    if no_face > max_no_face_fraction:
        raise VideoProblem(f'no face found in {no_face:.0%} of the sampled frames '
                           f'(more than {max_no_face_fraction:.0%})')
    width, height = _upright_size(first)
    if track is None:  # no face anywhere (allowed): the centred square of the shorter side
        track = np.tile([width / 2, height / 2, min(width, height) / (1 + 2 * margin)], (total, 1))
    # Pass 2: crop. Each frame is converted to RGB at the scale where the smallest crop still spans
    # >= 96 px: cheaper than converting it whole, and the crops are resized to 96 all the same.
    scale = min(1.0, FACE_SIZE / (track[:n, 2].min() * (1 + 2 * margin)))
    crops, boxes, previous, rgb = [], [], None, None
    for i, frame in enumerate(itertools.islice(kept if kept is not None else video.frames(), n)):
        if frame is not previous:
            rgb, previous = _rgb(frame, scale), frame
        sx, sy = rgb.shape[1] / width, rgb.shape[0] / height
        cx, cy, size = track[i]
        crop, box = crop_face(rgb, cx * sx, cy * sy, size * sx, margin)
        crops.append(crop)
        boxes.append(box)
    return FaceClip(video.aligned_audio(n), np.stack(crops), np.stack(boxes), no_face)
