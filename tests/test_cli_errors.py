"""Bad command-line input: one-line errors naming the option/key and value, exit status 2, before any work."""
import tempfile

import pytest

from avpretrain import cli, config as config_lib
from helpers import REPO, TINY_CONFIG

CONFIG = f"--config={REPO / TINY_CONFIG}"


def _error(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, (rc, err)
    return err


@pytest.mark.parametrize("override, expected", [
    ("--config.batch_size=-1", "config key 'batch_size' = -1: must be a positive integer"),
    ("--config.total_steps=0", "config key 'total_steps' = 0: must be a positive integer"),
    ("--config.seed=3000000000", "config key 'seed' = 3000000000: must be an integer in [0, 2**31)"),
    ("--config.model.mask_ratio=1.5", "config key 'model.mask_ratio' = 1.5: must be in (0, 1)"),
])
def test_out_of_range_values_are_refused_before_anything_is_written(capsys, tmp_path, override, expected):
    err = _error(capsys, ["train", CONFIG, override, f"--workdir={tmp_path / 'w'}"])
    assert expected in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key, nearest", [("optim.lr", "optim.base_lr"), ("optim.base_lrr", "optim.base_lr"),
                                          ("optm.base_lr", "optim.base_lr"), ("model.heads", "model.num_heads"),
                                          ("lr", "optim.base_lr"), ("batchsize", "batch_size")])
def test_unknown_keys_suggest_the_nearest_full_key(key, nearest):
    config = config_lib.load_config(str(REPO / TINY_CONFIG))
    assert config_lib.nearest_key(key, config) == nearest


def test_configs_are_found_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert config_lib.load_config("configs/m2d.py:size=tiny").model.size == "tiny"
    with pytest.raises(FileNotFoundError, match=r"configs/nope.py \(looked at .*nope.py and .*configs/nope.py\)"):
        config_lib.load_config("configs/nope.py")


def test_workdir_that_is_a_file_or_unwritable_is_refused(capsys, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = _error(capsys, ["train", CONFIG, f"--workdir={a_file}"])
    assert err == f"error: --workdir={a_file} is a file, expected a directory"
    err = _error(capsys, ["export", f"--workdir={tmp_path}", f"--out={a_file}"])
    assert err == f"error: --out={a_file} is a file, expected a directory"

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    err = _error(capsys, ["train", CONFIG, f"--workdir={tmp_path / 'new' / 'w'}"])
    assert f"--workdir={tmp_path / 'new' / 'w'}: not writable (Permission denied in {tmp_path})" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv", [
    ["eval", "linear-probe", "--model=m", "--data=d", "--batch-size=0"],
    ["eval", "zero-shot", "--model=m", "--data=d", "--batch-size=-3"],
    ["train", CONFIG, "--workdir=w", "--stop-at=0"],
])
def test_non_positive_counts_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_long_library_messages_are_cut_to_one_line():
    message = "Requested shape (384,) is not compatible\n" + "tree dump " * 3000
    line = cli.one_line(ValueError(message))
    assert line.startswith("Requested shape (384,) is not compatible [... ") and "AVP_DEBUG=1" in line
    assert cli.one_line("short") == "short"


def test_train_help_mentions_config_overrides(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--config.KEY=VALUE" in capsys.readouterr().out
