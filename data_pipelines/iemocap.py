"""TFDS builder for IEMOCAP (Busso et al., Language Resources and Evaluation 2008), from the
corpus as distributed (IEMOCAP_full_release):

  SOURCE/Session<N>/dialog/EmoEvaluation/<dialog>.txt   per utterance: [start - end] <utt> <emo> [V, A, D]
  SOURCE/Session<N>/dialog/transcriptions/<dialog>.txt  <utt> [start-end]: <text>
  SOURCE/Session<N>/sentences/wav/<dialog>/<utt>.wav

  * Categorical label: the evaluators' consensus code, named: neu neutral, hap happy, sad sad,
    ang angry, exc excited, fru frustrated, fea fearful, sur surprised, dis disgust, oth other;
    xxx (no majority) → 'unlabeled'. `classes='four'` keeps the usual four-class setting
    (neutral, happy with excited merged into it, sad, angry) and skips the rest with the reason.
  * Dimensional labels from the bracket [valence, activation, dominance] (1-5 as given):
    activation → arousal.
  * Speaker: session and the speaker's gender from the utterance id (Ses01F_impro01_M002 → Ses01_M):
    ten speakers, two per session.
  * Splits by session, speaker-independent: Session 1-3 train, 4 validation, 5 test. The sessions
    are the corpus's natural folds: `avpretrain kfold --by session --loso` is leave-one-session-out
    (a session's two speakers stay together).
  * Skipped with a reason: an utterance rated but without its WAV ('missing'), a WAV without a
    rating, rating lines that do not parse.

    python -m data_pipelines.iemocap SOURCE --out DATA_DIR
"""
from __future__ import annotations

import pathlib
import re

from data_pipelines import audio_folder, common, emotion

CODES = {'neu': 'neutral', 'hap': 'happy', 'sad': 'sad', 'ang': 'angry', 'exc': 'excited', 'fru': 'frustrated',
         'fea': 'fearful', 'sur': 'surprised', 'dis': 'disgust', 'oth': 'other', 'xxx': emotion.UNLABELED}
FOUR = {'neutral': 'neutral', 'happy': 'happy', 'excited': 'happy', 'sad': 'sad', 'angry': 'angry'}
SPLIT_SESSIONS = {4: 'validation', 5: 'test'}  # 1-3: train
RATING = re.compile(r'^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[\s*([^\]]*)\]\s*$')
TRANSCRIPT = re.compile(r'^(\S+)\s+\[[^\]]*\]:\s*(.*)$')
UTTERANCE = re.compile(r'Ses0?(\d)[MF]_\w+_([MF])\w*')
SCALE = (1.0, 5.0)


def _sessions(source: pathlib.Path) -> list[pathlib.Path]:
    sessions = sorted(p for p in source.glob('Session*') if p.is_dir())
    if not sessions:
        raise ValueError(f'no IEMOCAP sessions in {source}: expected Session1..Session5/')
    return sessions


def read_ratings(path: pathlib.Path, skipped: list) -> dict[str, tuple[str, tuple[float, float, float]]]:
    """utterance -> (label, (arousal, valence, dominance)) from one EmoEvaluation file."""
    out = {}
    for n, line in enumerate(path.read_text(encoding='utf-8', errors='replace').splitlines(), 1):
        if not line.startswith('['):
            continue  # the evaluators' own lines (C-E1:, A-E2:, ...) and blanks
        m = RATING.match(line)
        where = f'{path}, line {n}'
        if not m:
            skipped.append((where, 'rating line does not parse: expected [start - end] <utt> <emotion> [V, A, D]'))
            continue
        _, _, utt, code, vad = m.groups()
        if code not in CODES:
            skipped.append((where, f'{utt}: unknown emotion code {code!r} ({" ".join(CODES)})'))
            continue
        try:
            values = [emotion.rating(v.strip(), f'{utt}: rating', *SCALE) for v in vad.split(',')]
            if len(values) != 3:
                raise ValueError(f'{utt}: {len(values)} ratings, expected [valence, activation, dominance]')
        except ValueError as e:
            skipped.append((where, str(e)))
            continue
        valence, activation, dominance = values
        out[utt] = (CODES[code], (activation, valence, dominance))
    return out


def read_transcripts(path: pathlib.Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {m.group(1): m.group(2).strip() for line in path.read_text(encoding='utf-8', errors='replace').splitlines()
            if (m := TRANSCRIPT.match(line))}


def list_iemocap(source: pathlib.Path, classes: str = 'all') -> tuple[list[audio_folder.Entry], list[tuple[str, str]]]:
    if classes not in ('all', 'four'):
        raise ValueError(f"iemocap classes={classes!r}: choose 'all' or 'four'")
    entries, skipped = [], []
    for session in _sessions(source):
        wavs = audio_folder.audio_index(session / 'sentences' / 'wav') if (session / 'sentences' / 'wav').is_dir() else {}
        rated = set()
        for evaluation in sorted((session / 'dialog' / 'EmoEvaluation').glob('*.txt')):
            ratings = read_ratings(evaluation, skipped)
            transcripts = read_transcripts(session / 'dialog' / 'transcriptions' / evaluation.name)
            for utt, (label, dims) in ratings.items():
                rated.add(utt)
                wav = wavs.get(utt, session / 'sentences' / 'wav' / evaluation.stem / f'{utt}.wav')
                m = UTTERANCE.fullmatch(utt)
                if not m:
                    skipped.append((str(wav), f'utterance id {utt!r} does not parse (Ses0N[MF]_<dialog>_[MF]NNN)'))
                    continue
                if classes == 'four' and label not in FOUR:
                    skipped.append((str(wav), f'{label}: not one of the four classes (classes=four)'))
                    continue
                number = int(m.group(1))
                entries.append(audio_folder.Entry(
                    utt, wav, FOUR[label] if classes == 'four' else label, f'Ses{number:02d}_{m.group(2)}',
                    split=SPLIT_SESSIONS.get(number, 'train'), dims=dims, transcript=transcripts.get(utt, ''),
                    listed_at=str(evaluation)))
        skipped += [(str(path), 'no rating in dialog/EmoEvaluation') for utt, path in sorted(wavs.items())
                    if utt not in rated]
    if not entries and not skipped:
        raise ValueError(f'no rated IEMOCAP utterances in {source}: expected Session<N>/dialog/EmoEvaluation/*.txt')
    return entries, skipped


class Iemocap(emotion.EmotionCorpus, skip_registration=True):
    """IEMOCAP (see the module docstring)."""

    CORPUS = 'iemocap'
    DESCRIPTION = ('IEMOCAP: dyadic acted and improvised speech, 5 sessions x 2 speakers, categorical '
                   'consensus labels and valence/activation/dominance (1-5).')
    HOMEPAGE = 'https://sail.usc.edu/iemocap/'
    CITATION = """@article{busso2008iemocap,
  title={IEMOCAP: Interactive emotional dyadic motion capture database},
  author={Busso, Carlos and Bulut, Murtaza and Lee, Chi-Chun and Kazemzadeh, Abe and Mower, Emily and
          Kim, Samuel and Chang, Jeannette N. and Lee, Sungbok and Narayanan, Shrikanth S.},
  journal={Language Resources and Evaluation}, volume={42}, number={4}, pages={335--359}, year={2008}}"""

    def __init__(self, *, classes: str = 'all', **kwargs):
        self.classes = classes
        super().__init__(**kwargs)

    @property
    def LABELS(self):  # noqa: N802 (the class attribute of the other corpora)
        return ('neutral', 'happy', 'sad', 'angry') if self.classes == 'four' else tuple(
            c for c in CODES.values() if c != emotion.UNLABELED)

    def list_entries(self, source):
        return list_iemocap(source, self.classes)

    def extra_metadata(self) -> dict:
        return {'classes': self.classes, 'split_sessions': 'train 1-3, validation 4, test 5'}


def build(source: str, out: str, *, sample_rate: int = 16000, min_seconds: float = 0.5,
          num_workers: int | None = None, allow_outside_source: bool = False, classes: str = 'all',
          beam_options: str | None = None) -> common.BuildReport:
    """Builds IEMOCAP from `source` into DATA_DIR `out`; see the module doc."""
    return common.prepare_dataset(Iemocap, out, source=source, sample_rate=sample_rate, min_seconds=min_seconds,
                                  num_workers=num_workers, allow_outside_source=allow_outside_source, classes=classes,
                                  beam_options=beam_options)


if __name__ == '__main__':
    audio_folder.corpus_main(build, 'the IEMOCAP_full_release folder (Session1..Session5)', __doc__)
