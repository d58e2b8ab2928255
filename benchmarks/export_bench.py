"""Export benchmark: every format of the reference model (runs/mnist/model): size, top-1 agreement with
the bundle and accuracy on the 10k test digits, single-image latency in the format's own runtime.

    python -m benchmarks.export_bench [--model runs/mnist/model]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.common import publish

FORMATS = [("keras", "none"), ("savedmodel", "none"), ("tflite", "none"), ("tflite", "dynamic"),
           ("tflite", "float16"), ("tflite", "int8"), ("onnx", "none")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/mnist/model")
    parser.add_argument("--work", default="bench-results/export")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    import numpy as np

    from pipeline.stages.export import export

    model = Path(args.model)
    run = model.parent
    x, y = np.load(run / "X_test.npy", mmap_mode="r"), np.load(run / "y_test.npy")
    rows = []
    for fmt, quantize in FORMATS:
        info = export(model, fmt, Path(args.work) / f"{fmt}-{quantize}", quantize, x, y)
        rows.append(info)
    lines = [f"{'format':<22} {'size KB':>8} {'agreement':>10} {'accuracy':>9} {'latency ms':>11}  runtime"]
    for r in rows:
        name = r["format"] + (f" {r['quantize']}" if r["quantize"] != "none" else "")
        lines.append(f"{name:<22} {r['bytes'] / 1024:>8.1f} {r['agreement']['top1_agreement']:>10.2%} "
                     f"{r['accuracy']:>9.2%} {r['latency_ms']:>11.3f}  {r['runtime']}")
    table = "\n".join(lines)
    publish(args.out, "export", rows, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
