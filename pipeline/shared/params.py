"""The params file: one TOML section per stage, validated into frozen dataclasses."""
from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.shared.errors import UserError

T = TypeVar("T")

# Allowed values, defined here once; the modules that act on them import them.
MODELS = ("lenet5", "lenet5-classic", "softmax", "mlp", "cnn")
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "bfloat16")  # [train] precision: the compute type of training
OUTPUT_FORMATS = ("csv", "jsonl")
# What runs the model (docs/predict.md#runtimes): "auto" takes the bundle's light ONNX model when it has one and
# ONNX Runtime is installed, else TensorFlow. (The word "engine" is kept for where the work runs.)
RUNTIMES = ("auto", "tensorflow", "onnx")
FILE = "params.toml"  # the params file the commands read by default (absent: the built-in defaults)


def _choice(section: str, key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise UserError(f"[{section}] {key} must be one of {list(allowed)}. Received: {value!r}")


def _check(cond: bool, section: str, key: str, rule: str, value: Any) -> None:
    if not cond:
        raise UserError(f"[{section}] {key} must be {rule}. Received: {value!r}")


AUTO = "auto"


@dataclass(frozen=True)
class IngestParams:
    """How labels are read from each layout, and what the audit does."""

    filename_regex: str = ""
    filename_delimiter: str = ""
    filename_position: int = 0
    csv_path_column: str = ""
    csv_label_column: str = ""
    csv_split_column: str = "split"
    leakage: str = "drop"
    imbalance_ratio: float = 10.0
    task: str = AUTO               # single | multi (several labels per image) | auto: multi when a CSV says so
    label_separators: str = ";|"   # multi-label CSV: the characters that separate an image's labels
    min_positives: int = 10        # multi-label: warn about a label with fewer positive images
    label_case: str = "keep"       # ignore: labels that differ only in letter case or spacing are one class

    def __post_init__(self) -> None:
        _choice("ingest", "task", self.task, (AUTO, "single", "multi"))
        _check(bool(self.label_separators) and not self.label_separators.isalnum(), "ingest", "label_separators",
               "one or more separator characters", self.label_separators)
        _check(self.min_positives >= 1, "ingest", "min_positives", ">= 1", self.min_positives)
        if self.filename_regex:
            try:
                rx = re.compile(self.filename_regex)
            except re.error as exc:
                raise UserError(f"[ingest] filename_regex is not a valid regex ({exc}). "
                                 f"Received: {self.filename_regex!r}") from None
            _check("label" in rx.groupindex, "ingest", "filename_regex",
                   "a regex with a named group (?P<label>...)", self.filename_regex)
        _choice("ingest", "leakage", self.leakage, ("drop", "keep"))
        _choice("ingest", "label_case", self.label_case, ("keep", "ignore"))
        _check(self.imbalance_ratio >= 1, "ingest", "imbalance_ratio", ">= 1", self.imbalance_ratio)


@dataclass(frozen=True)
class PrepareParams:
    """How prepare splits the data."""

    seed: int = 42
    test_size: float = 0.2
    val_size: float = 0.1
    labels: tuple[str, ...] = ()
    workers: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.test_size < 1.0, "prepare", "test_size", "between 0 and 1", self.test_size)
        _check(0.0 <= self.val_size < 1.0, "prepare", "val_size", "in [0, 1)", self.val_size)
        _check(self.workers >= 0, "prepare", "workers", ">= 0", self.workers)
        _check(len(set(self.labels)) == len(self.labels), "prepare", "labels", "unique", list(self.labels))


SIZE_BOUNDS = (28, 64)  # size = "auto": each side from the size census, kept within these


@dataclass(frozen=True)
class PreprocessParams:
    """How every image is turned into model input (prepare, evaluate and apply alike).

    ``color``, ``size``, ``invert`` and ``background`` may be ``"auto"``: prepare resolves them
    from the data (see :mod:`pipeline.data.census`) and stores the resolved values, which are what
    the bundle records. An unresolved ``invert`` or ``background`` judges each image on its own.
    """

    color: str = AUTO
    size: tuple[int, ...] | str = AUTO
    resize: str = "stretch"
    background: int | str = AUTO
    min_side: int = 8
    max_side: int = 20000
    invert: str = AUTO
    denoise: str = "none"
    denoise_kernel: int = 3
    denoise_sigma: float = 0.0
    equalize: str = "none"
    clahe_clip: float = 2.0
    binarize: str = "none"
    threshold: int = 128
    morphology: str = "none"
    morph_kernel: int = 3
    normalize: str = "none"

    def __post_init__(self) -> None:
        _choice("preprocess", "color", self.color, (AUTO, "grayscale", "rgb"))
        _choice("preprocess", "resize", self.resize, ("stretch", "pad", "crop"))
        _choice("preprocess", "invert", self.invert, (AUTO, "per-image", "true", "false"))
        _choice("preprocess", "denoise", self.denoise, ("none", "median", "gaussian", "bilateral"))
        _check(self.denoise_kernel >= 3 and self.denoise_kernel % 2 == 1, "preprocess", "denoise_kernel",
               "an odd number >= 3", self.denoise_kernel)
        _check(self.denoise_sigma >= 0, "preprocess", "denoise_sigma", ">= 0 (0: from the kernel size)",
               self.denoise_sigma)
        _choice("preprocess", "equalize", self.equalize, ("none", "hist", "clahe"))
        _check(self.clahe_clip > 0, "preprocess", "clahe_clip", "> 0", self.clahe_clip)
        _choice("preprocess", "binarize", self.binarize, ("none", "otsu", "fixed"))
        _check(0 <= self.threshold <= 255, "preprocess", "threshold", "0..255", self.threshold)
        _choice("preprocess", "morphology", self.morphology, ("none", "erode", "dilate", "open", "close"))
        _check(self.morph_kernel >= 1, "preprocess", "morph_kernel", ">= 1", self.morph_kernel)
        _choice("preprocess", "normalize", self.normalize, ("none", "mnist"))
        if self.normalize == "mnist":
            _check(self.color in (AUTO, "grayscale"), "preprocess", "color", "grayscale with normalize = 'mnist'",
                   self.color)
        if self.size != AUTO:
            _check(isinstance(self.size, tuple) and len(self.size) == 2 and all(4 <= s <= 4096 for s in self.size),
                   "preprocess", "size", '"auto" or [height, width], each 4..4096', self.size)
        _check(self.background == AUTO or (isinstance(self.background, int) and 0 <= self.background <= 255),
               "preprocess", "background", '"auto" or a gray level 0..255', self.background)
        _check(1 <= self.min_side <= self.max_side, "preprocess", "min_side", f"1..max_side ({self.max_side})",
               self.min_side)

    @property
    def resolved(self) -> bool:
        """True when colour and size are settled (prepare's census resolves "auto")."""
        return self.color != AUTO and self.size != AUTO

    @property
    def channels(self) -> int:
        if self.color == AUTO:
            raise UserError('[preprocess] color = "auto" is resolved by prepare; it has no channel count yet')
        return 1 if self.color == "grayscale" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self.size == AUTO:
            raise UserError('[preprocess] size = "auto" is resolved by prepare; it has no shape yet')
        return (self.size[0], self.size[1], self.channels)


@dataclass(frozen=True)
class TrainParams:
    """Model and optimisation settings (README "Training details")."""

    model: str = "lenet5"
    epochs: int | str = AUTO
    step_budget: int = 6000
    min_epochs: int = 10
    max_epochs: int = 500
    extend: float = 3.0
    batch_size: int = 256
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup: float = 0.05
    lr_schedule: str = "cosine"
    ema: float = 0.0
    patience: int | str = AUTO
    dropout: float = 0.0
    class_weights: str = AUTO
    label_thresholds: str | float = "f1"  # multi-label: each label's threshold on val: best F1, or a target precision
    seed: int = 42
    deterministic: bool = False
    precision: str = AUTO
    strategy: str = "default"
    streaming: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    data_threads: int = 0

    # Knobs that change how fast training runs, not what it learns: left out of fingerprints.
    RUNTIME_KEYS: typing.ClassVar[tuple[str, ...]] = ("streaming", "intra_op_threads", "inter_op_threads",
                                                      "data_threads")

    def learned(self) -> dict[str, Any]:
        """The settings that change what is learned (every key but :attr:`RUNTIME_KEYS`)."""
        return {k: v for k, v in to_dict(self).items() if k not in self.RUNTIME_KEYS}

    def __post_init__(self) -> None:
        _choice("train", "model", self.model, MODELS)
        _choice("train", "strategy", self.strategy, STRATEGIES)
        _choice("train", "streaming", self.streaming, ("auto", "on", "off"))
        _choice("train", "precision", self.precision, PRECISIONS)
        for key in ("intra_op_threads", "inter_op_threads", "data_threads"):
            _check(getattr(self, key) >= 0, "train", key, ">= 0 (0 = automatic)", getattr(self, key))
        _choice("train", "lr_schedule", self.lr_schedule, ("cosine", "constant"))
        _choice("train", "optimizer", self.optimizer, ("adamw", "adam"))
        _choice("train", "class_weights", self.class_weights, (AUTO, "none", "balanced"))
        t = self.label_thresholds
        _check(t == "f1" or (isinstance(t, float) and 0.0 < t < 1.0), "train", "label_thresholds",
               '"f1" or a target precision in (0, 1), e.g. 0.95', t)
        for key in ("epochs", "patience"):
            value = getattr(self, key)
            _check(value == AUTO or (isinstance(value, int) and value >= 1), "train", key, '"auto" or >= 1', value)
        _check(1 <= self.min_epochs <= self.max_epochs, "train", "min_epochs", f"1..max_epochs ({self.max_epochs})",
               self.min_epochs)
        _check(self.step_budget >= 1, "train", "step_budget", ">= 1", self.step_budget)
        _check(1.0 <= self.extend <= 10.0, "train", "extend", "in [1, 10] (1: never)", self.extend)
        _check(self.batch_size >= 1, "train", "batch_size", ">= 1", self.batch_size)
        _check(self.learning_rate > 0, "train", "learning_rate", "> 0", self.learning_rate)
        _check(self.weight_decay >= 0, "train", "weight_decay", ">= 0", self.weight_decay)
        _check(0.0 <= self.label_smoothing < 1.0, "train", "label_smoothing", "in [0, 1)", self.label_smoothing)
        _check(0.0 <= self.warmup < 1.0, "train", "warmup", "in [0, 1) (a fraction of the steps)", self.warmup)
        _check(self.ema == 0.0 or 0.9 <= self.ema < 1.0, "train", "ema", "0 (off) or in [0.9, 1)", self.ema)
        _check(0.0 <= self.dropout < 1.0, "train", "dropout", "in [0, 1)", self.dropout)


@dataclass(frozen=True)
class AugmentParams:
    """Train-only, on-the-fly augmentation (Keras preprocessing layers in the tf.data pipeline)."""

    enabled: bool = True
    rotation: float = 10.0
    translation: float = 0.1
    zoom: float = 0.1
    shear: float = 0.0
    elastic: float = 0.0
    noise: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    erasing: float = 0.0
    hflip: bool | str = AUTO


    def __post_init__(self) -> None:
        _check(0 <= self.rotation <= 180, "augment", "rotation", "0..180 degrees", self.rotation)
        for key in ("translation", "zoom", "shear", "elastic", "brightness", "contrast", "erasing"):
            value = getattr(self, key)
            _check(0 <= value <= 1, "augment", key, "in [0, 1]", value)
        _check(self.noise >= 0, "augment", "noise", ">= 0", self.noise)
        _check(self.hflip in (AUTO, True, False), "augment", "hflip", 'true, false or "auto"', self.hflip)


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation settings."""

    batch_size: int = 1024
    runtime: str = "auto"  # what runs the model; with "onnx" the metrics also say how it agrees with TensorFlow

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "evaluate", "batch_size", ">= 1", self.batch_size)
        _choice("evaluate", "runtime", self.runtime, RUNTIMES)


@dataclass(frozen=True)
class NoveltyParams:
    """The unfamiliar-input detector fitted at the end of ``train`` (docs/trust.md)."""

    flag_rate: float = 0.02  # share of familiar (validation) images the cut flags

    def __post_init__(self) -> None:
        _check(0.0 < self.flag_rate < 0.5, "novelty", "flag_rate", "in (0, 0.5)", self.flag_rate)


@dataclass(frozen=True)
class SuspectsParams:
    """The label check (``pipeline suspects``): k-fold cross-validation, then confident learning."""

    folds: int = 5
    step_budget: int = 1500  # optimizer steps per fold: a short training with the run's recipe
    gallery: int = 32        # suspects shown in suspects.png and the report

    def __post_init__(self) -> None:
        _check(2 <= self.folds <= 20, "suspects", "folds", "2..20", self.folds)
        _check(self.step_budget >= 1, "suspects", "step_budget", ">= 1", self.step_budget)
        _check(self.gallery >= 0, "suspects", "gallery", ">= 0", self.gallery)


@dataclass(frozen=True)
class PredictParams:
    """Apply settings (each also a ``pipeline predict`` option, which wins)."""

    top_k: int = 3
    threshold: float | str = 0.0
    target_precision: float = 0.99
    unknown_label: str = "unknown"
    unfamiliar: str = "flag"
    batch_size: int = 512
    workers: int = 0
    format: str = "csv"
    runtime: str = "auto"

    def __post_init__(self) -> None:
        _check(self.top_k >= 1, "predict", "top_k", ">= 1", self.top_k)
        _check(self.threshold == AUTO or (isinstance(self.threshold, float) and 0.0 <= self.threshold <= 1.0),
               "predict", "threshold", '"auto" or in [0, 1]', self.threshold)
        _check(0.0 < self.target_precision <= 1.0, "predict", "target_precision", "in (0, 1]", self.target_precision)
        _check(bool(self.unknown_label.strip()), "predict", "unknown_label", "a non-empty name", self.unknown_label)
        _choice("predict", "unfamiliar", self.unfamiliar, ("flag", "unknown"))
        _check(self.batch_size >= 1, "predict", "batch_size", ">= 1", self.batch_size)
        _check(self.workers >= 0, "predict", "workers", ">= 0 (0: one per CPU core)", self.workers)
        _choice("predict", "format", self.format, OUTPUT_FORMATS)
        _choice("predict", "runtime", self.runtime, RUNTIMES)


ENGINES = ("local", "ray")  # where prepare's decoding, predict's decoding and suspects' folds run


@dataclass(frozen=True)
class ClusterParams:
    """Where the work of ``prepare``, ``predict``, ``suspects`` and ``train`` runs (docs/scale.md#ray): this
    machine, or a Ray cluster (``pip install ".[ray]"``)."""

    engine: str = "local"
    ray_address: str = ""  # "": Ray's own rule: $RAY_ADDRESS when set, else a local instance started here
    train_workers: int = 0  # Ray Train workers of `train --engine ray` (0: one per node of the cluster)

    def __post_init__(self) -> None:
        _choice("cluster", "engine", self.engine, ENGINES)
        _check(self.train_workers >= 0, "cluster", "train_workers", ">= 0 (0: one per node)", self.train_workers)


SECTIONS: dict[str, type] = {
    "ingest": IngestParams,
    "prepare": PrepareParams,
    "preprocess": PreprocessParams,
    "train": TrainParams,
    "augment": AugmentParams,
    "evaluate": EvaluateParams,
    "novelty": NoveltyParams,
    "suspects": SuspectsParams,
    "predict": PredictParams,
    "cluster": ClusterParams,
}


def _coerce(section: str, key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint; return it in the field's type."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):  # e.g. int | str: an int, or "auto"
        for option in typing.get_args(hint):
            try:
                return _coerce(section, key, value, option)
            except UserError:
                continue
        names = " or ".join("a list" if typing.get_origin(o) is tuple else o.__name__ for o in typing.get_args(hint))
        raise UserError(f"[{section}] {key} must be {names}. Received: {value!r}")
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"[{section}] {key} must be a list. Received: {value!r}")
        return tuple(_coerce(section, key, v, item_type) for v in value)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - only the types above are used
        raise TypeError(f"unsupported field type {hint}")
    if not ok:
        raise UserError(f"[{section}] {key} must be of type {hint.__name__}. Received: {value!r}")
    return value


def did_you_mean(unknown: list[str], known: set[str] | list[str]) -> str:
    """``" (did you mean 'x'?)"`` for the first unknown name close to a known one, else ""."""
    import difflib

    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]!r} for {name!r}?)" if len(unknown) > 1 else f" (did you mean {close[0]!r}?)"
    return ""


def from_dict(cls: type[T], section: str, data: dict[str, Any]) -> T:
    """Build a params dataclass from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"[{section}] must be a table. Received: {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"[{section}] unknown key(s) {unknown}{did_you_mean(unknown, known)}; "
                        f"known keys: {sorted(known)}")
    kwargs = {k: _coerce(section, k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def load(path: str | Path | None, section: str, name: str | None = None) -> Any:
    """Load one section of the params file (defaults when the file or section is absent).

    ``[overrides.<name>.<section>]`` tables, keyed by the run folder's name,
    replace keys of ``[<section>]`` for that dataset only.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise UserError(f"params file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"params file {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - set(SECTIONS) - {"overrides"})
        if unknown:
            raise UserError(f"params file {path}: unknown section(s) {unknown}{did_you_mean(unknown, SECTIONS)}; "
                            f"known: {sorted(SECTIONS)}")
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict):
        raise UserError(f"[overrides] must be a table of datasets. Received: {overrides!r}")
    for dataset, tables in overrides.items():
        bad = sorted(set(tables) - set(SECTIONS)) if isinstance(tables, dict) else [tables]
        if bad:
            raise UserError(f"[overrides.{dataset}] unknown section(s) {bad}; known: {sorted(SECTIONS)}")
    merged = dict(data.get(section, {}))
    extra = overrides.get(name, {}).get(section, {}) if name else {}
    if not isinstance(extra, dict):
        raise UserError(f"[overrides.{name}.{section}] must be a table. Received: {extra!r}")
    merged.update(extra)
    where = f"overrides.{name}.{section}" if extra else section
    try:
        return from_dict(SECTIONS[section], section, merged)
    except ValueError as exc:
        source = f"params file {path}: " if path is not None else ""  # which file to open and fix
        raise UserError(source + (f"{exc} (from [{where}])" if extra else str(exc))) from None


def to_dict(params: Any) -> dict[str, Any]:
    """A params dataclass as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}
