"""Models. Each method module registers itself with ``avpretrain.method`` (see there)."""
from avpretrain import runtime

runtime.avoid_quadratic_tracing()  # flax NNX's per-variable sharding probes (see there)
