"""A procedural emotional-speech demo corpus: espeak-ng voices, categorical and dimensional labels,
transcripts, in three "corpora" that differ the way real ones do.

A demo, not a benchmark: the labels are the parameters the clips were synthesised from, so they
are exactly as learnable as this file makes them, and espeak-ng's formant voices are far from
human speech. How the labels are in the audio:

  arousal    prosody: speaking rate (110-240 words/min), pitch (espeak 20-62, plus the speaker's
             offset) rise linearly with arousal (1-7);
  dominance  loudness (espeak volume 55-185) and pitch range (10-88) rise with dominance;
  valence    mainly *what is said*: each clip says a positive, neutral or negative sentence
             (valence 6 / 4 / 2 ± 0.3), drawn mostly in line with the emotion; and partly prosody
             (pitch +3 per valence point above 4). The label is 0.65 · the sentence's valence +
             0.35 · the prosody's: from the audio alone valence is only partly recoverable, from the
             transcript much better (what the transcript-fusion recipe is about);
  category   the emotion whose targets (EMOTION_TARGETS: arousal, valence, dominance on 1-7) the
             clip's dimensions are drawn around: 4 + intensity · (target - 4) + N(0, 0.3), intensity
             uniform in [0.35, 1]; so categories overlap, as in acted corpora.

Corpora (`--corpus`), each with its own six speakers, sentences, label set and channel:

  studio  English voices, neutral happy sad angry fearful surprised; clean (noise at 25-35 dB SNR)
  phone   other English voices and sentences, neutral happy sad angry calm; telephone channel:
          band-pass 300-3400 Hz, through 8 kHz and back, noise at 15-25 dB SNR
  room    Spanish and German voices and sentences, neutral happy sad angry fearful; a reverberant
          room (RT60 0.3-0.8 s) and noise at 10-20 dB SNR

Stored as the emotion contract (data_pipelines.emotion) at 16 kHz: label, arousal/valence/dominance
(1-7), speaker (`<corpus>-NN`), corpus (`demo_emotion_<corpus>`), transcript. Splits are speaker-
disjoint: speakers 0-3 train, 4 validation, 5 test; or, with `--split_by clip`, ESD's layout (every
speaker in train / validation / test, 3 : 1 : 1, every emotion in each: the few-shot protocol's). Clip `index` (speaker `index % 6`, emotion
`(index + index // 6) % len(emotions)`) depends only on (corpus, seed, index).

One corpus per DATA_DIR (build each into its own):

    python -m data_pipelines.demo_emotion --out DATA_DIR [--corpus studio] [--num_clips 600 --seed 0]
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from avpretrain import audio as audio_lib
from data_pipelines import common, demo, demo_av, emotion

SR = 16000
DEFAULT_NUM_CLIPS = 600
# (arousal, valence, dominance) on 1-7 that a clip of each emotion is drawn around.
EMOTION_TARGETS = {
    'neutral': (4.0, 4.0, 4.0), 'happy': (5.3, 6.0, 5.0), 'sad': (2.3, 2.0, 2.6), 'angry': (6.3, 1.8, 6.2),
    'fearful': (5.8, 2.2, 2.0), 'surprised': (6.0, 5.0, 4.2), 'calm': (2.2, 5.2, 4.0),
}
SENTENCE_VALENCE = {'positive': 6.0, 'neutral': 4.0, 'negative': 2.0}
SPLIT_OF_SPEAKER = ('train', 'train', 'train', 'train', 'validation', 'test')
# split_by="clip" (ESD's layout: every speaker in every split): a speaker's clips in blocks of one
# clip per emotion, blocks in turn to train, train, train, validation, test.
SPLIT_OF_BLOCK = ('train', 'train', 'train', 'validation', 'test')
SPLIT_BY = ('speaker', 'clip')


@dataclasses.dataclass(frozen=True)
class Corpus:
    voices: tuple[str, ...]  # six espeak-ng voice+variant names, female and male in turn
    emotions: tuple[str, ...]
    sentences: dict  # language (of the voice: `language_of`) -> polarity -> sentences
    channel: str  # 'studio' | 'phone' | 'room'


_EN_A = {
    'positive': ('What a wonderful surprise this is.', 'I love spending time with you.',
                 'We won the whole competition today.', 'Thank you, this made my day.'),
    'neutral': ('The meeting starts at ten tomorrow.', 'Please put the folder on the desk.',
                'The train leaves from platform four.', 'I will call you after lunch.'),
    'negative': ('I can not believe you lost it again.', 'Everything went wrong this morning.',
                 'This is the worst news I have heard.', 'Nobody came to help us at all.'),
}
_EN_B = {
    'positive': ('Your garden looks absolutely beautiful.', 'I am so proud of what you did.',
                 'That was the best dinner in years.', 'It is great to see you again.'),
    'neutral': ('The bus usually comes every twenty minutes.', 'Turn left at the second corner.',
                'The report has eleven pages.', 'We need two more chairs in here.'),
    'negative': ('I am tired of waiting for you.', 'The house was damaged in the storm.',
                 'You broke your promise to me.', 'I failed the test again.'),
}
_ES = {
    'positive': ('Qué día tan maravilloso hace hoy.', 'Me encanta esta canción.', 'Estoy muy feliz contigo.'),
    'neutral': ('El tren sale a las ocho.', 'La mesa está en la cocina.', 'Mañana abre la tienda.'),
    'negative': ('Todo salió muy mal esta semana.', 'Estoy harto de esta situación.', 'Perdimos todo el dinero.'),
}
_DE = {
    'positive': ('Das ist eine wunderbare Nachricht.', 'Ich freue mich sehr auf morgen.', 'Du hast das toll gemacht.'),
    'neutral': ('Der Bus fährt um neun Uhr.', 'Das Buch liegt auf dem Tisch.', 'Die Tür ist im Flur.'),
    'negative': ('Das ist eine schreckliche Nachricht.', 'Ich habe alles verloren.', 'Niemand hat uns geholfen.'),
}
CORPORA = {
    'studio': Corpus(('en-US+f1', 'en+m3', 'en-GB-x-rp+Andrea', 'en-US+m1', 'en-US+steph', 'en+m2'),
                     ('neutral', 'happy', 'sad', 'angry', 'fearful', 'surprised'), {'en': _EN_A}, 'studio'),
    'phone': Corpus(('en-GB-scotland+f4', 'en-029+m7', 'en-GB-x-rp+linda', 'en-US+m6', 'en-US-nyc+f1',
                     'en-GB-x-gbclan+m4'), ('neutral', 'happy', 'sad', 'angry', 'calm'), {'en': _EN_B}, 'phone'),
    'room': Corpus(('es+f1', 'de+m3', 'es-419+linda', 'de+m1', 'es+m6', 'de+f4'),
                   ('neutral', 'happy', 'sad', 'angry', 'fearful'), {'es': _ES, 'de': _DE}, 'room'),
}
SPEAKER_SEED = 20261201  # the speakers' pitch and rate offsets, whatever the build's seed


def language_of(voice: str) -> str:
    return voice.split('+')[0].split('-')[0]


def sentences_for(corpus: Corpus, voice: str, polarity: str) -> tuple[str, ...]:
    """The corpus's sentences of `polarity` in the voice's language."""
    return corpus.sentences[language_of(voice)][polarity]


def speaker_offsets(corpus_name: str, k: int) -> tuple[float, float]:
    """(pitch offset in espeak units, rate factor) of speaker k of a corpus: fixed for all builds."""
    rng = np.random.default_rng([SPEAKER_SEED, list(CORPORA).index(corpus_name), k])
    return float(rng.uniform(-8, 8)), float(rng.uniform(0.9, 1.1))


def clip_speaker_emotion(corpus: Corpus, index: int) -> tuple[int, str]:
    n = len(corpus.voices)
    return index % n, corpus.emotions[(index + index // n) % len(corpus.emotions)]


def split_of(corpus: Corpus, index: int, split_by: str = 'speaker') -> str:
    """The split of clip ``index``: by its speaker (speaker-disjoint splits), or by its place among its
    speaker's clips (``clip``: the j-th clip of a speaker is in block j // #emotions, and each block of
    consecutive clips has every emotion once, so every split has every speaker and emotion)."""
    if split_by == 'speaker':
        return SPLIT_OF_SPEAKER[clip_speaker_emotion(corpus, index)[0]]
    return SPLIT_OF_BLOCK[(index // len(corpus.voices) // len(corpus.emotions)) % len(SPLIT_OF_BLOCK)]


@dataclasses.dataclass
class Clip:
    audio: np.ndarray  # float32 at 16 kHz
    speaker: str
    emotion: str
    dims: tuple[float, float, float]  # arousal, valence, dominance
    text: str
    polarity: str


def _polarity(rng, target_valence: float) -> str:
    if target_valence > 4.5:
        p = (0.75, 0.2, 0.05)
    elif target_valence < 3.5:
        p = (0.05, 0.2, 0.75)
    else:
        p = (0.2, 0.6, 0.2)
    return str(rng.choice(('positive', 'neutral', 'negative'), p=p))


def _channel(rng, x: np.ndarray, channel: str) -> np.ndarray:
    """The corpus's channel and background noise (white, pink or brown) over a float voice."""
    if channel == 'phone':
        f = np.fft.rfftfreq(len(x), 1 / SR)
        band = 1 / np.sqrt((1 + (300 / np.maximum(f, 1.0)) ** 4) * (1 + (f / 3400) ** 8))
        x = np.fft.irfft(np.fft.rfft(x) * band, len(x))
        x = audio_lib.resample(audio_lib.resample(x.astype(np.float32), SR, 8000), 8000, SR).astype(np.float64)
        snr = rng.uniform(15, 25)
    elif channel == 'room':
        rt60 = rng.uniform(0.3, 0.8)
        t = np.arange(int(rt60 * SR)) / SR
        ir = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60) * 0.15
        ir[0] = 1.0
        n = len(x) + len(ir) - 1
        x = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[:len(x) + int(0.2 * SR)]
        snr = rng.uniform(10, 20)
    else:
        snr = rng.uniform(25, 35)
    voice_rms = np.sqrt(np.mean(x[np.abs(x) > 0.01 * np.abs(x).max()] ** 2))
    noise = voice_rms / 10 ** (snr / 20) * demo._noise(rng, len(x), SR, int(rng.integers(0, 3)))
    return x + noise


def generate_clip(corpus_name: str, index: int, seed: int) -> Clip:
    """Clip `index` of a corpus; depends only on (corpus, seed, index)."""
    corpus = CORPORA[corpus_name]
    rng = np.random.default_rng([seed, list(CORPORA).index(corpus_name), index])
    k, emo = clip_speaker_emotion(corpus, index)
    voice = corpus.voices[k]
    pitch_offset, rate_factor = speaker_offsets(corpus_name, k)
    target = EMOTION_TARGETS[emo]
    intensity = rng.uniform(0.35, 1.0)
    a, v_prosody, d = (float(np.clip(4 + intensity * (t - 4) + rng.normal(0, 0.3), 1, 7)) for t in target)
    polarity = _polarity(rng, target[1])
    text = str(rng.choice(sentences_for(corpus, voice, polarity)))
    v_sentence = SENTENCE_VALENCE[polarity] + rng.normal(0, 0.3)
    valence = float(np.clip(0.65 * v_sentence + 0.35 * v_prosody, 1, 7))
    speech = demo_av.speak(
        text, voice, rate=np.clip((110 + 22 * (a - 1)) * rate_factor, 80, 400),
        pitch=np.clip(20 + 7 * (a - 1) + 3 * (v_prosody - 4) + pitch_offset, 0, 99),
        range=np.clip(10 + 13 * (d - 1), 0, 99), volume=np.clip(55 + 22 * (d - 1), 10, 200))
    x = audio_lib.resample(speech.astype(np.float32) / 32768, demo_av.ESPEAK_SR, SR).astype(np.float64)
    active = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    x = x[active[0]:active[-1] + 1]
    pad = rng.uniform(0.1, 0.3, 2)
    x = np.concatenate([np.zeros(int(pad[0] * SR)), x, np.zeros(int(pad[1] * SR))])
    x = _channel(rng, x * 10 ** (rng.normal(0, 1.0) / 20), corpus.channel)  # +-1 dB: loudness stays dominance
    x /= max(1.0, np.abs(x).max() / 0.99)
    return Clip(x.astype(np.float32), f'{corpus_name}-{k:02d}', emo, (a, valence, d), text, polarity)


def clip_example(corpus_name: str, index: int, seed: int) -> dict:
    clip = generate_clip(corpus_name, index, seed)
    return common.example(f'demo_emotion_{corpus_name}-{index:06d}', common.to_int16(clip.audio), clip.emotion,
                          clip.speaker) | {
        **{d: np.float32(v) for d, v in zip(emotion.DIMENSIONS, clip.dims)},
        'corpus': f'demo_emotion_{corpus_name}', 'transcript': clip.text}


class DemoEmotion(common.AudioBuilder, skip_registration=True):
    """One corpus of the procedural emotional-speech demo; ids are 'demo_emotion_<corpus>-000123'."""

    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, corpus: str = 'studio', num_clips: int = DEFAULT_NUM_CLIPS, seed: int = 0,
                 split_by: str = 'speaker', **kwargs):
        if corpus not in CORPORA:
            raise ValueError(f'demo_emotion corpus {corpus!r}: choose one of {", ".join(CORPORA)}')
        if split_by not in SPLIT_BY:
            raise ValueError(f'demo_emotion split_by={split_by!r}: choose one of {", ".join(SPLIT_BY)}')
        self.corpus, self.num_clips, self.seed, self.split_by = corpus, num_clips, seed, split_by
        self.skipped = []
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        c = CORPORA[self.corpus]
        return tfds.core.DatasetInfo(
            builder=self,
            description=f'Procedural emotional speech, corpus {self.corpus} (data_pipelines/demo_emotion.py).',
            features=emotion.features(c.emotions),
            metadata=tfds.core.MetadataDict(
                sample_rate=SR, corpus=f'demo_emotion_{self.corpus}', channel=c.channel, seed=self.seed,
                num_clips=self.num_clips, voices=list(c.voices), dimensions_scale='1-7', split_by=self.split_by),
        )

    def _split_generators(self, dl_manager):
        corpus = CORPORA[self.corpus]
        indices = {split: [] for split in common.SPLITS}
        for i in range(self.num_clips):
            indices[split_of(corpus, i, self.split_by)].append(i)
        return {s: self._generate_examples(indices[s]) for s in common.SPLITS if indices[s]}

    def _generate_examples(self, indices):
        for i in indices:
            example = clip_example(self.corpus, i, self.seed)
            yield example['id'], example


def build(out: str, *, corpus: str = 'studio', num_clips: int = DEFAULT_NUM_CLIPS, seed: int = 0,
          split_by: str = 'speaker') -> common.BuildReport:
    """Generates corpus `corpus` of the emotional-speech demo into a TFDS dataset in DATA_DIR `out`."""
    if corpus not in CORPORA:
        raise ValueError(f'demo_emotion corpus {corpus!r}: choose one of {", ".join(CORPORA)}')
    if split_by not in SPLIT_BY:
        raise ValueError(f'demo_emotion split_by={split_by!r}: choose one of {", ".join(SPLIT_BY)}')
    return common.prepare_dataset(DemoEmotion, out, corpus=corpus, num_clips=num_clips, seed=seed, split_by=split_by)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--corpus', default='studio', choices=list(CORPORA))
    parser.add_argument('--num_clips', type=int, default=DEFAULT_NUM_CLIPS)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--split_by', default='speaker', choices=SPLIT_BY)
    build(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
