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
    ("[train]\nlabel_thresholds = 1.5\n", r"label_thresholds must be \"f1\" or a target precision in \(0, 1\)"),
    ("[train]\nlabel_thresholds = 'precision'\n", r"label_thresholds must be \"f1\" or a target precision"),
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
    with pytest.raises(ValueError, match=match) as err:
        params.load(f, section if section in params.SECTIONS else "train")
    assert str(f) in str(err.value)  # which file to fix


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


def test_repo_params_file_agrees_with_the_dataclass_defaults():
    """params.toml documents every setting at its default: each key exists, has the default value (after
    from_dict's coercion) and no field is left out. ``[overrides]`` holds per-dataset changes, not defaults."""
    import dataclasses
    import tomllib

    with open(REPO / "params.toml", "rb") as fh:
        data = tomllib.load(fh)
    assert sorted(set(data) - {"overrides"} - set(params.SECTIONS)) == []
    problems = []
    for section, cls in params.SECTIONS.items():
        table = data.get(section)
        if table is None:
            problems.append(f"[{section}] missing from params.toml")
            continue
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(table) - set(fields))
        problems += [f"[{section}] {key} is not a field of {cls.__name__}" for key in unknown]
        default = cls()
        for key, value in table.items():
            if key in unknown:
                continue
            try:
                got = getattr(params.from_dict(cls, section, {key: value}), key)
            except ValueError as exc:
                problems.append(f"[{section}] {key} = {value!r} is refused: {exc}")
                continue
            want = getattr(default, key)
            if (type(got), got) != (type(want), want):
                problems.append(f"[{section}] {key} = {value!r} in params.toml, {want!r} in {cls.__name__}")
        missing = [name for name in fields if name not in table]
        if missing:
            problems.append(f"[{section}] fields missing from params.toml: {missing}")
    assert not problems, "params.toml and the dataclass defaults disagree:\n" + "\n".join(problems)
