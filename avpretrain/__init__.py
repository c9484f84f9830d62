"""avpretrain: self-supervised pretraining of audio and audiovisual encoders in JAX/Flax NNX."""

__version__ = "0.1.0"


def load_pretrained(path: str, **kwargs):
    """Loads an encoder written by ``avpretrain export`` (see :mod:`avpretrain.export`)."""
    from avpretrain.export import load_pretrained as _load

    return _load(path, **kwargs)
