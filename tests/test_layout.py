"""Rules of the project's layout that no other test would notice breaking."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tinygpt2" / "tvm_shim.py"


def _tvm_imports(path: Path) -> list[str]:
    """'line: module' for every import of tvm or tvm_ffi (or a submodule) in a Python file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in ("tvm", "tvm_ffi")]
    return found


def test_tvm_is_imported_through_the_shim_only():
    """TVM's API drifts between releases; tinygpt2/tvm_shim.py is the one file that imports it, so that a
    rename is fixed there. Every other file -- library, kernels, runtime, scripts, examples, tests -- takes
    TVM's names from the shim."""
    files = [p for folder in ("tinygpt2", "kernels", "runtime", "scripts", "examples", "tests")
             for p in sorted((ROOT / folder).rglob("*.py")) if p != SHIM]
    assert len(files) > 50
    offenders = {str(p.relative_to(ROOT)): found for p in files if (found := _tvm_imports(p))}
    assert offenders == {}
    assert _tvm_imports(SHIM)            # (the scan does see imports: the shim's own)
