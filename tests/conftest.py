"""Tests run on CPU with 8 forced devices so that sharding is exercised."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Many tests compile the same tiny train step: XLA's persistent cache (inherited by the
# subprocesses of the multi-process and SIGTERM tests) compiles each program once per run.
_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The tiny procedural demo dataset (40 clips), built once per test process."""
    from helpers import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def av_data_dir(tmp_path_factory):
    """The procedural audiovisual demo corpus (48 clips, 10 speakers, 6 emotions), built once per test process."""
    from data_pipelines import demo_av

    out = tmp_path_factory.mktemp("demo_av")
    demo_av.build(str(out), num_clips=48, seed=0)
    return out


@pytest.fixture(scope="session")
def emotion_data(tmp_path_factory):
    """36 clips of the demo emotion corpus (studio: 6 speakers, A/V/D ratings, transcripts), built once per process."""
    from data_pipelines import demo_emotion

    out = tmp_path_factory.mktemp("emo") / "data"
    demo_emotion.build(str(out), corpus="studio", num_clips=36)
    return out


@pytest.fixture(scope="session")
def m2d_export(tmp_path_factory, data_dir):
    """A random-init tiny M2D export (64 wide, 2 blocks; log-mel statistics (-7, 4))."""
    from helpers import random_m2d_export

    return random_m2d_export(tmp_path_factory.mktemp("m2d") / "e", data_dir)
