"""A model name that is not one is refused with the known names, not a hub OSError traceback."""
import pytest

from medqwen.models import check_model_name, load_model


def test_a_typo_of_a_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'tiny-minii' \(did you mean 'tiny-mini'\?\): not a known name and "
                                         r"no such folder; a model is one of the names \['medqwen-mini', 'tiny-mini', 'tiny-qwen2.5-vl'\]"):
        load_model("tiny-minii")
    with pytest.raises(ValueError, match="no such folder"):
        check_model_name("runs/missing/final/model")
    check_model_name("Qwen/Qwen2.5-VL-3B-Instruct")  # a hub id is looked up when the model is built


def test_a_hub_id_that_cannot_be_loaded_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model 'nobody/no-such-vl' could not be loaded as a Qwen2.5-VL checkpoint \(.*\); "
                                         r"a model is one of the names"):
        load_model("nobody/no-such-vl")
