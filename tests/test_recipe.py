"""The training recipe: epochs from a step budget, patience, class weights, flips; the --epochs override."""
import json

import pytest

from pipeline.model import recipe
from pipeline.shared.params import AugmentParams, TrainParams

from conftest import cli, make_tree


@pytest.mark.parametrize("n_train, batch, epochs", [
    (1000, 256, 500),     # 4 steps an epoch: 1,500 epochs for 6,000 steps, capped at max_epochs
    (900, 128, 500),
    (5000, 256, 300),     # 20 steps an epoch
    (54000, 256, 28),     # MNIST's train split: 211 steps an epoch
    (1_000_000, 256, 10), # huge: min_epochs
])
def test_epochs_from_the_step_budget(n_train, batch, epochs):
    p = TrainParams(batch_size=batch)
    got, why = recipe.resolve_epochs(p, n_train, batch)
    assert got == epochs and "budget of 6000 steps" in why
    assert recipe.resolve_epochs(TrainParams(epochs=7), n_train, batch) == (7, "set in params or on the command line")


def test_plan_patience_flips_and_replicas():
    sym = {"hflip": True, "why": "9 of 10 classes are mirror-symmetric"}
    plan = recipe.plan(TrainParams(), AugmentParams(), 54000, [5400] * 10, sym, 10.0, replicas=2)
    assert plan.global_batch == 512 and plan.steps_per_epoch == 106 and plan.epochs == 57
    assert plan.total_steps == plan.epochs * plan.steps_per_epoch
    assert plan.patience == 15 and plan.hflip and plan.class_weights is None  # max(10, 57/4)
    assert recipe.plan(TrainParams(), AugmentParams(), 1000, [100] * 10, sym, 10.0).patience == 125
    off = recipe.plan(TrainParams(), AugmentParams(hflip=False), 1000, [100] * 10, sym, 10.0)
    assert not off.hflip and off.hflip_why == "set in params"
    assert not recipe.plan(TrainParams(), AugmentParams(enabled=False), 1000, [100] * 10, sym, 10.0).hflip


def test_class_weights_balanced_only_past_the_audit_threshold():
    weights, why = recipe.resolve_class_weights(TrainParams(), [300, 20, 100], 10.0)
    assert weights == pytest.approx([420 / 900, 420 / 60, 420 / 300]) and why.startswith("balanced: imbalance 15.0x")
    assert recipe.resolve_class_weights(TrainParams(), [300, 40, 100], 10.0)[0] is None  # 7.5x
    assert recipe.resolve_class_weights(TrainParams(class_weights="none"), [300, 20], 10.0)[0] is None
    assert recipe.resolve_class_weights(TrainParams(class_weights="balanced"), [30, 30], 10.0)[0] == [1.0, 1.0]
    assert recipe.balanced_weights([10, 0, 30]) == [2.0, 0.0, pytest.approx(2 / 3)]


def test_learning_rate_warms_up_then_decays_to_zero():
    lr = recipe.learning_rate(TrainParams(learning_rate=0.01, warmup=0.1), 100)
    values = [float(lr(step)) for step in (0, 5, 10, 55, 100)]
    assert values[0] == 0.0 and values[1] == pytest.approx(0.005) and values[2] == pytest.approx(0.01)
    assert values[3] == pytest.approx(0.005, abs=1e-4) and values[4] == pytest.approx(0.0, abs=1e-6)
    assert recipe.learning_rate(TrainParams(lr_schedule="constant"), 100) == 2e-3


def _train_two_epochs(tmp_path, counts: dict[str, int], params: str):
    """Prepare a tiny generated set and train it for 2 epochs; the run folder and train's result."""
    data = make_tree(tmp_path / "d", counts, size=16)
    (tmp_path / "p.toml").write_text(params)
    run = tmp_path / "run"
    assert cli("prepare", "--data", data, "--run", run, "--params", tmp_path / "p.toml").returncode == 0
    res = cli("train", "--run", run, "--params", tmp_path / "p.toml", "--epochs", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    return run, res


@pytest.mark.slow
def test_epochs_override_and_class_weights_are_recorded_in_the_bundle(tmp_path):
    run, res = _train_two_epochs(tmp_path, {"big": 66, "small": 6},
                                 "[prepare]\ntest_size = 0.1\n[train]\nbatch_size = 16\n")
    info = json.loads((run / "model" / "bundle.json").read_text())
    plan = info["plan"]
    assert plan["epochs"] == 2 and info["epochs_run"] == 2 and plan["epochs_why"].startswith("set in params")
    assert plan["class_weights"] is not None and plan["class_weights"][1] > plan["class_weights"][0]
    assert "train: 2 epochs (set in params or on the command line)" in res.stderr
    assert "class weights balanced: imbalance" in res.stderr
    bad = cli("train", "--run", run, "--params", tmp_path / "p.toml", "--epochs", "zero")
    assert bad.returncode == 2 and "--epochs takes a whole number" in bad.stderr


def test_precision_auto_follows_the_cpu(tmp_path):
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 fma\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert recipe.cpu_has_bf16(str(with_bf16)) and not recipe.cpu_has_bf16(str(without))
    assert not recipe.cpu_has_bf16(str(tmp_path / "missing"))
    assert recipe.resolve_precision("auto", has_bf16=True)[0] == "bfloat16"
    assert recipe.resolve_precision("auto", has_bf16=False) == ("float32", "auto: no native bfloat16 on this CPU")
    assert recipe.resolve_precision("auto", has_bf16=False, device="GPU")[1] == "auto: no native bfloat16 on this GPU"
    assert recipe.resolve_precision("float32", has_bf16=True) == ("float32", "set in params")
    assert recipe.resolve_precision("bfloat16", has_bf16=False) == ("bfloat16", "set in params")
    with pytest.raises(ValueError, match="precision"):
        TrainParams(precision="float16")


@pytest.mark.slow
def test_a_bfloat16_run_leaves_a_float32_bundle(tmp_path):
    run, res = _train_two_epochs(tmp_path, {"a": 12, "b": 12},
                                 "[prepare]\ntest_size = 0.2\n[train]\nbatch_size = 8\nprecision = \"bfloat16\"\n")
    assert "train: bfloat16 arithmetic (set in params)" in res.stderr
    info = json.loads((run / "model" / "bundle.json").read_text())
    assert info["plan"]["precision"] == "bfloat16"
    import keras

    model = keras.models.load_model(run / "model" / "model.keras", safe_mode=True)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
