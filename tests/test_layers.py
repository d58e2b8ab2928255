"""The house rules, checked on the code (docs/architecture.md): every module lives in its layer's
folder, layers import only what they may, a stage never imports another stage, a face uses only a
stage's entry points, shared never names a stage, every folder under stages/ is a command, no two
classes share a name, and functions are short enough to read at once."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# A layer is a sub-package of pipeline/; what each may import.
MAY_IMPORT = {
    "shared": {"shared"},
    "data": {"shared", "data"},
    "model": {"shared", "model"},
    "stages": {"shared", "data", "model", "stages"},
    "faces": {"shared", "data", "model", "stages", "faces"},
}
TOP_LEVEL = {"__init__.py", "__main__.py"}  # the package's version and `python -m pipeline`
ENTRY_POINTS = {"main", "build_parser", "resolve_args"}  # what a face may take from a stage
MAX_LINES = 60


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def _stage(path: Path) -> str | None:
    """The stage a module belongs to (``stages/train.py`` -> train, ``stages/report/sections.py`` -> report)."""
    parts = path.relative_to(PACKAGE).parts
    return Path(parts[1]).stem if parts[0] == "stages" and parts[1] != "__init__.py" else None


def _imports(path: Path) -> list[tuple[list[str], list[str]]]:
    """(module path split at dots, names imported) of every ``pipeline.`` import of a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import; write `from pipeline.<layer> import ...`"
            parts = (node.module or "").split(".")
            if parts[0] == "pipeline" and len(parts) > 1:
                found.append((parts, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name.split("."), []) for a in node.names if a.name.startswith("pipeline.")]
    return found


def test_every_module_is_in_a_layer_folder():
    loose = {p.name for p in PACKAGE.glob("*.py")} - TOP_LEVEL
    assert loose == set(), "new modules go into one of " + ", ".join(f"pipeline/{g}/" for g in MAY_IMPORT)
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(MAY_IMPORT)


def test_layers_import_only_what_they_may():
    wrong = []
    for path in _modules():
        layer = _layer(path)
        for parts, _ in _imports(path):
            if parts[1] not in MAY_IMPORT[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports from {parts[1]}")
    assert wrong == []


def test_a_stage_never_imports_another_stage():
    wrong = []
    for path in _modules():
        mine = _stage(path)
        for parts, names in _imports(path):
            if parts[1] != "stages" or mine is None:
                continue
            other = parts[2] if len(parts) > 2 else None
            targets = [other] if other else names  # `from pipeline.stages import x` names the stages
            wrong += [f"{path.relative_to(PACKAGE)} imports stage {t}" for t in targets if t != mine]
    assert wrong == [], "share a core in model/ or data/ instead"


def test_faces_use_only_the_entry_points_of_stages():
    wrong = []
    for path in _modules():
        if _layer(path) != "faces":
            continue
        for parts, names in _imports(path):
            if parts[1] == "stages" and (len(parts) < 3 or set(names) - ENTRY_POINTS):
                wrong.append(f"{path.relative_to(PACKAGE)}: {'.'.join(parts)} {names}")
    assert wrong == []


def test_shared_never_names_a_stage_or_a_face():
    stages = {_stage(p) for p in _modules()} - {None}
    wrong = []
    for path in _modules():
        if _layer(path) != "shared":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if "pipeline.stages" in node.value or "pipeline.faces" in node.value:
                    wrong.append(f"{path.name}: {node.value!r}")
    assert stages and wrong == []


def test_stages_holds_only_commands():
    from pipeline.faces.commands import COMMANDS

    commands = {module.rsplit(".", 1)[-1] for module, _ in COMMANDS.values() if module.startswith("pipeline.stages.")}
    found = {_stage(p) for p in _modules()} - {None}
    assert found == commands, "a helper that is not a command lives in model/, data/ or shared/"


def test_no_two_classes_share_a_name():
    seen: dict[str, str] = {}
    twice = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.col_offset == 0:
                where = str(path.relative_to(PACKAGE))
                if node.name in seen:
                    twice.append(f"{node.name}: {seen[node.name]} and {where}")
                seen[node.name] = where
    assert twice == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == [], f"functions over {MAX_LINES} lines: break them into named phases"
