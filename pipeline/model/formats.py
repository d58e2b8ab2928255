"""The export formats, as a registry: each :class:`Format` is one entry (name, file name, writer,
runtime reader, where its metadata lives, and the loader ``predict_example.py`` uses), so adding a
format is adding an entry (and its test).

| format | runtime | inside the file |
|---|---|---|
| ``keras`` | Keras | – (the bundle's own ``.keras``) |
| ``savedmodel`` | TensorFlow | – |
| ``tflite`` (``--quantize none|dynamic|float16|int8``) | LiteRT (``ai-edge-litert``; TensorFlow's own interpreter is deprecated) | TFLite metadata entries ``labels.json``, ``preprocess.json`` |
| ``onnx`` | ONNX Runtime | ``metadata_props`` ``labels``, ``preprocess`` |

ONNX uses Keras 3's own ``model.export(format="onnx")`` (through tf2onnx) on a functional view of the
model with the outputs :data:`OUTPUTS` (the probabilities first): the same file is the bundle's model
for the light runtime (``bundle.RUNTIME_MODEL``, written by ``train``), which :class:`OnnxRunner` runs
for :mod:`pipeline.model.infer`. onnx, tf2onnx and LiteRT are the optional extra ``pip install -e
.[export]``; ONNX Runtime is a base dependency (the light runtime).
"""
from __future__ import annotations

import json
import tempfile
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared import bundle
from pipeline.shared.errors import UserError

QUANTIZE = ("none", "dynamic", "float16", "int8")
META_KEYS = (bundle.LABELS, bundle.PREPROCESS)  # the metadata entries inside a file: the bundle's own files


def _need(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = "runtime" if module == "onnxruntime" else "export"
        raise UserError(f"{what} needs the optional packages: pip install -e '.[{extra}]' "
                        f"(make setup); {module} is missing") from None


# ---------------------------------------------------------------- TFLite
def to_tflite(model: Any, quantize: str = "none", representative: np.ndarray | None = None,
              io_type: str = "int8") -> bytes:
    """The Keras model as a TFLite flatbuffer (via a temporary SavedModel).

    ``dynamic``: 8-bit weights, float activations; ``float16``: 16-bit float weights; ``int8``:
    full-integer (weights and activations), calibrated on ``representative`` images, with
    ``io_type`` (int8 or uint8) input and output.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        model.export(Path(tmp) / "sm", format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"))
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            if representative is None or not len(representative):
                raise UserError("--quantize int8 needs representative images (the run's training split)")
            converter.representative_dataset = lambda: ([np.asarray(x[None], np.float32)] for x in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io_type)
        return converter.convert()


def with_tflite_metadata(flatbuffer: bytes, entries: dict[str, bytes]) -> bytes:
    """The flatbuffer with ``entries`` added as TFLite metadata (a named buffer each), as TFLite's
    metadata writers do; interpreters ignore them, readers find them by name."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = list(model.metadata or [])
    for name, data in entries.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(data, np.uint8)
        model.buffers.append(buf)
        meta = schema.MetadataT()
        meta.name, meta.buffer = name, len(model.buffers) - 1
        model.metadata.append(meta)
    builder = flatbuffers.Builder(len(flatbuffer) + sum(len(d) for d in entries.values()) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_metadata(flatbuffer: bytes) -> dict[str, bytes]:
    """The named metadata entries of a TFLite file (read with LiteRT's schema, no TensorFlow)."""
    schema = _need("ai_edge_litert.schema_py_generated", "reading TFLite metadata")
    model = schema.Model.GetRootAs(flatbuffer, 0)
    out = {}
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        out[meta.Name().decode("utf-8")] = model.Buffers(meta.Buffer()).DataAsNumpy().tobytes()
    return out


class TFLiteRunner:
    """A TFLite model in LiteRT's interpreter: float images in, float probabilities out (quantized
    input and output are converted with the tensors' own scale and zero point)."""

    def __init__(self, flatbuffer: bytes) -> None:
        interpreter = _need("ai_edge_litert.interpreter", "running TFLite models")
        self.interp = interpreter.Interpreter(model_content=flatbuffer)
        self.inp, self.out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self._size = None

    def __call__(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch):
            block = np.asarray(x[i:i + batch], np.float32)
            if len(block) != self._size:
                self.interp.resize_tensor_input(self.inp["index"], list(block.shape))
                self.interp.allocate_tensors()
                self._size = len(block)
            scale, zero = self.inp["quantization"]
            if self.inp["dtype"] != np.float32:
                info = np.iinfo(self.inp["dtype"])
                block = np.clip(np.rint(block / scale + zero), info.min, info.max).astype(self.inp["dtype"])
            self.interp.set_tensor(self.inp["index"], block)
            self.interp.invoke()
            got = self.interp.get_tensor(self.out["index"]).copy()
            scale, zero = self.out["quantization"]
            outs.append((got.astype(np.float32) - zero) * scale if self.out["dtype"] != np.float32 else got)
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------- ONNX
# The ONNX model's outputs, in order: the probabilities first (what a client reading output 0 gets), then
# what the bundle's inference needs besides them (pipeline.model.infer): the logits, the novelty
# detector's features and the convolution features its strokes classifier reads. A model has those of
# them its layers have (an older one without a ``logits`` layer: the probabilities only).
OUTPUTS = ("probs", "logits", "features", "conv")
PROBS, LOGITS, FEATURES, CONV = OUTPUTS


def _outputs_of(model: Any) -> dict[str, Any]:
    """The Keras model's tensors for :data:`OUTPUTS` (those it has), by name."""
    from pipeline.model.model import LOGITS_LAYER, feature_layer, strokes_layer

    names = [layer.name for layer in model.layers]
    layers = {PROBS: names[-1], LOGITS: LOGITS_LAYER if LOGITS_LAYER in names else None,
              FEATURES: feature_layer(model), CONV: strokes_layer(model)}
    return {key: model.get_layer(name).output for key, name in layers.items() if name is not None}


def _rename_outputs(proto: Any, names: list[str]) -> None:
    """Give the graph's outputs our names (the converter calls them ``Identity:0``...)."""
    for output, name in zip(proto.graph.output, names):
        old = output.name
        for node in proto.graph.node:
            node.output[:] = [name if o == old else o for o in node.output]
            node.input[:] = [name if i == old else i for i in node.input]
        output.name = name


def to_onnx(model: Any, path: Path, metadata: dict[str, str]) -> list[str]:
    """The Keras model as ONNX (Keras' own exporter, through tf2onnx), its outputs :data:`OUTPUTS` (those
    it has), ``metadata`` in its metadata_props; the output names."""
    import keras

    onnx = _need("onnx", "--format onnx")
    _need("tf2onnx", "--format onnx")
    tensors = _outputs_of(model)
    graph = keras.Model(model.inputs[0], list(tensors.values()))
    graph(np.zeros((1, *model.input_shape[1:]), np.float32))  # Keras' ONNX exporter wants a called model
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        graph.export(str(raw), format="onnx", verbose=False)
        proto = onnx.load(str(raw))
    _rename_outputs(proto, list(tensors))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return list(tensors)


def write_runtime_model(model: Any, path: Path, metadata: dict[str, str], probe: np.ndarray) -> dict[str, Any]:
    """The bundle's model for the light runtime (:func:`to_onnx`), checked against Keras on ``probe`` images;
    what ``bundle.json`` records of it (outputs, largest probability difference)."""
    names = to_onnx(model, path, {k.removesuffix(".json"): v for k, v in metadata.items()})
    probe = np.asarray(probe, np.float32)
    diff = float(np.max(np.abs(OnnxRunner(path)(probe) - np.asarray(model(probe, training=False))))) \
        if len(probe) else None
    return {"format": "onnx", "outputs": names, "checked_images": int(len(probe)), "max_abs_prob_diff": diff}


class OnnxRunner:
    """An ONNX model in ONNX Runtime (CPU): called, the first output (the probabilities); :meth:`outputs`,
    every output by name."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        ort = _need("onnxruntime", "running ONNX models")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per physical core
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def input_shape(self) -> tuple[Any, ...]:
        return tuple(self.session.get_inputs()[0].shape[1:])

    @property
    def output_width(self) -> Any:
        return self.session.get_outputs()[0].shape[-1]

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of one batch, by name."""
        return dict(zip(self.names, self.session.run(None, {self.name: np.ascontiguousarray(x, np.float32)})))

    def __call__(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        return np.concatenate([self.session.run(self.names[:1], {self.name: np.asarray(x[i:i + batch], np.float32)})[0]
                               for i in range(0, len(x), batch)])


# ---------------------------------------------------------------- SavedModel, Keras
class SavedModelRunner:
    def __init__(self, folder: Path) -> None:
        import tensorflow as tf

        self.loaded = tf.saved_model.load(str(folder))

    def __call__(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        import tensorflow as tf

        return np.concatenate([np.asarray(self.loaded.serve(tf.constant(x[i:i + batch], tf.float32)))
                               for i in range(0, len(x), batch)])


class KerasRunner:
    def __init__(self, path: Path) -> None:
        import keras

        self.model = keras.models.load_model(path, compile=False, safe_mode=True)

    def __call__(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        return self.model.predict(x, batch_size=batch, verbose=0)


def metadata_strings(labels: dict[str, int], preprocess: dict[str, Any]) -> dict[str, str]:
    """The label map and preprocessing config as the JSON texts that travel inside the file."""
    return {bundle.LABELS: json.dumps(labels, ensure_ascii=False),
            bundle.PREPROCESS: json.dumps(preprocess, ensure_ascii=False)}


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Export:
    """What a writer gets: the model, its bundle file, the metadata texts and the options."""

    model: Any
    model_file: Path                    # the bundle's .keras
    metadata: dict[str, str]            # labels.json / preprocess.json texts
    quantize: str = "none"
    representative: np.ndarray | None = None  # training images, for int8 calibration
    io_type: str = "int8"


@dataclass(frozen=True)
class Format:
    """One export format."""

    name: str
    file: str                                  # the model's name in the export folder
    runtime: str                               # the module that runs it
    pip: str                                   # what to pip install for that runtime
    write: Callable[[Export, Path], None]
    read: Callable[[Path], Callable[[np.ndarray], np.ndarray]]  # the file in its runtime: images -> probabilities
    metadata_inside: bool                      # labels and preprocessing travel inside the file
    loader: str                                # predict_example.py's load_model() for this format
    quantize: tuple[str, ...] = ("none",)
    bundle_runtime: bool = False               # the file is the bundle's own model for the light runtime


def _write_keras(e: Export, target: Path) -> None:
    shutil.copyfile(e.model_file, target)


def _write_savedmodel(e: Export, target: Path) -> None:
    e.model.export(target, format="tf_saved_model", verbose=False)


def _write_tflite(e: Export, target: Path) -> None:
    flat = to_tflite(e.model, e.quantize, e.representative, e.io_type)
    target.write_bytes(with_tflite_metadata(flat, {k: v.encode() for k, v in e.metadata.items()}))


def _write_onnx(e: Export, target: Path) -> None:
    to_onnx(e.model, target, {k.removesuffix(".json"): v for k, v in e.metadata.items()})


_KERAS_LOADER = '''def load_model():
    import keras

    model = keras.models.load_model(MODEL, compile=False, safe_mode=True)
    return (lambda x: model.predict(x, verbose=0)), {}'''

_SAVEDMODEL_LOADER = '''def load_model():
    import tensorflow as tf

    loaded = tf.saved_model.load(str(MODEL))
    return (lambda x: loaded.serve(tf.constant(x, tf.float32)).numpy()), {}'''

_ONNX_LOADER = '''def load_model():
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    inside = {f"{k}.json": v for k, v in meta.items() if k in ("labels", "preprocess")}
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x.astype(np.float32)})[0]), inside'''

_TFLITE_LOADER = '''def load_model():
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    data = MODEL.read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    inside = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name = entry.Name().decode()
        if name in ("labels.json", "preprocess.json"):  # the converter adds entries of its own
            inside[name] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x):
        if inp["dtype"] != np.float32:  # a full-integer model: quantize the input, dequantize the output
            scale, zero = inp["quantization"]
            lo, hi = np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max
            x = np.clip(np.rint(x / scale + zero), lo, hi)
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        return y
    return run, inside'''

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("keras", "model.keras", "keras", "keras tensorflow-cpu", _write_keras, KerasRunner, False,
           _KERAS_LOADER),
    Format("savedmodel", "saved_model", "tensorflow", "tensorflow-cpu", _write_savedmodel, SavedModelRunner, False,
           _SAVEDMODEL_LOADER),
    Format("tflite", "model.tflite", "ai_edge_litert", "ai-edge-litert", _write_tflite,
           lambda path: TFLiteRunner(path.read_bytes()), True, _TFLITE_LOADER, QUANTIZE),
    Format("onnx", bundle.RUNTIME_MODEL, "onnxruntime", "onnxruntime", _write_onnx, OnnxRunner, True, _ONNX_LOADER,
           bundle_runtime=True),
)}
