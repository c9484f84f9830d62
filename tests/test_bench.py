"""``avpretrain bench`` on the tiny M2D config: the trainer's step timed, FLOPs, MFU, input pipeline."""
import pytest

from avpretrain import bench
from helpers import tiny_config


@pytest.mark.xdist_group("tiny_m2d_bench")
def test_bench_reports_step_flops_mfu_and_pipeline(data_dir, capsys):
    config = tiny_config(data_dir)
    r = bench.run(config, steps=2, warmup=1, peak_tflops=1.0, data_batches=2)

    assert r["step_time_s"] > 0 and r["compile_s"] > 0 and r["examples_per_s"] > 0
    assert r["flops_per_step"] > 0 and r["tflops"] > 0 and 0 < r["mfu"] < 1e3
    assert r["pipeline_clips_per_s"] > 0 and r["pipeline_clips_per_s_total"] > 0
    assert 0 < r["params_trainable"] < r["params_total"]  # the EMA target encoder is not trained
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("bench: step_time_ms=") and "mfu=" in last and "pipeline_clips_per_s=" in last
    assert "n/a" not in last
