"""The training recipe: how long to train, at what learning rate, with which optimizer and loss.

``epochs = "auto"`` gives the run a budget of optimizer steps (``step_budget``), so
the number of passes over the images adapts to the data: a 1,000-image set gets hundreds
of passes, MNIST a few dozen at most (bounded by ``min_epochs`` .. ``max_epochs`` passes).
The passes are grouped into epochs of at least :data:`MIN_EPOCH_STEPS` optimizer steps
(one pass each on MNIST; fifty passes of a 200-image set): what an epoch costs beyond its
steps (validation, checkpoint, history, backup) is then paid a few dozen times, not once per
tiny pass, so small data trains at the speed of its steps. The learning rate warms up over
the first ``warmup`` share of the steps, then follows a cosine to zero over the whole run.
:func:`plan` resolves every ``"auto"`` of ``[train]`` and ``[augment]`` into a :class:`Plan`,
which is logged and recorded in ``bundle.json``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.shared.params import AUTO, AugmentParams, TrainParams

MIN_PATIENCE = 10
PATIENCE_SHARE = 0.25  # patience = "auto": a quarter of the run (at least MIN_PATIENCE epochs)
MIN_EPOCH_STEPS = 50   # an epoch is at least this many optimizer steps (several passes over small data)
SHORT_SHARE = 0.25     # a run below this share of the recipe's budget for the data is warned about
FEW_WEIGHED = 10       # a class weighted up with fewer training images than this is warned about
# epochs = "auto" goes on while validation still improves (docs/recipe.md "How long"): at EXTEND_CHECK of the
# planned epochs, the validation error of the third quarter is compared with the second's; when it fell by
# EXTEND_Z standard errors and at least EXTEND_MIN_GAIN, the run is lengthened EXTEND_BY times (the cosine
# stretched), up to [train] extend times the plan.
EXTEND_CHECK = 0.75
EXTEND_BY = 2.0
EXTEND_Z = 2.0
EXTEND_MIN_GAIN = 0.005


@dataclass(frozen=True)
class Plan:
    """Every training choice, resolved (what the bundle records as ``plan``)."""

    epochs: int               # Keras epochs (each ``passes_per_epoch`` passes over the training images)
    epochs_why: str
    steps_per_epoch: int
    total_steps: int
    global_batch: int
    patience: int
    hflip: bool
    hflip_why: str
    class_weights: list[float] | None
    class_weights_why: str
    precision: str = "float32"
    precision_why: str = "set in params"
    passes: int = 0           # passes over the training images in all
    passes_per_epoch: int = 1
    warnings: tuple[str, ...] = ()
    max_epochs: int = 0       # how far the run may be extended while validation improves (0: not at all)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_epochs(p: TrainParams, n_train: int, global_batch: int) -> tuple[int, str]:
    """Passes over the training images (``epochs`` in params), and why: as set, or the step budget
    spread over passes of ``n_train`` images."""
    steps = max(1, math.ceil(n_train / global_batch))
    if p.epochs != AUTO:
        return int(p.epochs), "set in params or on the command line"
    passes = int(np.clip(round(p.step_budget / steps), p.min_epochs, p.max_epochs))
    return passes, (f"a budget of {p.step_budget} steps at {steps} steps per pass "
                    f"({n_train} images, batch {global_batch}), kept within {p.min_epochs}..{p.max_epochs} passes")


def group_passes(passes: int, pass_steps: int) -> tuple[int, int]:
    """(epochs, passes per epoch): passes grouped into epochs of at least :data:`MIN_EPOCH_STEPS` steps."""
    per_epoch = max(1, min(passes, math.ceil(MIN_EPOCH_STEPS / pass_steps)))
    return math.ceil(passes / per_epoch), per_epoch


def passes_in_words(plan: Plan) -> str:
    """The training's length as the log says it: passes over the training images (what ``epochs`` in params
    counts) and, when the recipe grouped them, the epochs they make."""
    if plan.passes_per_epoch > 1:
        return f"{plan.passes} passes over the training images, in {plan.epochs} epochs of {plan.passes_per_epoch}"
    return f"{plan.epochs} epoch(s), one pass over the training images each"


def _too_short(p: TrainParams, passes: int, pass_steps: int) -> tuple[str, ...]:
    """A warning when the passes set in params give far fewer steps than the recipe's budget would."""
    if p.epochs == AUTO:
        return ()
    budget = int(np.clip(round(p.step_budget / pass_steps), p.min_epochs, p.max_epochs)) * pass_steps
    steps = passes * pass_steps
    if steps >= SHORT_SHARE * budget:
        return ()
    return (f"training is far too short: {steps} optimizer step(s) ({passes} pass(es) of {pass_steps} step(s)); "
            f"the recipe's budget for this data is {budget} steps (epochs = \"auto\"): expect a weak model",)


def few_weighed(weights: list[float] | None, counts: list[int]) -> tuple[str, ...]:
    """A warning when balanced class weights (one label per image) multiply the images of a class too small to
    learn from."""
    few = [c for c in counts if 0 < c < FEW_WEIGHED]
    if not weights or not few:
        return ()
    used = [w for w, c in zip(weights, counts) if c > 0]
    return (f"{len(few)} class(es) with fewer than {FEW_WEIGHED} training images (the smallest: {min(few)}): the "
            f"balanced class weights count each of their images up to {max(used) / min(used):.0f}x an image of the "
            "largest class, which pulls the model towards them (confident wrong answers): add images of them, or "
            "set class_weights = \"none\"",)


def balanced_weights(counts: list[int]) -> list[float]:
    """scikit-learn's "balanced" class weights: n / (classes x count); 0 for an empty class."""
    counts_a = np.asarray(counts, float)
    present = counts_a > 0
    n, k = counts_a.sum(), max(int(present.sum()), 1)
    return [float(n / (k * c)) if c > 0 else 0.0 for c in counts_a]


def resolve_class_weights(p: TrainParams, counts: list[int], threshold: float) -> tuple[list[float] | None, str]:
    """Balanced weights when asked, or (auto) when the largest class has ``threshold`` x the smallest."""
    nonzero = [c for c in counts if c > 0]
    ratio = max(nonzero) / min(nonzero) if nonzero else 1.0
    if p.class_weights == "none":
        return None, "off (set in params)"
    if p.class_weights == "balanced":
        return balanced_weights(counts), "balanced (set in params)"
    where = f"imbalance {ratio:.1f}x in the training split"
    if ratio > threshold:
        return balanced_weights(counts), f"balanced: {where} exceeds the audit's {threshold:g}x"
    return None, f"none: {where} is within the audit's {threshold:g}x"


def plan(p: TrainParams, aug: AugmentParams, n_train: int, counts: list[int], symmetry: dict[str, Any] | None,
         imbalance_threshold: float, replicas: int = 1) -> Plan:
    """Resolve the run: epochs and steps, patience, flips and class weights."""
    global_batch = p.batch_size * replicas
    passes, why = resolve_epochs(p, n_train, global_batch)
    pass_steps = max(1, math.ceil(n_train / global_batch))
    # epochs set in params are the user's epochs (one pass each); the recipe's own are grouped
    epochs, per_epoch = group_passes(passes, pass_steps) if p.epochs == AUTO else (passes, 1)
    if per_epoch > 1:
        why += f"; {passes} passes grouped {per_epoch} to an epoch (at least {MIN_EPOCH_STEPS} steps each)"
    steps = pass_steps * per_epoch
    patience = int(p.patience) if p.patience != AUTO else max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))
    if aug.hflip == AUTO:
        hflip = bool(symmetry and symmetry.get("hflip"))
        hflip_why = (symmetry or {}).get("why", "no symmetry measured (prepared by an older version)")
    else:
        hflip, hflip_why = bool(aug.hflip), "set in params"
    weights, weights_why = resolve_class_weights(p, counts, imbalance_threshold)
    precision, precision_why = resolve_precision(p.precision)
    longest = min(round(p.extend * epochs), p.max_epochs // per_epoch) if p.epochs == AUTO else 0
    return Plan(epochs, why, steps, epochs * steps, global_batch, patience, hflip and aug.enabled, hflip_why,
                weights, weights_why, precision, precision_why, epochs * per_epoch, per_epoch,
                _too_short(p, passes, pass_steps), longest if longest > epochs else 0)


def check_epoch(planned: int) -> int:
    """The epoch (1-based) after which a run of ``planned`` epochs decides whether to go on."""
    return max(4, round(EXTEND_CHECK * planned))


def extension(val_accuracy: list[float], planned: int, n_val: int, longest: int) -> tuple[int, str] | None:
    """(new planned epochs, why) when, at the check epoch of a run of ``planned`` epochs, the validation
    error of the epochs in its third quarter is clearly below that of its second (``val_accuracy``: one
    value per finished epoch; ``n_val`` validation images); None to stop as planned."""
    done = len(val_accuracy)
    if done != check_epoch(planned) or planned >= longest or n_val <= 0:
        return None
    quarter = planned / 4
    early, late = val_accuracy[round(quarter):round(2 * quarter)], val_accuracy[round(2 * quarter):done]
    if len(early) < 2 or len(late) < 2:
        return None
    err_early, err_late = 1 - float(np.mean(early)), 1 - float(np.mean(late))
    se = math.sqrt(max(err_late * (1 - err_late), 1 / n_val) / n_val)
    gain = err_early - err_late
    if gain < EXTEND_MIN_GAIN or gain < EXTEND_Z * se:
        return None
    longer = min(longest, round(EXTEND_BY * planned))
    return longer, (f"validation error still falling: {err_early:.2%} -> {err_late:.2%} from the second to the third "
                    f"quarter of the run ({gain / se:.1f} standard errors): {planned} -> {longer} epochs")


def planned_after(val_accuracy: list[float], planned: int, n_val: int, longest: int) -> int:
    """The planned epochs after the finished epochs ``val_accuracy`` (the decisions replayed: a resumed run
    goes on as the interrupted one did)."""
    for done in range(1, len(val_accuracy) + 1):
        step = extension(val_accuracy[:done], planned, n_val, longest)
        if step:
            planned = step[0]
    return planned


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bfloat16 arithmetic


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's feature flags (/proc/cpuinfo's first ``flags`` line; none where there is no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            return next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return []


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes in bfloat16 natively (elsewhere bfloat16 is emulated: slower than float32)."""
    flags = cpu_flags(cpuinfo)
    return any(flag in flags for flag in BF16_FLAGS)


def gpus_have_bf16() -> bool | None:
    """Whether every visible GPU computes in bfloat16 natively (compute capability 8.0 or later);
    None when there is no GPU (the CPU decides)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability") or (0, 0) for g in gpus]
    return all(tuple(c) >= (8, 0) for c in capabilities)


def resolve_precision(precision: str, has_bf16: bool | None = None, device: str = "CPU") -> tuple[str, str]:
    """The compute type of training ("float32" | "bfloat16"), and why. ``auto``: bfloat16 where the
    device computes in it natively (a CPU with AVX512-BF16 or AMX, a GPU of compute capability 8.0+:
    ~20% less time per MNIST step on the CPU; the weights stay float32 and the bundle's model is float32
    whatever trained it), else float32 (emulated bfloat16 is slower). README "Training details"."""
    if precision != AUTO:
        return precision, "set in params"
    if has_bf16 is None:
        gpu = gpus_have_bf16()
        has_bf16, device = (cpu_has_bf16(), "CPU") if gpu is None else (gpu, "GPU")
    if has_bf16:
        return "bfloat16", f"auto: the {device} computes in bfloat16 natively"
    return "float32", f"auto: no native bfloat16 on this {device}"


def learning_rate(p: TrainParams, total_steps: int, stretchable: bool = False) -> Any:
    """Linear warmup over ``warmup`` of the steps, then cosine to zero (or constant); ``stretchable``:
    the cosine's length can grow while training (:func:`stretch`)."""
    import keras

    if p.lr_schedule == "constant":
        return p.learning_rate
    warm = int(p.warmup * total_steps)
    kind = stretchable_cosine() if stretchable else keras.optimizers.schedules.CosineDecay
    return kind(0.0 if warm else p.learning_rate, max(1, total_steps - warm), alpha=0.0,
                warmup_target=p.learning_rate if warm else None, warmup_steps=warm)


def stretch(schedule: Any, total_steps: int) -> None:
    """Make a stretchable cosine end at ``total_steps`` (from the next step on)."""
    schedule.length.assign(float(max(1, total_steps - schedule.warmup_steps)))


_STRETCHABLE: list[Any] = []


def stretchable_cosine() -> Any:
    """Keras' CosineDecay with its length in a variable, so the run can be extended while it trains
    (registered for loading, defined once)."""
    if _STRETCHABLE:
        return _STRETCHABLE[0]
    import keras

    @keras.saving.register_keras_serializable(package="pipeline")
    class StretchableCosine(keras.optimizers.schedules.CosineDecay):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.length = keras.Variable(float(self.decay_steps), trainable=False, dtype="float32",
                                         name="cosine_length")
            self.decay_steps = self.length  # read at every step by CosineDecay's own formula

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "decay_steps": float(self.length.numpy())}

    _STRETCHABLE.append(StretchableCosine)
    return StretchableCosine


def optimizer(p: TrainParams, total_steps: int, schedule: Any = None) -> Any:
    """AdamW (decoupled weight decay) or Adam; with an EMA of the weights when ``ema`` > 0. ``schedule``:
    the learning rate to use (default: :func:`learning_rate` for ``total_steps``)."""
    import keras

    kw: dict[str, Any] = {"use_ema": True, "ema_momentum": p.ema} if p.ema else {}
    lr = schedule if schedule is not None else learning_rate(p, total_steps)
    if p.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=p.weight_decay, **kw)
    return keras.optimizers.Adam(lr, **kw)


def loss(p: TrainParams) -> Any:
    """Cross-entropy on one-hot targets, with label smoothing."""
    import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing)


BY_HEART = 0.95  # training accuracy this high, with validation accuracy near chance: learned by heart


def learned_by_heart(history: list[dict[str, float]], n_labels: int, colour: bool) -> str | None:
    """A warning when the model learned its training images by heart and little that carries over to new
    ones: training accuracy near 100% while the validation accuracy stays within a third of the way from
    chance to 100% (``colour``: the model sees colour, which it may have learned instead of the shapes)."""
    train = max((r["accuracy"] for r in history if "accuracy" in r), default=0.0)
    val = max((r["val_accuracy"] for r in history if "val_accuracy" in r), default=None)
    chance = 1 / max(n_labels, 1)
    if val is None or train < BY_HEART or val - chance > (1 - chance) / 3:
        return None
    hint = ('if colour does not tell your classes apart, try color = "grayscale" in [preprocess] (the model '
            'then cannot tell images apart by their colours); ' if colour else "")
    return (f"the model learned its training images by heart (training accuracy {train:.0%}) and little that "
            f"carries over to new ones (validation accuracy {val:.0%} at best, chance {chance:.0%}): {hint}more "
            "images per class help")
