"""Model registry: ``config.method`` → constructor taking (config.model, rngs)."""
from avpretrain.models import m2d

MODELS = {"m2d": m2d.from_config}


def create(config, rngs, encoder_only: bool = False):
    if config.method not in MODELS:
        raise ValueError(f"unknown config.method {config.method!r}; known: {sorted(MODELS)}")
    return MODELS[config.method](config.model, rngs, encoder_only=encoder_only)
