"""Model registry: ``config.method`` → constructor taking (config.model, rngs, encoder_only)."""
from avpretrain import runtime
from avpretrain.models import m2d, m2d_clap

runtime.avoid_quadratic_tracing()  # flax NNX's per-variable sharding probes (see there)

MODELS = {
    "m2d": m2d.from_config,
    "m2d_clap": m2d_clap.stage1_from_config,   # stage 1: M2D + CLAP
    "m2d2": m2d_clap.stage2_from_config,       # stage 2: semantic head + trainable text side
}


def create(config, rngs, encoder_only: bool = False):
    if config.method not in MODELS:
        raise ValueError(f"unknown config.method {config.method!r}; known: {sorted(MODELS)}")
    return MODELS[config.method](config.model, rngs, encoder_only=encoder_only)
