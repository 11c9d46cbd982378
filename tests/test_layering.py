"""The library's core stands on its own: it does not import the lab (rgtp.lab: generated sets, the benchmark, the
small models' recipes). Only the command line and the video runner reach the lab, inside the functions that need it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import rgtp

PACKAGE = Path(rgtp.__file__).resolve().parent
LAB = PACKAGE / "lab"
# may import the lab inside a function (rgtp bench, demo, train, the datasets of evaluation and training)
LAZY_LAB_IMPORTS = {"cli/bench.py", "cli/video.py", "cli/train.py", "cli/common.py", "run.py"}


def core_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if LAB not in p.parents)


def core_modules() -> list[str]:
    names = []
    for path in core_files():
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_the_core_leaves_the_lab_unimported() -> None:
    """Every core module (the readers, training, the CLI and its parser, ...) imports without the lab."""
    script = f"""
import importlib, json, sys
skipped = {{}}
for name in {core_modules()!r}:
    if name == "rgtp.__main__":
        continue
    try:
        importlib.import_module(name)
    except ImportError as exc:  # an optional dependency (transformers, timm...) that is not installed here
        if (exc.name or "").startswith("rgtp"):
            raise
        skipped[name] = exc.name
import rgtp.cli
rgtp.cli.build_parser()
print(json.dumps({{"lab": sorted(m for m in sys.modules if m == "rgtp.lab" or m.startswith("rgtp.lab.")),
                   "skipped": skipped}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["lab"] == [], f"importing the core imported the lab: {result['lab']}"
    for module in ("rgtp.cli", "rgtp.run", "rgtp.training", "rgtp.data.registry", "rgtp.presets", "rgtp.build"):
        assert module not in result["skipped"]


def _lab_imports(tree: ast.Module) -> list[tuple[int, bool]]:
    """(line, inside a function) of every import of rgtp.lab in a module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module is not None and child.level == 0:
                names = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
            if any(n == "rgtp.lab" or n.startswith("rgtp.lab.") for n in names):
                found.append((child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return found


def test_no_core_module_imports_the_lab() -> None:
    """No import of rgtp.lab at module level in the core (``if TYPE_CHECKING:`` blocks included); inside functions
    only in the command line and the video runner."""
    assert len(core_files()) > 50 and not any(LAB in p.parents for p in core_files())
    offences = []
    for path in core_files():
        for line, in_function in _lab_imports(ast.parse(path.read_text(), str(path))):
            if not in_function or path.relative_to(PACKAGE).as_posix() not in LAZY_LAB_IMPORTS:
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert not offences, f"the core imports the lab: {offences}"


def test_the_lab_imports_are_found() -> None:
    """The checker sees every form of import (it is not vacuous)."""
    code = "import rgtp.lab\nfrom rgtp.lab.data import shapes\nfrom rgtp import lab\ndef f():\n    import rgtp.lab.x\n"
    assert _lab_imports(ast.parse(code)) == [(1, False), (2, False), (3, False), (5, True)]


def test_the_cores_copies_of_the_lab_class_lists_agree() -> None:
    """The presets and the shipped weights' descriptions hold the small models' classes as data (the core cannot
    import the lab's lists): they must agree with the lists."""
    from rgtp import presets
    from rgtp.build import BUNDLED
    from rgtp.lab.data.motions import MOTION_CLASSES
    from rgtp.lab.data.shapes import SHAPES_CLASSES

    assert (len(SHAPES_CLASSES), len(MOTION_CLASSES)) == (presets.SHAPES_NUM_CLASSES, presets.MOTIONS_NUM_CLASSES)
    shapes = BUNDLED["shapes_det"].outputs
    assert shapes.startswith(f"{len(SHAPES_CLASSES)} shape classes: ") and shapes.endswith(", ".join(SHAPES_CLASSES))
