"""The house rules, checked on the code: the layers' import rules, and functions short enough to read at once."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# README "Architecture": every module's layer. A new module must take a place here.
LAYERS = {
    "shared": {"params", "artifacts", "bundle", "env", "plots", "errors", "runfolder", "cli", "compat"},
    "data": {"ingest", "decoding", "preprocess", "augment", "audit", "mnist", "census", "inputs", "similar",
             "corrections"},
    "model": {"model", "distribute", "recipe", "infer", "confident", "calibrate", "novelty"},
    "stages": {"prepare", "train", "evaluate", "predict", "predictions", "export", "exporters", "report", "compare",
               "preview",
               "suspects", "explain", "report_html"},
    "faces": {"__main__", "serve"},
}
MAY_IMPORT = {
    "shared": {"shared"},
    "data": {"shared", "data"},
    "model": {"shared", "model"},
    "stages": {"shared", "data", "model", "stages"},
    "faces": {"shared", "data", "model", "stages", "faces"},
}
MAX_LINES = 60


def _layer(module: str) -> str:
    return next(layer for layer, mods in LAYERS.items() if module in mods)


def _imports(path: Path) -> set[str]:
    """The package modules a module imports (statically: ``from . import x``, ``from .x import y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("pipeline")):
            base = (node.module or "").removeprefix("pipeline").lstrip(".")
            if base:
                found.add(base.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found - {"__version__"}


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    placed = set().union(*LAYERS.values())
    assert modules - placed == set(), "new modules must take a place in LAYERS (and the README's table)"
    assert placed - modules == set()


def test_layers_import_only_what_they_may():
    wrong = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        layer = _layer(path.stem)
        for other in _imports(path):
            if _layer(other) not in MAY_IMPORT[layer]:
                wrong.append(f"{path.stem} ({layer}) imports {other} ({_layer(other)})")
    assert wrong == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == [], f"functions over {MAX_LINES} lines: break them into named phases"
