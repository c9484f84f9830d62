"""configs/m2d.py variants: the small-data recipe and its relation to runlocal and configs/demo.py."""
import pytest

from avpretrain import config as config_lib
from helpers import REPO

M2D = str(REPO / "configs/m2d.py")


def test_small_data_recipe_values():
    c = config_lib.load_config(f"{M2D}:size=tiny,small_data")
    assert (c.total_steps, c.batch_size) == (3000, 32)
    assert c.model.input_frames == 192                       # 1.92 s crops
    assert (c.model.width, c.model.depth, c.model.num_heads) == (128, 4, 4)
    assert (c.model.pred_width, c.model.pred_depth, c.model.pred_heads) == (64, 2, 4)
    assert c.optim.base_lr == pytest.approx(3e-3)
    assert c.optim.warmup_fraction == pytest.approx(0.1)
    assert (c.ema.start, c.ema.end) == (0.99, 0.999)
    # the smoke test keeps its own (useless for learning) values
    r = config_lib.load_config(f"{M2D}:size=tiny,runlocal")
    assert (r.total_steps, r.model.input_frames, r.optim.base_lr) == (20, 96, pytest.approx(3e-4))


def test_small_data_steps_argument_and_override():
    assert config_lib.load_config(f"{M2D}:size=tiny,small_data,steps=5000").total_steps == 5000
    assert config_lib.load_config(f"{M2D}:size=tiny,small_data", {"total_steps": 800}).total_steps == 800
    with pytest.raises(ValueError, match="steps must be >= 0"):
        config_lib.load_config(f"{M2D}:size=tiny,small_data,steps=-1")


@pytest.mark.parametrize("arg, match", [
    ("size=tiny,small_data,runlocal", "small_data and runlocal"),
    ("size=base,small_data", "size=tiny,small_data"),
])
def test_small_data_rejected_combinations(arg, match):
    with pytest.raises(ValueError, match=match):
        config_lib.load_config(f"{M2D}:{arg}")


def test_demo_is_the_small_data_recipe():
    demo = config_lib.load_config(str(REPO / "configs/demo.py"))
    recipe = config_lib.load_config(f"{M2D}:size=tiny,small_data")
    assert {**demo.to_dict(), "config_spec": ""} == {**recipe.to_dict(), "config_spec": ""}
    assert config_lib.load_config(str(REPO / "configs/demo.py:steps=1500")).total_steps == 1500


@pytest.mark.parametrize("raw, value", [("true", True), ("True", True), ("false", False), ("False", False)])
def test_a_bool_key_takes_json_and_python_spellings(raw, value):
    c = config_lib.load_config(f"{M2D}:size=tiny,runlocal", [f"model.scan_layers={raw}"])
    assert c.model.scan_layers is value


def test_a_bool_key_refuses_other_words():
    with pytest.raises(TypeError, match="config key 'model.scan_layers': cannot set 'yes' on a bool field"):
        config_lib.load_config(f"{M2D}:size=tiny,runlocal", ["model.scan_layers=yes"])
