"""Loading a file of scripts/ as a module (they are not a package; tests import their pure parts)."""

import importlib.util
from pathlib import Path


def load_script(name: str):
    """scripts/<name>.py, imported under its name."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
