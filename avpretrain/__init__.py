"""avpretrain: self-supervised pretraining of audio and audiovisual encoders in JAX/Flax NNX."""

import time as _time

__version__ = "0.1.0"
STARTED = _time.time()  # when avpretrain was first imported: start-up figures are measured from here


def load_pretrained(path: str, **kwargs):
    """Loads an encoder written by ``avpretrain export`` (see :mod:`avpretrain.export`)."""
    from avpretrain.export import load_pretrained as _load

    return _load(path, **kwargs)
