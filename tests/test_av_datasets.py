"""Audiovisual builders: decoding at 25 fps, face tracking and crops, audio/video alignment, skip
reasons, av_folder / RAVDESS / CREMA-D on small replicas the tests write, and the command line."""
import json
import os
import pathlib
import re
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from av_helpers import face_centre, speech_like, write_video
from avpretrain import cli
from avpretrain.data import source
from data_pipelines import av_folder, common, crema_d, ravdess, video
from helpers import read_all

SR, FPS, SPF = common.AV_SAMPLE_RATE, common.VIDEO_FPS, common.SAMPLES_PER_FRAME


def redness(frames: np.ndarray) -> np.ndarray:
    """Per frame, mean red minus mean blue: > 0 for the face's first skin, < 0 after the swap."""
    rgb = frames.astype(np.float64)
    return rgb[..., 0].mean(axis=(1, 2)) - rgb[..., 2].mean(axis=(1, 2))


def corrupt(path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    return path


# ----------------------------------------------------------------------------- decoding

def test_at_fps_picks_the_last_frame_at_or_before_each_tick():
    def ticks(times, start=Fraction(0), last_interval=None):
        return list(video.at_fps([(Fraction(t), i) for i, t in enumerate(times)], start,
                                 last_interval=last_interval))

    thirty = [Fraction(i, 30) for i in range(30)]  # 1 s: 25 ticks, frames dropped
    assert ticks(thirty) == [int(k * 30 / 25) for k in range(25)]
    fifteen = [Fraction(i, 15) for i in range(15)]  # 1 s: 25 ticks, frames repeated
    assert ticks(fifteen) == [int(k * 15 / 25) for k in range(25)]
    ntsc = [Fraction(1001 * i, 30000) for i in range(60)]  # 29.97 fps: the 1 ms tolerance
    assert ticks(ntsc)[20] == 24 and len(ticks(ntsc)) == 51  # 2.002 s: a tick at 2.000 s too
    assert ticks([0, 0.1, 0.13, 0.5]) == [0] * 3 + [1] + [2] * 9 + [3] * 9  # variable rate; 3 lasts 0.37 s
    assert ticks([0, 0.5, 1.0], start=Fraction(1, 2)) == [1] * 13 + [2] * 12  # from a later start
    assert ticks([0]) == [0] and ticks([0], last_interval=Fraction(1, 5)) == [0] * 5


@pytest.mark.parametrize('fps, suffix, sample_rate, channels', [
    (30, '.mp4', 44100, 2), (15, '.mkv', 48000, 1), (50, '.mp4', 22050, 1), (30000 / 1001, '.flv', 44100, 1),
])
def test_frame_rate_and_alignment(tmp_path, fps, suffix, sample_rate, channels):
    """The face's skin changes colour at 0.8 s, a click sounds at 0.82 s: both land in frame 20."""
    path = write_video(tmp_path / f'v{suffix}', seconds=1.6, fps=fps, size=(128, 96), sample_rate=sample_rate,
                       channels=channels, swap_skin_at=0.8, click_at=0.82,
                       vcodec='flv' if suffix == '.flv' else 'libx264')
    decoded = video.decode_av(path)
    assert decoded.frames.shape == (40, 96, 128, 3) and decoded.frames.dtype == np.uint8
    assert decoded.audio.shape == (40 * SPF,) and decoded.audio.dtype == np.float32
    assert decoded.source_fps == pytest.approx(fps, rel=1e-3)
    assert int(np.argmax(redness(decoded.frames) < 0)) == 20
    assert redness(decoded.frames)[:20].min() > 0 and redness(decoded.frames)[20:].max() < 0
    click = int(np.argmax(np.abs(decoded.audio) > 0.45))
    assert click // SPF == 20 and abs(click - round(0.82 * SR)) <= 6
    clip = video.face_clip(path)
    assert clip.frames.shape == (40, 96, 96, 3) and clip.boxes.shape == (40, 4)
    np.testing.assert_array_equal(clip.audio, decoded.audio)
    assert int(np.argmax(redness(clip.frames) < 0)) == 20


def test_face_crops_follow_the_drawn_face(tmp_path, monkeypatch):
    width, height = 160, 120
    path = write_video(tmp_path / 'face.mp4', seconds=2.0, fps=25, size=(width, height))
    every = video.face_clip(path, detect_every=1)  # the cascade on every frame: the hit rate
    assert every.no_face_fraction == 0
    clip = video.face_clip(path)
    assert clip.no_face_fraction == 0 and clip.frames.shape == (50, 96, 96, 3)
    x0, y0, x1, y1 = clip.boxes.T
    assert np.all(clip.boxes >= 0) and np.all(clip.boxes <= 1)  # this face's crop stays inside
    np.testing.assert_allclose(x1 - x0, (y1 - y0) * height / width, rtol=0.02)  # square in pixels
    centres = np.array([face_centre(i, FPS, width, height) for i in range(50)])
    assert np.abs((x0 + x1) / 2 * width - centres[:, 0]).max() < 4  # px, the face sways by +-6
    assert np.abs((y0 + y1) / 2 * height - centres[:, 1]).max() < 4
    drawn_height = 2 * 1.3 * 0.25 * height  # the head ellipse, as av_helpers draws it
    assert 0.6 < (y1 - y0).mean() * height / drawn_height < 1.2
    # A video longer than KEEP_BYTES is decoded twice instead of held: the same crops.
    monkeypatch.setattr(video, 'KEEP_BYTES', 0)
    again = video.face_clip(path)
    np.testing.assert_array_equal(again.frames, clip.frames)
    np.testing.assert_array_equal(again.boxes, clip.boxes)


def test_display_rotation_is_undone_before_detection(tmp_path):
    path = write_video(tmp_path / 'portrait.mp4', seconds=0.8, size=(160, 120), rotation=90)
    assert video.decode_av(path).frames.shape[1:] == (120, 160, 3)
    clip = video.face_clip(path)
    assert clip.no_face_fraction == 0
    np.testing.assert_allclose((clip.boxes[:, 0] + clip.boxes[:, 2]) / 2, 0.5, atol=0.06)


def test_tracking_interpolates_holds_and_smooths():
    a, b = np.array([10.0, 20.0, 30.0]), np.array([20.0, 20.0, 40.0])
    track, no_face = video.track_faces([None, a, None, b, None], 25, detect_every=5, smooth=1)
    assert no_face == 0.6
    np.testing.assert_allclose(track[:6], [a] * 6)  # held before the first detection
    np.testing.assert_allclose(track[10], (a + b) / 2)  # interpolated across the miss
    np.testing.assert_allclose(track[15:], [b] * 10)  # held after the last
    raw, _ = video.track_faces([a, b], 10, detect_every=5, smooth=1)
    smoothed, _ = video.track_faces([a, b], 10, detect_every=5)
    np.testing.assert_allclose(raw[:6, 0], np.linspace(10, 20, 6))
    assert smoothed[0, 0] > raw[0, 0] and smoothed[5, 0] < raw[5, 0]  # corners rounded off
    assert np.all(np.diff(smoothed[:, 0]) >= 0) and smoothed[-1, 0] == pytest.approx(raw[-1, 0])
    assert video.track_faces([None, None], 10, 5) == (None, 1.0)
    faces = np.array([[0, 0, 10, 10], [50, 50, 30, 30], [5, 5, 12, 12]], np.float64)
    np.testing.assert_allclose(video.pick_face(faces, None), [65, 65, 30])  # the largest first
    np.testing.assert_allclose(video.pick_face(faces, np.array([8, 8, 10])), [5, 5, 10])  # then the nearest
    assert video.pick_face(np.zeros((0, 4)), a) is None


def test_crops_leaving_the_frame_are_padded_black_and_empty_frames_refused():
    rgb = np.full((60, 80, 3), 200, np.uint8)
    crop, box = video.crop_face(rgb, cx=5, cy=30, size=40, margin=0.0)
    np.testing.assert_allclose(box, [-15 / 80, 10 / 60, 25 / 80, 50 / 60])
    assert crop.shape == (96, 96, 3) and crop[:, :30].max() == 0 and crop[:, 40:].min() == 200
    with pytest.raises(video.VideoProblem, match=r'zero-sized frames \(0x0\)'):
        video.crop_face(np.zeros((0, 0, 3), np.uint8), 0, 0, 10)


@pytest.mark.parametrize('make, reason', [
    (lambda p: corrupt(p / 'x.mp4'), 'unreadable container: Invalid data found when processing input'),
    (lambda p: write_video(p / 'x.mp4', video=False), 'no video stream'),
    (lambda p: write_video(p / 'x.mp4', audio=False), 'no audio stream'),
])
def test_decode_problems(tmp_path, make, reason):
    with pytest.raises(video.VideoProblem, match=f'^{reason}$'):
        video.decode_av(make(tmp_path))


def test_truncated_and_video_only_files(tmp_path):
    for suffix, options, reason in (
        ('.mp4', {'movflags': 'faststart'}, r'container says 2.00 s of audio, decoding fails after 0.\d\d s '
                                            r'\(Invalid data found when processing input\)'),
        ('.mkv', {}, r'container says 2.06 s, only 0.\d\d s decode'),  # no durations per stream
    ):
        whole = write_video(tmp_path / f'whole{suffix}', seconds=2.0, options=options)
        cut = tmp_path / f'cut{suffix}'
        cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
        with pytest.raises(video.VideoProblem, match=f'^truncated: {reason}$'):
            video.face_clip(cut)
    silent_film = write_video(tmp_path / 'silent.mp4', audio=False)
    clip = video.face_clip(silent_film, need_audio=False)
    assert clip.audio is None and clip.frames.shape == (30, 96, 96, 3)


# ----------------------------------------------------------------------------- av_folder

BAD = {  # file -> skip reason (as the report writes it)
    'sad/corrupt.mp4': 'unreadable container: Invalid data found when processing input',
    'sad/truncated.mp4': r'truncated: container says 2.00 s of audio, decoding fails after 0.\d\d s \(.*\)',
    'sad/music.mp4': 'no video stream',
    'sad/mute.mp4': 'no audio stream',
    'sad/empty_room.mkv': r'no face found in 100% of the sampled frames \(more than 50%\)',
    'sad/blink.mp4': r'too short: 0.32 s < 0.5 s',
}


@pytest.fixture(scope='module')
def av_replica(tmp_path_factory):
    """A class-folder source of 6 good videos (mixed containers, rates, audio formats, one with a
    file name that is not UTF-8) and one of each kind of bad file, built once."""
    src = tmp_path_factory.mktemp('av_src')
    for i, (fps, suffix, sample_rate) in enumerate([(30, '.mp4', 44100), (15, '.mkv', 16000), (25, '.mp4', 48000)]):
        write_video(src / 'happy' / f'h{i}{suffix}', fps=fps, sample_rate=sample_rate, seed=i)
        write_video(src / 'sad' / f's{i}{suffix}', fps=fps, sample_rate=sample_rate, seed=10 + i)
    os.rename(src / 'happy' / 'h2.mp4', os.path.join(os.fsencode(src / 'happy'), b'caf\xe9.mp4'))
    corrupt(src / 'sad' / 'corrupt.mp4')
    whole = write_video(src / 'sad' / 'whole.mp4', seconds=2.0, options={'movflags': 'faststart'})
    (src / 'sad' / 'truncated.mp4').write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    whole.unlink()
    write_video(src / 'sad' / 'music.mp4', video=False)
    write_video(src / 'sad' / 'mute.mp4', audio=False)
    write_video(src / 'sad' / 'empty_room.mkv', face=False)
    write_video(src / 'sad' / 'blink.mp4', seconds=0.32)
    out = tmp_path_factory.mktemp('av_out')
    report = av_folder.build(str(src), str(out), num_workers=2)
    return src, out, report


def test_av_folder_builds_aligned_examples(av_replica):
    src, out, report = av_replica
    meta = source.dataset_meta(out)
    assert meta.sample_rate == SR and meta.label_names == ['happy', 'sad'] and report.num_built == 6
    info = source.open_builder(out).info.metadata
    assert (info['fps'], info['frame_size'], info['modalities']) == (25, 96, 'audio,video')
    assert (info['max_no_face_fraction'], info['min_seconds'], info['require_audio']) == (0.5, 0.5, True)
    examples = read_all(out)
    assert sorted(examples) == ['happy/caf\\xe9.mp4', 'happy/h0.mp4', 'happy/h1.mkv',
                                'sad/s0.mp4', 'sad/s1.mkv', 'sad/s2.mp4']
    assert {s: sum(e['split'] == s for e in examples.values()) for s in common.SPLITS} == {
        'train': 2, 'validation': 2, 'test': 2}
    for ex in examples.values():
        assert ex['audio'].dtype == np.int16 and len(ex['audio']) == SPF * len(ex['video']) == 30 * SPF
        assert ex['face_boxes'].shape == (30, 4)
        face = common.decode_frame(ex['video'][0])
        assert face.shape == (96, 96, 3) and redness(face[None])[0] > 0  # skin in the crop
    # The audio survives intact: the speech-like tone of the source (at 16 kHz it is the same signal).
    expected = speech_like(1.2, SR, seed=11)[:30 * SPF]
    stored = examples['sad/s1.mkv']['audio'].astype(np.float32) / 32767
    assert np.corrcoef(expected, stored)[0, 1] > 0.95


def test_av_folder_skips_each_bad_file_with_its_reason(av_replica):
    src, out, report = av_replica
    reasons = {pathlib.Path(p).relative_to(src).as_posix(): r for p, r in report.skipped}
    assert sorted(reasons) == sorted(BAD)
    for name, pattern in BAD.items():
        assert re.fullmatch(pattern, reasons[name]), (name, reasons[name])
    on_disk = json.loads((out / common.REPORT_NAME).read_text())
    assert on_disk['num_built'] == 6 and len(on_disk['skipped']) == len(BAD)
    assert report.summary_lines()[-1] == f'built 6 examples, skipped {len(BAD)}'


def test_av_builders_refuse_other_sample_rates(tmp_path):
    write_video(tmp_path / 'src' / 'a' / 'x.mp4', seconds=0.6)
    with pytest.raises(ValueError, match='audiovisual datasets are 16000 Hz'):
        av_folder.build(str(tmp_path / 'src'), str(tmp_path / 'out'), sample_rate=22050)
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- command line

def test_cli_builds_from_a_manifest_and_keeps_video_only_files_when_asked(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'out'
    write_video(src / 'talk.mp4', seconds=0.8)
    write_video(src / 'mute.mp4', seconds=0.8, audio=False)
    (src / 'manifest.csv').write_text('path,label,speaker,split\ntalk.mp4,calm,ann,train\n'
                                      'mute.mp4,calm,bob,test\n')
    args = ['data', 'build', 'av_folder', '--source', str(src), '--out', str(out)]
    assert cli.main([*args, '--audio-optional']) == 0
    assert capsys.readouterr().out.splitlines()[-1] == 'built 2 examples, skipped 0'
    examples = read_all(out)
    assert len(examples['talk.mp4']['audio']) == 20 * SPF and examples['talk.mp4']['speaker'] == b'ann'
    assert examples['mute.mp4']['audio'].shape == (0,) and len(examples['mute.mp4']['video']) == 20
    assert examples['mute.mp4']['split'] == 'test'
    assert source.open_builder(out).info.metadata['require_audio'] is False


def test_cli_exits_2_when_every_video_is_skipped(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'out'
    corrupt(src / 'a' / 'broken.mp4')
    write_video(src / 'a' / 'empty_room.mp4', face=False, seconds=0.6)
    assert cli.main(['data', 'build', 'av_folder', '--source', str(src), '--out', str(out),
                     '--max-no-face-fraction', '0.9']) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f'skipped {src / "a" / "broken.mp4"}: unreadable container: Invalid data found when processing input',
        f'skipped {src / "a" / "empty_room.mp4"}: no face found in 100% of the sampled frames (more than 90%)']
    assert 'all 2 files skipped' in captured.err
    assert os.listdir(out) == [common.REPORT_NAME]


# ----------------------------------------------------------------------------- RAVDESS

def test_ravdess_names_parse_with_0_based_emotions():
    rec = ravdess.parse_name('01-02-08-02-01-02-13')
    assert rec == ravdess.Recording('audio-video', 'song', 'surprised', 'strong',
                                    'Kids are talking by the door', 2, 13)
    assert ravdess.EMOTIONS.index(ravdess.parse_name('03-01-01-01-02-01-24').emotion) == 0
    assert [ravdess.parse_name(f'01-01-01-01-01-01-{a:02d}').split for a in (1, 20, 21, 22, 23, 24)] == [
        'train', 'train', 'validation', 'validation', 'test', 'test']
    for stem, error in (('01-01-09-01-01-01-01', 'unknown emotion'), ('04-01-01-01-01-01-01', 'unknown modality'),
                        ('01-01-01-01-01-01-25', 'unknown actor'), ('01-01-01-01-01', 'not RAVDESS')):
        with pytest.raises(ValueError, match=error):
            ravdess.parse_name(stem)


@pytest.fixture(scope='module')
def ravdess_replica(tmp_path_factory):
    """Actors 01, 02 (train), 21 (validation), 23 (test): audio-video files, one video-only, one
    corrupt, one without audio, one misnamed; and the audio-only WAVs."""
    root = tmp_path_factory.mktemp('ravdess')
    good = ['01-01-01-01-01-01-01', '01-01-05-02-02-01-01', '01-02-03-01-01-02-02', '01-01-08-01-01-01-21',
            '01-01-04-01-02-01-23']
    for i, stem in enumerate(good):
        actor = root / f'Actor_{stem[-2:]}'
        write_video(root / f'Video_Speech_{actor.name}' / actor.name / f'{stem}.mp4', seconds=0.8, seed=i)
        actor.mkdir(exist_ok=True)
        sf.write(actor / f'03{stem[2:]}.wav', speech_like(0.8, 48000, i), 48000)
    write_video(root / 'Actor_01' / '02-01-01-01-01-01-01.mp4', seconds=0.8, audio=False)
    corrupt(root / 'Actor_02' / '01-01-06-01-01-01-02.mp4')
    write_video(root / 'Actor_21' / '01-01-07-01-01-01-21.mp4', seconds=0.8, audio=False)
    write_video(root / 'Actor_21' / 'take2.mp4', seconds=0.8)
    return root


def test_ravdess_builds_speaker_independent_splits(ravdess_replica, tmp_path):
    root = ravdess_replica
    report = ravdess.build(str(root), str(tmp_path / 'out'))
    reasons = {pathlib.Path(p).name: r for p, r in report.skipped}
    assert reasons == {
        '02-01-01-01-01-01-01.mp4': 'video-only (no audio): not built here (modalities audio-video)',
        '01-01-06-01-01-01-02.mp4': 'unreadable container: Invalid data found when processing input',
        '01-01-07-01-01-01-21.mp4': 'no audio stream',
        'take2.mp4': 'file name is not RAVDESS MM-VV-EE-II-SS-RR-AA',
    }
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.label_names == list(ravdess.EMOTIONS) and meta.num_examples == {
        'train': 3, 'validation': 1, 'test': 1}
    examples = read_all(tmp_path / 'out')
    assert [(ex['label'], ex['speaker'], ex['split']) for _, ex in sorted(examples.items())] == [
        (0, b'Actor_01', 'train'), (3, b'Actor_23', 'test'), (4, b'Actor_01', 'train'),
        (7, b'Actor_21', 'validation'), (2, b'Actor_02', 'train')]
    assert examples['01-01-05-02-02-01-01']['captions'] == ['Dogs are sitting by the door']
    assert all(len(ex['audio']) == SPF * len(ex['video']) == 20 * SPF for ex in examples.values())
    info = source.open_builder(tmp_path / 'out').info.metadata
    assert info['split_actors'] == {'validation': [21, 22], 'test': [23, 24]} and info['fps'] == 25


def test_ravdess_audio_only_variant(ravdess_replica, tmp_path):
    assert cli.main(['data', 'build', 'ravdess_audio', '--source', str(ravdess_replica),
                     '--out', str(tmp_path / 'out')]) == 0
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.label_names == list(ravdess.EMOTIONS)
    assert meta.num_examples == {'train': 3, 'validation': 1, 'test': 1}
    examples = read_all(tmp_path / 'out')
    assert examples['03-01-08-01-01-01-21']['label'] == 7 and 'video' not in examples['03-01-08-01-01-01-21']
    assert len(examples['03-01-01-01-01-01-01']['audio']) == round(0.8 * SR)
    assert source.open_builder(tmp_path / 'out').info.metadata['modalities'] == 'audio'
    # the emotion contract: corpus, the statement as transcript, no ratings
    calm = examples['03-01-01-01-01-01-01']
    assert calm['corpus'].decode() == 'ravdess' and calm['transcript'].decode() == calm['captions'][0]
    assert np.isnan(float(calm['arousal'])) and np.isnan(float(calm['dominance']))


# ----------------------------------------------------------------------------- CREMA-D

def test_crema_d_takes_the_wav_audio_and_splits_by_actor(tmp_path):
    root = tmp_path / 'crema'
    for stem, wav in (('1001_DFA_ANG_XX', True), ('1002_IEO_HAP_HI', True), ('1075_TIE_NEU_XX', False),
                      ('1085_WSI_SAD_LO', True)):
        write_video(root / 'VideoFlash' / f'{stem}.flv', seconds=0.8, vcodec='flv', sample_rate=22050)
        if wav:
            (root / 'AudioWAV').mkdir(parents=True, exist_ok=True)
            t = np.arange(int(0.8 * SR)) / SR
            sf.write(root / 'AudioWAV' / f'{stem}.wav', (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), SR)
    write_video(root / 'VideoFlash' / '1003_IOM_FEA_MD.flv', seconds=0.8, vcodec='flv', audio=False)
    corrupt(root / 'VideoFlash' / '1004_TAI_DIS_LO.flv')
    write_video(root / 'VideoFlash' / '1005_XYZ_DIS_LO.flv', seconds=0.8, vcodec='flv')
    sf.write(root / 'AudioWAV' / '1006_IEO_ANG_HI.wav', np.zeros(SR, np.float32), SR)
    broken_wav = corrupt(root / 'AudioWAV' / '1002_IEO_HAP_HI.wav')
    report = crema_d.build(str(root), str(tmp_path / 'out'))
    [(flv, warning)] = report.warnings
    assert flv == str(root / 'VideoFlash' / '1002_IEO_HAP_HI.flv')
    assert warning.startswith(f'{broken_wav} unreadable (') and warning.endswith('), audio taken from the video')
    reasons = {pathlib.Path(p).name: r for p, r in report.skipped}
    assert reasons == {
        '1003_IOM_FEA_MD.flv': 'no audio stream',
        '1004_TAI_DIS_LO.flv': 'unreadable container: Invalid data found when processing input',
        '1005_XYZ_DIS_LO.flv':
            "file name has an unknown sentence 'XYZ' (IEO TIE IOM IWW TAI MTI IWL ITH DFA ITS TSI WSI)",
        '1006_IEO_ANG_HI.wav': 'no video: VideoFlash/1006_IEO_ANG_HI.flv is missing',
    }
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.label_names == ['angry', 'disgust', 'fearful', 'happy', 'neutral', 'sad']
    assert meta.num_examples == {'train': 2, 'validation': 1, 'test': 1}
    examples = read_all(tmp_path / 'out')
    ex = examples['1001_DFA_ANG_XX']
    assert (ex['label'], ex['speaker'], ex['captions']) == (0, b'1001', ["Don't forget a jacket."])
    assert (examples['1075_TIE_NEU_XX']['split'], examples['1085_WSI_SAD_LO']['split']) == ('validation', 'test')

    def peak_hz(x):
        return np.argmax(np.abs(np.fft.rfft(x.astype(np.float32)))) * SR / len(x)

    assert peak_hz(ex['audio']) == pytest.approx(1000, abs=5)  # the WAV's 1 kHz tone
    for stem in ('1075_TIE_NEU_XX', '1002_IEO_HAP_HI'):  # no WAV, a broken one: the FLV's own voice
        assert peak_hz(examples[stem]['audio']) < 800
    assert all(len(e['audio']) == SPF * len(e['video']) == 20 * SPF for e in examples.values())


def test_crema_d_audio_only_builds_the_emotion_contract(tmp_path, capsys):
    root = tmp_path / 'crema'
    for stem in ('1001_DFA_ANG_XX', '1002_IEO_HAP_HI', '1075_TIE_NEU_XX', '1085_WSI_SAD_LO', '1001_XYZ_ANG_XX'):
        (root / 'AudioWAV').mkdir(parents=True, exist_ok=True)
        sf.write(root / 'AudioWAV' / f'{stem}.wav', speech_like(0.8, 16000), 16000, subtype='PCM_16')
    assert cli.main(['data', 'build', 'crema_d_audio', '--source', str(root), '--out', str(tmp_path / 'out')]) == 0
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.label_names == list(crema_d.EMOTIONS.values())
    assert meta.num_examples == {'train': 2, 'validation': 1, 'test': 1}
    examples = read_all(tmp_path / 'out')
    angry = examples['1001_DFA_ANG_XX']
    assert meta.label_names[angry['label']] == 'angry' and angry['speaker'].decode() == '1001'
    assert angry['transcript'].decode() == "Don't forget a jacket." and angry['corpus'].decode() == 'crema_d'
    assert np.isnan(float(angry['valence']))
    assert "unknown sentence 'XYZ'" in capsys.readouterr().out
