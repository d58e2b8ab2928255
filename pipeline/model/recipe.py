"""The training recipe: how long to train, at what learning rate, with which optimizer and loss.

``epochs = "auto"`` gives the run a budget of optimizer steps (``step_budget``), so
the number of passes adapts to the data: a 1,000-image set gets hundreds of
epochs, MNIST a few dozen at most (bounded by ``min_epochs`` .. ``max_epochs``).
The learning rate warms up over the first ``warmup`` share of the steps, then
follows a cosine to zero over the whole run. :func:`plan` resolves every ``"auto"``
of ``[train]`` and ``[augment]`` into a :class:`Plan`, which is logged and recorded
in ``bundle.json``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.shared.params import AUTO, AugmentParams, TrainParams

MIN_PATIENCE = 10
PATIENCE_SHARE = 0.25  # patience = "auto": a quarter of the run (at least MIN_PATIENCE epochs)


@dataclass(frozen=True)
class Plan:
    """Every training choice, resolved (what the bundle records as ``plan``)."""

    epochs: int
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_epochs(p: TrainParams, n_train: int, global_batch: int) -> tuple[int, str]:
    """``epochs``, and why: as set, or the step budget spread over epochs of ``n_train`` images."""
    steps = max(1, math.ceil(n_train / global_batch))
    if p.epochs != AUTO:
        return int(p.epochs), "set in params or on the command line"
    epochs = int(np.clip(round(p.step_budget / steps), p.min_epochs, p.max_epochs))
    return epochs, (f"a budget of {p.step_budget} steps at {steps} steps per epoch "
                    f"({n_train} images, batch {global_batch}), kept within {p.min_epochs}..{p.max_epochs}")


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
    if ratio > threshold:
        return balanced_weights(counts), f"balanced: imbalance {ratio:.1f}x exceeds the audit's {threshold:g}x"
    return None, f"none: imbalance {ratio:.1f}x is within the audit's {threshold:g}x"


def plan(p: TrainParams, aug: AugmentParams, n_train: int, counts: list[int], symmetry: dict[str, Any] | None,
         imbalance_threshold: float, replicas: int = 1) -> Plan:
    """Resolve the run: epochs and steps, patience, flips and class weights."""
    global_batch = p.batch_size * replicas
    epochs, why = resolve_epochs(p, n_train, global_batch)
    steps = max(1, math.ceil(n_train / global_batch))
    patience = int(p.patience) if p.patience != AUTO else max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))
    if aug.hflip == AUTO:
        hflip = bool(symmetry and symmetry.get("hflip"))
        hflip_why = (symmetry or {}).get("why", "no symmetry measured (prepared by an older version)")
    else:
        hflip, hflip_why = bool(aug.hflip), "set in params"
    weights, weights_why = resolve_class_weights(p, counts, imbalance_threshold)
    precision, precision_why = resolve_precision(p.precision)
    return Plan(epochs, why, steps, epochs * steps, global_batch, patience, hflip and aug.enabled, hflip_why,
                weights, weights_why, precision, precision_why)


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bfloat16 arithmetic


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes in bfloat16 natively (elsewhere bfloat16 is emulated: slower than float32)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
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


def learning_rate(p: TrainParams, total_steps: int) -> Any:
    """Linear warmup over ``warmup`` of the steps, then cosine to zero (or constant)."""
    import keras

    if p.lr_schedule == "constant":
        return p.learning_rate
    warm = int(p.warmup * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warm else p.learning_rate, max(1, total_steps - warm), alpha=0.0,
        warmup_target=p.learning_rate if warm else None, warmup_steps=warm)


def optimizer(p: TrainParams, total_steps: int) -> Any:
    """AdamW (decoupled weight decay) or Adam; with an EMA of the weights when ``ema`` > 0."""
    import keras

    kw: dict[str, Any] = {"use_ema": True, "ema_momentum": p.ema} if p.ema else {}
    lr = learning_rate(p, total_steps)
    if p.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=p.weight_decay, **kw)
    return keras.optimizers.Adam(lr, **kw)


def loss(p: TrainParams) -> Any:
    """Cross-entropy on one-hot targets, with label smoothing."""
    import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing)
