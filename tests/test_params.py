from pathlib import Path

import pytest

from pipeline.shared import params
from pipeline.shared.params import PreprocessParams, TrainParams

REPO = Path(__file__).resolve().parent.parent


def test_repo_params_file_loads_every_section():
    for section in params.SECTIONS:
        params.load(REPO / "params.toml", section)
    assert params.load(REPO / "params.toml", "train").model == "lenet5"


def test_missing_file_section_gives_defaults(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[train]\nepochs = 3\n")
    assert params.load(f, "prepare") == params.PrepareParams()
    assert params.load(f, "train").epochs == 3
    assert params.load(None, "evaluate") == params.EvaluateParams()


@pytest.mark.parametrize("text, match", [
    ("[train]\nepoch = 3\n", r"unknown key\(s\) \['epoch'\]"),
    ("[train]\nepochs = '3'\n", r"epochs must be \"auto\" or >= 1. Received: '3'"),
    ("[train]\nepochs = 0\n", r"epochs must be \"auto\" or >= 1. Received: 0"),
    ("[train]\nepochs = 2.5\n", r"epochs must be int or str. Received: 2.5"),
    ("[augment]\nhflip = 'yes'\n", r"hflip must be true, false or \"auto\""),
    ("[preprocess]\nsize = 'big'\n", r"size must be \"auto\" or \[height, width\]"),
    ("[train]\ndeterministic = 1\n", r"deterministic must be of type bool"),
    ("[train]\nmodel = 'resnet'\n", r"model must be one of"),
    ("[preprocess]\nsize = [28]\n", r"size must be"),
    ("[preprocess]\ncolor = 'cmyk'\n", r"color must be one of"),
    ("[prepare]\ntest_size = 1.5\n", r"test_size must be between 0 and 1"),
    ("[prepare]\nlabels = ['a', 'a']\n", r"labels must be unique"),
    ("[prepare]\nlabels = 'a'\n", r"labels must be a list"),
    ("[bogus]\n", r"unknown section"),
    ("[train\n", r"not valid TOML"),
])
def test_bad_params_raise_clear_value_errors(tmp_path, text, match):
    f = tmp_path / "p.toml"
    f.write_text(text)
    section = text.split("]")[0].strip("[")
    with pytest.raises(ValueError, match=match):
        params.load(f, section if section in params.SECTIONS else "train")


def test_missing_params_file(tmp_path):
    with pytest.raises(ValueError, match="params file not found"):
        params.load(tmp_path / "nope.toml", "train")


def test_int_accepted_for_float_and_lists_become_tuples():
    p = params.from_dict(TrainParams, "train", {"learning_rate": 1})
    assert p.learning_rate == 1.0 and isinstance(p.learning_rate, float)
    cfg = params.from_dict(PreprocessParams, "preprocess", {"size": [32, 28], "color": "grayscale"})
    assert cfg.size == (32, 28) and cfg.input_shape == (32, 28, 1)
    assert params.to_dict(cfg)["size"] == [32, 28]


def test_per_dataset_overrides(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[preprocess]\nsize = [32, 32]\n[overrides.mnist.preprocess]\nnormalize = 'mnist'\n"
                 "[overrides.mnist.augment]\nenabled = true\n")
    assert params.load(f, "preprocess").normalize == "none"
    assert params.load(f, "preprocess", "pets").normalize == "none"
    cfg = params.load(f, "preprocess", "mnist")
    assert cfg.normalize == "mnist" and cfg.size == (32, 32)  # other keys still from [preprocess]
    assert params.load(f, "augment", "mnist").enabled and params.load(f, "augment", "pets").enabled
    f.write_text("[overrides.mnist.preproc]\nx = 1\n")
    with pytest.raises(ValueError, match=r"\[overrides.mnist\] unknown section"):
        params.load(f, "train", "mnist")
    f.write_text("[overrides.mnist.train]\nepochs = 0\n")
    with pytest.raises(ValueError, match=r"epochs must be \"auto\" or >= 1.*overrides.mnist.train"):
        params.load(f, "train", "mnist")


def test_auto_values_and_unresolved_configs():
    assert TrainParams().epochs == "auto" and params.from_dict(TrainParams, "train", {"epochs": 7}).epochs == 7
    cfg = PreprocessParams()
    assert (cfg.color, cfg.size, cfg.invert) == ("auto", "auto", "auto") and not cfg.resolved
    with pytest.raises(ValueError, match="resolved by prepare"):
        cfg.input_shape
