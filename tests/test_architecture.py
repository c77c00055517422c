"""The layers of docs/architecture.md hold: every import inside tract_eval points to a lower floor.

A floor is a top-level module or a subpackage; imports inside one subpackage are free. Imports inside
functions count too (the package defers heavy ones there), and so do the command modules ``cli``
imports by name. A new module must be given a floor here and in docs/architecture.md.
"""
from __future__ import annotations

import ast
from pathlib import Path

import tract_eval

PACKAGE = Path(tract_eval.__file__).parent

# floor -> units; the same table as docs/architecture.md ("__init__" is the package's own __init__.py)
FLOORS = {
    12: ["__main__"],
    11: ["cli"],
    10: ["experiments", "serve"],
    9: ["commands", "__init__", "integrations"],
    8: ["api", "training"],
    7: ["runner"],
    6: ["identity"],
    5: ["judges", "reports"],
    4: ["backends", "benchmarks"],
    3: ["judge_config"],
    2: ["prompts", "conversion", "cliargs", "metrics", "store"],
    1: ["cards", "models", "protocol", "records", "registry"],
    0: ["errors", "candidates", "parsing", "hub", "redaction", "progress"],
}
FLOOR_OF = {unit: floor for floor, units in FLOORS.items() for unit in units}


def _unit(dotted: str) -> str:
    """``tract_eval.judges.base`` -> ``judges``; ``tract_eval`` (or its ``__version__``) -> ``__init__``."""
    parts = dotted.split(".")
    return "__init__" if len(parts) == 1 or parts[1] == "__version__" else parts[1]


def _module_and_package(path: Path) -> tuple[str, str]:
    parts = ["tract_eval", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every tract_eval import in the file, relative ones resolved."""
    _, package = _module_and_package(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:
                found.extend((node.lineno, ".".join([*base, alias.name])) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tract_eval"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.startswith("tract_eval"))
    return found


def _source_unit(path: Path) -> str:
    return "__init__" if path == PACKAGE / "__init__.py" else _unit(_module_and_package(path)[0])


def test_every_module_has_a_floor():
    units = {_source_unit(p) for p in PACKAGE.rglob("*.py")}
    assert not units - set(FLOOR_OF), f"give these a floor here and in docs/architecture.md: {sorted(units - set(FLOOR_OF))}"


def test_no_import_points_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _source_unit(path)
        for line, target in _imported(path):
            unit = _unit(target)
            if unit != source and FLOOR_OF[unit] >= FLOOR_OF[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} (floor {FLOOR_OF[source]}) "
                              f"imports {target} (floor {FLOOR_OF[unit]})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_cli_command_modules_sit_below_the_cli():
    from tract_eval.cli import COMMAND_MODULES

    assert all(FLOOR_OF[_unit(name)] < FLOOR_OF["cli"] for name in COMMAND_MODULES)


def test_reports_load_no_model():
    """Reports read stored runs: none of them imports a layer that loads or runs a model."""
    model_layers = {"backends", "judges", "runner", "api", "models", "training", "experiments", "commands"}
    hits = [f"{p.name}: {target}" for p in (PACKAGE / "reports").rglob("*.py")
            for _, target in _imported(p) if _unit(target) in model_layers]
    assert not hits, hits


def test_the_architecture_page_shows_these_floors():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for floor, units in FLOORS.items():
        row = next((line for line in page.splitlines() if line.startswith(f"| {floor} |")), None)
        assert row is not None, f"docs/architecture.md has no row for floor {floor}"
        for unit in units:
            shown = "the package's `__init__`" if unit == "__init__" else f"`{unit}`"
            assert shown in row, f"docs/architecture.md floor {floor} does not list {shown}"


def test_the_engine_sits_below_the_backend_adapters():
    """backends/engine (the transformers judge loop behind its contract) imports, of the backends, only
    ``backends.base`` (requests and completions): the adapters (transformers_backend, ...) import it."""
    engine = PACKAGE / "backends" / "engine"
    hits = [f"{p.relative_to(PACKAGE.parent)}:{line}: {target}" for p in sorted(engine.rglob("*.py"))
            for line, target in _imported(p)
            if target.startswith("tract_eval.backends") and not target.startswith("tract_eval.backends.engine")
            and target != "tract_eval.backends.base"]
    assert not hits, "the engine imports a backend adapter:\n" + "\n".join(hits)
