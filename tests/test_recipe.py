"""The training recipe: epochs from a step budget, patience, class weights, flips; the --epochs override."""
import json
import math

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
    small = recipe.plan(TrainParams(), AugmentParams(), 1000, [100] * 10, sym, 10.0)
    assert small.patience == max(recipe.MIN_PATIENCE, -(-small.epochs // 4))  # a quarter of the (grouped) epochs
    off = recipe.plan(TrainParams(), AugmentParams(hflip=False), 1000, [100] * 10, sym, 10.0)
    assert not off.hflip and off.hflip_why == "set in params"
    assert not recipe.plan(TrainParams(), AugmentParams(enabled=False), 1000, [100] * 10, sym, 10.0).hflip


@pytest.mark.parametrize("n_train", [40, 200, 1000, 1437, 5000, 54000])
def test_small_data_groups_its_passes_into_epochs_of_enough_steps(n_train):
    """The cost of tiny data follows its steps: passes are grouped into epochs of at least MIN_EPOCH_STEPS
    steps; the total number of steps is the recipe's (up to the rounding of the last epoch)."""
    p = TrainParams()
    plan = recipe.plan(p, AugmentParams(), n_train, [n_train // 4] * 4, None, 10.0)
    pass_steps = -(-n_train // p.batch_size)
    passes, _ = recipe.resolve_epochs(p, n_train, p.batch_size)
    assert plan.steps_per_epoch == pass_steps * plan.passes_per_epoch
    assert plan.steps_per_epoch >= min(recipe.MIN_EPOCH_STEPS, passes * pass_steps)
    assert passes <= plan.passes < passes + plan.passes_per_epoch  # the last epoch rounds up
    assert plan.total_steps == plan.epochs * plan.steps_per_epoch
    if pass_steps >= recipe.MIN_EPOCH_STEPS:
        assert plan.passes_per_epoch == 1 and plan.epochs == passes  # MNIST-size data: as before
        assert recipe.passes_in_words(plan) == f"{passes} epoch(s), one pass over the training images each"
    else:  # the log leads with the passes (what `epochs` in params counts), then the epochs they make
        assert recipe.passes_in_words(plan) == (f"{plan.passes} passes over the training images, in {plan.epochs} "
                                                f"epochs of {plan.passes_per_epoch}")


# Validation accuracy per epoch of two real 28-epoch runs of the default recipe (6,000 steps): MNIST, and
# cluttered MNIST (benchmarks/devsets.py), where the run ends while the model still learns.
MNIST_VAL = [0.6358, 0.9737, 0.9808, 0.9865, 0.9860, 0.9860, 0.9860, 0.9882, 0.9905, 0.9902, 0.9895, 0.9908,
             0.9908, 0.9903, 0.9928, 0.9908, 0.9920, 0.9912, 0.9932, 0.9927, 0.9933, 0.9928, 0.9930, 0.9932,
             0.9937, 0.9933, 0.9935, 0.9938]
CLUTTERED_VAL = [0.4345, 0.6118, 0.8150, 0.8375, 0.8415, 0.8480, 0.8660, 0.8598, 0.8648, 0.8517, 0.8273, 0.8553,
                 0.8622, 0.8795, 0.8760, 0.8785, 0.8765, 0.8833, 0.8825, 0.8748, 0.8840, 0.8817, 0.8848, 0.8870]


def test_the_run_goes_on_while_validation_still_improves():
    longest = round(TrainParams().extend * 28)
    check = recipe.check_epoch(28)
    # MNIST: the third quarter's error is lower, but by well under half a point: stop as planned
    assert all(recipe.extension(MNIST_VAL[:k], 28, 6000, longest) is None for k in range(1, 29))
    assert recipe.planned_after(MNIST_VAL, 28, 6000, longest) == 28
    # cluttered: decided at the check epoch, once, and replayed the same way on resume
    assert all(recipe.extension(CLUTTERED_VAL[:k], 28, 6000, longest) is None for k in range(1, check))
    longer, why = recipe.extension(CLUTTERED_VAL[:check], 28, 6000, longest)
    assert longer == round(recipe.EXTEND_BY * 28) and "still falling" in why and "28 -> 56 epochs" in why
    assert recipe.planned_after(CLUTTERED_VAL, 28, 6000, longest) == longer
    # never past the longest run, never on a small validation split that cannot tell, never when epochs are set
    assert recipe.extension(CLUTTERED_VAL[:check], 28, 6000, 30)[0] == 30
    assert recipe.extension(CLUTTERED_VAL[:check], 28, 6000, 28) is None
    assert recipe.extension(CLUTTERED_VAL[:check], 28, 60, longest) is None
    plan = recipe.plan(TrainParams(epochs=28), AugmentParams(), 54000, [5400] * 10, None, 10.0)
    assert plan.max_epochs == 0
    assert recipe.plan(TrainParams(), AugmentParams(), 54000, [5400] * 10, None, 10.0).max_epochs == longest
    assert recipe.plan(TrainParams(extend=1.0), AugmentParams(), 54000, [5400] * 10, None, 10.0).max_epochs == 0


def test_a_stretched_cosine_is_keras_cosine_until_it_is_stretched():
    p = TrainParams()
    plain, stretchy = recipe.learning_rate(p, 5908), recipe.learning_rate(p, 5908, stretchable=True)
    steps = [0, 100, 295, 296, 1000, 3000, 5900, 5908, 7000]
    assert [float(stretchy(s)) for s in steps] == [float(plain(s)) for s in steps]
    recipe.stretch(stretchy, 2 * 5908)  # the same warmup, then the cosine over the longer run
    warm = int(p.warmup * 5908)
    expected = [p.learning_rate * s / warm if s < warm else
                p.learning_rate * 0.5 * (1 + math.cos(math.pi * (s - warm) / (2 * 5908 - warm))) for s in steps]
    assert [float(stretchy(s)) for s in steps] == pytest.approx(expected, rel=1e-4, abs=1e-9)


@pytest.mark.slow
def test_an_extended_run_trains_to_its_new_end_and_records_why(tmp_path, monkeypatch):
    """The mechanics, with the rule made to say yes at every check: the run is lengthened twice (up to
    [train] extend times the plan), the cosine is stretched to the new end, and the bundle says so."""
    from pipeline.shared.params import PrepareParams, PreprocessParams
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import train

    monkeypatch.setattr(recipe, "EXTEND_Z", -1e9)
    monkeypatch.setattr(recipe, "EXTEND_MIN_GAIN", -1.0)
    monkeypatch.setattr(recipe, "EXTEND_BY", 1.5)  # 8 -> 12 -> 16: two decisions to replay
    data = make_tree(tmp_path / "d", {"a": 100, "b": 100}, size=16)
    prepare(data, tmp_path / "run", PrepareParams(workers=1, val_size=0.25), PreprocessParams(size=(16, 16)))
    p = TrainParams(batch_size=2, step_budget=8 * 60, min_epochs=8, extend=2.0, patience=100)  # 8 epochs
    train(tmp_path / "run", p, verbose=0)
    info = json.loads((tmp_path / "run" / "model" / "bundle.json").read_text())
    planned = info["plan"]["epochs"]
    assert info["epochs_planned"] == info["epochs_run"] == info["plan"]["max_epochs"] == 2 * planned
    assert len(info["extended"]) == 2 and all("still falling" in note for note in info["extended"])
    lr = [float(r["learning_rate"]) for r in csv_rows(tmp_path / "run" / "history.csv")]
    assert lr[planned - 1] > 0.1 * p.learning_rate and lr[-1] < 0.01 * p.learning_rate  # annealed at the new end


def csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_far_too_short_training_is_warned_about():
    short = recipe.plan(TrainParams(epochs=3), AugmentParams(), 185, [20] * 9, None, 10.0)
    (warning,) = short.warnings
    assert "3 optimizer step(s)" in warning and "budget for this data is 500 steps" in warning
    assert recipe.plan(TrainParams(epochs=400), AugmentParams(), 185, [20] * 9, None, 10.0).warnings == ()
    assert recipe.plan(TrainParams(), AugmentParams(), 185, [20] * 9, None, 10.0).warnings == ()


def test_a_tiny_class_weighted_up_is_warned_about():
    """A class of one image (a new class from the review page, say) weighted 79x: said in the plan's warnings."""
    def warned(p, counts):
        return recipe.few_weighed(recipe.plan(p, AugmentParams(), sum(counts), counts, None, 10.0).class_weights, counts)

    (warning,) = warned(TrainParams(), [93, 93, 93, 1])
    assert "1 class(es) with fewer than 10 training images (the smallest: 1)" in warning and "up to 93x" in warning
    assert warned(TrainParams(class_weights="none"), [93, 93, 93, 1]) == ()
    assert warned(TrainParams(), [300, 20, 80]) == ()  # weighed up, but not few


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
    # --epochs counts epochs of one pass each: the recipe groups only its own passes (of >= MIN_EPOCH_STEPS steps)
    assert plan["passes"] == plan["epochs"] == info["epochs_run"] == 2 and plan["epochs_why"].startswith("set in params")
    assert plan["class_weights"] is not None and plan["class_weights"][1] > plan["class_weights"][0]
    assert "(set in params or on the command line)" in res.stderr and "grouped" not in res.stderr
    assert "training is far too short" in res.stderr  # 2 passes of 4 steps against the recipe's hundreds
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


def test_a_model_that_learned_its_training_images_by_heart_is_told_apart():
    """Training accuracy near 100% and validation within a third of the way from chance: said, with the colour
    hint for a colour model only; a model that learned something, underfits, or has no validation, is not."""
    history = [{"accuracy": 0.73, "val_accuracy": 0.33}, {"accuracy": 1.0, "val_accuracy": 0.42}]
    colour = recipe.learned_by_heart(history, 3, colour=True)
    assert colour and "training accuracy 100%" in colour and 'color = "grayscale"' in colour
    gray = recipe.learned_by_heart(history, 3, colour=False)
    assert gray and "grayscale" not in gray
    assert recipe.learned_by_heart([{"accuracy": 1.0, "val_accuracy": 0.8}], 3, True) is None  # it learned
    assert recipe.learned_by_heart([{"accuracy": 0.6, "val_accuracy": 0.34}], 3, True) is None  # underfit
    assert recipe.learned_by_heart([{"accuracy": 1.0, "loss": 0.1}], 3, True) is None  # no validation split
    assert recipe.learned_by_heart([], 3, True) is None
