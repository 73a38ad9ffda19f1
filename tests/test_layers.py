"""The entry points at the repository root (main.py, run_with_submitit.py) import only the public
surface below them: nothing from tools/ and no detector's internals (the packages' layers are checked by
import-linter, `lint-imports`, whose contracts are in pyproject.toml)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(path: str):
    """Every module a file imports (absolute names), at any depth of the file."""
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def forbidden(module: str) -> bool:
    """tools.*, or models.<x> where x is not a public name of the models package (`from models import
    build_model` reads as 'models.build_model')."""
    import models
    parts = module.split(".")
    return parts[0] == "tools" or (parts[0] == "models" and len(parts) > 1 and parts[1] not in models.__all__)


@pytest.mark.parametrize("entry", ["main.py", "run_with_submitit.py"])
def test_entry_point_imports_only_public_surfaces(entry):
    bad = sorted({m for m in imported_modules(os.path.join(ROOT, entry)) if forbidden(m)})
    assert bad == []


def test_the_check_sees_a_violation(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import tools.common\nfrom models.dino.ops import MSDeformAttn\nfrom models import build_model\n")
    assert sorted(m for m in imported_modules(str(path)) if forbidden(m)) == [
        "models.dino.ops", "models.dino.ops.MSDeformAttn", "tools.common"]
