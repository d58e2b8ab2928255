"""What every benchmark does with its result: print the table, keep it as JSON and text."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def mean_sd(values: list[float]) -> str:
    """Percent, mean ± sample sd (0 for one value)."""
    import numpy as np

    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1) if len(values) > 1 else 0:.2f}"


def publish(out: str | Path, name: str, result: Any, table: str) -> None:
    """Print ``table`` and write ``<out>/<name>.json`` and ``<out>/<name>.txt``."""
    print(table)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.txt").write_text(table + "\n")
