"""Dependencies point one way: flows -> tasks -> components."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "components": {"prefect", "mlflow", "dvc", "tasks", "flows"},
    "tasks": {"flows"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package):
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package])
        for f in (ROOT / package).rglob("*.py")
        if imported_roots(f) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_the_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import mlflow\nfrom prefect import task\n")
    assert imported_roots(bad) >= {"mlflow", "prefect"}
