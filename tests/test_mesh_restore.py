"""A checkpoint written on one mesh resumes on another: 8-way data parallel for 3 steps, then
2-way data × 4-way FSDP (params split over 'fsdp') to step 6, matching an uninterrupted run."""
import numpy as np
import pytest
from flax import nnx

from avpretrain import checkpoint, step as step_lib, train
from helpers import tiny_config

DATA_PARALLEL = (("data", 8), ("fsdp", 1), ("tensor", 1))
FSDP = (("data", 2), ("fsdp", 4), ("tensor", 1))


def _config(data_dir, mesh):
    # Fixed normalisation statistics: no statistics pass in each fresh workdir.
    return tiny_config(data_dir, mesh=mesh, total_steps=6, log_every=1, checkpoint_every=3,
                       **{"data.norm_stats": (-7.1, 4.2)})


def test_resume_on_fsdp_mesh_matches_uninterrupted_run(data_dir, tmp_path, capsys):
    data_parallel, fsdp = _config(data_dir, DATA_PARALLEL), _config(data_dir, FSDP)
    assert fsdp.mesh == FSDP

    reference = train.train(data_parallel, tmp_path / "reference")
    assert sorted(reference.losses) == [1, 2, 3, 4, 5, 6]

    workdir = tmp_path / "resumed"
    first = train.train(data_parallel, workdir, stop_at=3)
    assert first.step == 3 and sorted(first.losses) == [1, 2, 3]
    capsys.readouterr()
    second = train.train(fsdp, workdir)
    assert "at step 3" in capsys.readouterr().out
    assert second.step == 6 and sorted(second.losses) == [4, 5, 6]

    # Same batches and RNG; only the float reduction order differs between the two meshes.
    for step in (1, 2, 3):
        assert first.losses[step] == pytest.approx(reference.losses[step], rel=1e-6)
    for step in (4, 5, 6):
        assert second.losses[step] == pytest.approx(reference.losses[step], rel=1e-5), step

    # The step-6 checkpoint restored onto the FSDP mesh: params split 4 ways over 'fsdp'.
    like = nnx.to_pure_dict(nnx.state(step_lib.create_train_state(fsdp, train.make_mesh(fsdp))))
    mngr = checkpoint.manager(workdir / "checkpoints", async_save=False)
    restored = checkpoint.restore(mngr, 6, like)
    mngr.close()
    kernel = restored["model"]["blocks"][0]["mlp"]["fc1"]["kernel"]  # [embed=64, mlp=256]
    assert kernel.sharding.spec[0] == "fsdp", kernel.sharding
    assert {shard.data.shape for shard in kernel.addressable_shards} == {(16, 256)}
    assert int(restored["opt"]["step"]) == 6
    assert not np.allclose(np.asarray(kernel), np.asarray(like["model"]["blocks"][0]["mlp"]["fc1"]["kernel"]))
