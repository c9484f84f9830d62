"""Process set-up: the persistent compilation cache, and handing freed host memory back.

``setup()`` is called by the ``avpretrain`` command first thing; library users call it themselves
before their first JAX computation. Compiled programs are kept in ``$AVPRETRAIN_CACHE`` (default
``${XDG_CACHE_HOME:-~/.cache}/avpretrain/jax``), so a second run of the same config skips XLA's
compile (the base M2D step: 20-30 s on 2 CPU cores). ``AVPRETRAIN_CACHE=off`` turns it off; a
``JAX_COMPILATION_CACHE_DIR`` set in the environment is left as it is.

No XLA:CPU flags are set: of those tried on the M2D step (YNNPACK off, oneDNN, XNNPACK, the
concurrency scheduler off) none was faster than this jaxlib's defaults (README, Performance).
"""
from __future__ import annotations

import os
import pathlib
import sys

def cache_dir() -> pathlib.Path | None:
    """Where compiled programs are kept, or None when the cache is off."""
    value = os.environ.get("AVPRETRAIN_CACHE", "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    if value:
        return pathlib.Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "avpretrain" / "jax"


def setup() -> None:
    """Turns the persistent compilation cache on (see the module doc); call before the first JAX computation."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    directory = cache_dir()
    if directory is None:
        return
    # Every program, however quick to compile: the first step of a small run is many small ones.
    settings = {"jax_compilation_cache_dir": str(directory), "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    if "jax" in sys.modules:  # already imported: its config, read from the environment, is set
        import jax

        for key, value in settings.items():
            jax.config.update(key, value)
    else:  # read by JAX when it is imported (also by subprocesses)
        for key, value in settings.items():
            os.environ.setdefault(key.upper(), str(value))


def release_host_memory() -> None:
    """Returns the C heap's free pages to the OS (glibc ``malloc_trim``; elsewhere nothing).

    Called after compiling a step: XLA's compile and the trace leave ~0.2-0.5 GB of freed heap that
    would otherwise stay in the process's peak RSS under the step's own buffers.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def avoid_quadratic_tracing() -> bool:
    """Makes ``getattr(tracer, "sharding" | "device", None)`` cheap again; True if it patched.

    flax NNX probes ``value.sharding`` on every Variable assignment (each param created, each rng
    drawn, each optimizer-state update). In jax 0.10 a Tracer answers with an AttributeError whose
    message walks every equation traced so far, so tracing grew quadratically with the model: the
    tiny M2D's init and step traced in ~10 s, of which ~6 s were these messages. The same
    AttributeError is raised here without that part of the message, as upstream did in
    jax-ml/jax#40041; a jax whose Tracer no longer builds it is left alone.
    """
    from jax._src import core

    patched = False
    for name in ("sharding", "device"):
        prop = getattr(core.Tracer, name, None)
        if not isinstance(prop, property) or "_origin_msg" not in prop.fget.__code__.co_names:
            continue

        def probe(self, _name=name):
            raise AttributeError(f"The {_name!r} attribute is not available on {self._error_repr()}.")

        setattr(core.Tracer, name, property(probe, doc=prop.__doc__))
        patched = True
    return patched


def coordination_client():
    """The client of JAX's coordination service (barriers, key-value store), None in a single process."""
    from jax._src import distributed

    return distributed.global_state.client


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Waits until every process of a multi-process run has reached ``name``, at the coordination
    service (no device collective; a no-op in a single process)."""
    import jax

    client = coordination_client()
    if client is not None and jax.process_count() > 1:
        client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))
