"""The house rules, checked on the code: every module lives in its layer's folder, layers import only
what they may, and functions are short enough to read at once."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# README "Architecture": a layer is a sub-package of pipeline/; what each may import.
MAY_IMPORT = {
    "shared": {"shared"},
    "data": {"shared", "data"},
    "model": {"shared", "model"},
    "stages": {"shared", "data", "model", "stages"},
    "faces": {"shared", "data", "model", "stages", "faces"},
}
TOP_LEVEL = {"__init__.py", "__main__.py"}  # the package's version and `python -m pipeline`
MAX_LINES = 60


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _imports(path: Path) -> set[str]:
    """The layers a module imports from (``from pipeline.<layer>[.<module>] import ...``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import; write `from pipeline.<layer> import ...`"
            parts = (node.module or "").split(".")
            if parts[0] == "pipeline" and len(parts) > 1:
                found.add(parts[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return found


def test_every_module_is_in_a_layer_folder():
    loose = {p.name for p in PACKAGE.glob("*.py")} - TOP_LEVEL
    assert loose == set(), "new modules go into one of " + ", ".join(f"pipeline/{g}/" for g in MAY_IMPORT)
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(MAY_IMPORT)


def test_layers_import_only_what_they_may():
    wrong = []
    for path in _modules():
        if path.parent == PACKAGE:
            continue  # __main__: a face
        layer = path.parent.name
        for other in _imports(path) - MAY_IMPORT[layer]:
            wrong.append(f"{layer}/{path.name} imports from {other}")
    assert wrong == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == [], f"functions over {MAX_LINES} lines: break them into named phases"
