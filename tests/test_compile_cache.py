"""The compiled-model cache's store: atomic, and it repairs what a killed or half-finished process left."""

import json
import os
import time
from types import SimpleNamespace

from tinygpt2 import compile as C


def _compiled(marker: str):
    """What _store reads off a Compiled: launch plans and kernel scripts (no library: nothing to export)."""
    return SimpleNamespace(plans={"marker": marker}, kernel_scripts={"k": marker}, executable=None, webgpu=None,
                           library=None)


def _scripts(entry):
    return json.loads((entry / "kernel_scripts.json").read_text())["k"]


def test_a_store_is_complete_and_leaves_no_temporary_directory(tmp_path):
    entry = tmp_path / "entry"
    C._store(entry, _compiled("a"), {"rules": []})
    meta = json.loads((entry / "meta.json").read_text())
    assert set(meta["sha256"]) == {"plans.pkl", "kernel_scripts.json"}
    assert _scripts(entry) == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_an_entry_without_meta_json_is_replaced(tmp_path):
    """A directory without meta.json (a removal cut short, say) is no entry: the next store replaces it,
    rather than taking it for another process's finished entry and never caching again."""
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "plans.pkl").write_bytes(b"half")
    C._store(entry, _compiled("b"), {"rules": []})
    assert (entry / "meta.json").exists() and _scripts(entry) == "b"


def test_a_complete_entry_written_meanwhile_is_kept(tmp_path):
    """Two processes compiling the same entry: the first complete one stays, the second's copy is dropped."""
    entry = tmp_path / "entry"
    C._store(entry, _compiled("first"), {"rules": []})
    C._store(entry, _compiled("second"), {"rules": []})
    assert _scripts(entry) == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_temporary_directories_of_killed_processes_are_swept(tmp_path):
    old, young = tmp_path / "x.tmp123", tmp_path / "y.tmp456"
    for d in (old, young):
        d.mkdir()
        (d / "plans.pkl").write_bytes(b"partial")
    day_ago = time.time() - C.STALE_TMP_S - 60
    os.utime(old, (day_ago, day_ago))
    C._store(tmp_path / "entry", _compiled("c"), {"rules": []})
    assert not old.exists()                  # left by a process that died a day ago
    assert young.exists()                    # may be another process's store in progress
