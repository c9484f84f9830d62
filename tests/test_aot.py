"""`avpretrain aot`: the real sharded train step compiled for a TPU topology on this CPU machine
(libtpu's topology description; skipped only where libtpu is absent: `make venv` installs it)."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from avpretrain import aot
from helpers import REPO

TINY = ["--config.model.width=64", "--config.model.depth=2", "--config.model.num_heads=4",
        "--config.model.pred_width=32", "--config.model.pred_depth=1", "--config.model.pred_heads=2"]
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None or (aot.libtpu_dir() / "libtpu").is_dir()


def _aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "avpretrain", "aot", f"--config={REPO / 'configs/m2d.py:size=tiny,runlocal'}",
                           *TINY, *args], capture_output=True, text=True, env=env, timeout=600)


def test_topologies_and_collectives_are_parsed():
    assert aot.parse_topology("v5e:16x16") == ("v5e", "16x16", 256)
    assert aot.parse_topology("v5p:4x4x8") == ("v5p", "4x4x8", 128)
    with pytest.raises(ValueError, match="give TYPE:SHAPE"):
        aot.parse_topology("v5e-256")
    hlo = ("%ar = f32[8]{0} all-reduce(f32[8]{0} %x), to_apply=%add\n"
           "%ags = (f32[4], f32[16]) all-gather-start(f32[4] %y)\n%agd = f32[16] all-gather-done(%ags)\n"
           "%all-reduce.2 = (f32[2]{0}, f32[3]{0}) all-reduce(f32[2]{0} %a, f32[3]{0} %b)\n")
    assert aot.count_collectives(hlo) == {"all-reduce": 2, "all-gather": 1}


@pytest.mark.skipif(not HAVE_LIBTPU, reason=f"libtpu is not installed (make venv puts it in {aot.libtpu_dir()})")
def test_a_tiny_step_compiles_for_a_v5e_slice_and_a_huge_batch_does_not_fit():
    r = _aot("--topology=v5e:2x2", "--config.batch_size=8")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("aot v5e:2x2: 4 x TPU v5") and "'data': 4" in lines[0]
    assert "all-reduce" in r.stdout                                  # the data-parallel gradient sum
    flops = re.search(r"XLA ([\d.e+]+), analytic ([\d.e+]+)", r.stdout)
    assert flops and 0.5 < float(flops.group(1)) / float(flops.group(2)) < 5
    assert re.fullmatch(r"aot v5e:2x2 total [\d.]+ GiB of 16 GiB HBM per device: fits", lines[-1])
    r = _aot("--topology=v5e:2x2", "--config.batch_size=262144")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not fit" in r.stdout and "--config.model.remat" in r.stdout and "--config.batch_size" in r.stdout


def test_a_bad_topology_is_a_clear_error():
    r = _aot("--topology=v7:4x4")
    assert r.returncode == 2 and "give TYPE:SHAPE" in r.stderr
