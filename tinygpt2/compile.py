"""The compile pipeline, in named phases, each of which can dump its IR (for teaching):

    build     model.build_module: the Relax graph + unscheduled kernels        -> 00-build.py
    schedule  apply the rule list, one rule at a time, recording which rule      -> 01-schedule.py
              scheduled which kernel; on a GPU, fail naming any kernel no rule scheduled
    lower     Relax "default_build" passes (memory planning, VM lowering; no scheduling of its own)
    codegen   TIR lowering + target code (CUDA C, WGSL, ...), then export          -> 03-<target>.txt

`tvm.compile` on a GPU target would otherwise apply TVM's own rule list; running `schedule`
ourselves and compiling with the plain "default_build" pipeline keeps the rule list ours.
Compiled libraries are cached on disk under a key of everything that changes the code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tinygpt2 import rules as R
from tinygpt2 import targets as TG
from tinygpt2.config import GPT2Config
from tinygpt2.errors import CompileError, DTypeError, RuleError
from tinygpt2.model import build_module
from tinygpt2.tvm_shim import TVM_VERSION, is_scheduled, relax, tirx, tvm

__version__ = "0.1.0"
PHASES = ("build", "schedule", "lower", "codegen")
_SOURCES = [Path(__file__).parent / "model.py", *sorted((Path(__file__).parent.parent / "kernels").glob("*.py"))]
if not _SOURCES[1:]:          # installed (not editable): kernels live in tinygpt2/kernels
    _SOURCES += sorted((Path(__file__).parent / "kernels").glob("*.py"))


def cache_root() -> Path:
    return Path(os.environ.get("TINYGPT2_CACHE", Path.home() / ".cache" / "tinygpt2"))


@dataclass
class Scheduled:
    """The result of the schedule phase."""
    mod: "tvm.IRModule"
    rule_of: dict[str, str | None]          # kernel name -> name of the rule that scheduled it (None: none did)


@dataclass
class Compiled:
    config: GPT2Config
    target: str
    dtype: str
    rules: list[str]
    rule_of: dict[str, str | None]
    library: Path | None                    # exported .so (llvm/cuda); None for webgpu
    executable: object = field(repr=False, default=None)
    from_cache: bool = False


def kernel_names(mod) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))


def schedule(mod, target: "tvm.target.Target", rule_list: list, *, require_all: bool) -> Scheduled:
    """Apply `rule_list` to every kernel; rules are tried in order, the first match wins.

    Rules are applied one at a time (DLight skips kernels already scheduled, so this is the same as
    applying the list at once) because that is the only way to learn which rule matched which kernel.
    """
    mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(mod.functions)   # ApplyDefaultSchedule mutates
    rule_of: dict[str, str | None] = {name: None for name in kernel_names(mod)}
    with target:
        for rule in rule_list:
            mod = R.dl.ApplyDefaultSchedule(rule)(mod)
            for gv, f in mod.functions_items():
                if isinstance(f, tirx.PrimFunc) and rule_of[gv.name_hint] is None and is_scheduled(f):
                    rule_of[gv.name_hint] = R.rule_name(rule)
    unscheduled = [k for k, r in rule_of.items() if r is None]
    if require_all and unscheduled:
        # an unscheduled GPU kernel would silently build as host loops and crash on device data
        raise RuleError(f"no rule in [{', '.join(R.describe(rule_list))}] scheduled kernel(s) "
                        f"{', '.join(unscheduled)}; add 'fallback' to the rule list")
    return Scheduled(mod, rule_of)


def cache_key(cfg: GPT2Config, target: "tvm.target.Target", dtype: str, rule_names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"config": cfg.to_dict(), "target": str(target), "dtype": dtype, "rules": rule_names,
                         "tvm": TVM_VERSION, "tinygpt2": __version__}, sort_keys=True).encode())
    for src in _SOURCES:                     # the kernels' and the graph's own code
        h.update(src.read_bytes())
    return h.hexdigest()[:24]


def _dump(dump_dir: Path | None, name: str, text: str):
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / name).write_text(text)


def build_scheduled(cfg: GPT2Config, target: str = "llvm", dtype: str = "float32", rules="default", *,
                    arch: str | None = None, dump_dir: Path | None = None) -> tuple[Scheduled, "tvm.target.Target", list]:
    """Phases build + schedule (no codegen): what `explain` and the WebGPU path start from."""
    if dtype not in ("float32", "float16"):
        raise DTypeError(f"unsupported dtype {dtype!r}: choose float32 or float16")
    tgt = TG.make_target(target, arch)
    rule_list = R.resolve(rules, TG.kind(target))
    mod = build_module(cfg, dtype)
    _dump(dump_dir, "00-build.py", mod.script())
    sched = schedule(mod, tgt, rule_list, require_all=TG.kind(target) == "gpu")
    _dump(dump_dir, "01-schedule.py", sched.mod.script())
    return sched, tgt, rule_list


def codegen(sched: Scheduled, tgt, *, dump_dir: Path | None = None):
    """Phases lower + codegen: a tvm.runtime.Executable."""
    try:
        with tgt:
            lowered = relax.get_pipeline("default_build")(sched.mod)
        _dump(dump_dir, "02-lower.py", lowered.script())
        ex = tvm.compile(lowered, target=tgt, relax_pipeline=None)
    except Exception as e:          # TVM raises many types; one message naming the phase is what helps
        raise CompileError(f"codegen for {tgt.kind.name} failed: {str(e).strip().splitlines()[-1]}") from e
    if tgt.kind.name != "llvm":
        if not ex.mod.imports:
            raise CompileError(f"the {tgt.kind.name} build has no device module: a kernel was not scheduled")
        with contextlib.suppress(Exception):
            _dump(dump_dir, f"03-{tgt.kind.name}.txt", ex.mod.imports[0].inspect_source())
    return ex


def compile(cfg: GPT2Config, target: str = "llvm", dtype: str = "float32", rules="default", *,  # noqa: A001
            arch: str | None = None, cache: bool = True, dump_dir: Path | None = None) -> Compiled:
    """Compile GPT-2 of `cfg` for `target` with a rule list; reuse the on-disk cache when possible."""
    tgt = TG.make_target(target, arch)
    rule_list = R.resolve(rules, TG.kind(target))
    names = R.describe(rule_list)
    entry = cache_root() / cache_key(cfg, tgt, dtype, names)
    if cache and dump_dir is None and (entry / "meta.json").exists():
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if _sha256(entry / "model.so") != meta["sha256"]:       # truncated or overwritten library
                raise ValueError("checksum mismatch")
            lib = tvm.runtime.load_module(str(entry / "model.so"))
            return Compiled(cfg, target, dtype, names, meta["rule_of"], entry / "model.so", lib, from_cache=True)
        except Exception:                                     # any corrupt or unreadable entry: rebuild it
            shutil.rmtree(entry, ignore_errors=True)
    sched, tgt, _ = build_scheduled(cfg, target, dtype, rule_list, arch=arch, dump_dir=dump_dir)
    ex = codegen(sched, tgt, dump_dir=dump_dir)
    compiled = Compiled(cfg, target, dtype, names, sched.rule_of, None, executable=ex)
    if cache:
        compiled.library = _store(entry, ex, {"rule_of": sched.rule_of, "rules": names, "target": str(tgt),
                                              "dtype": dtype, "config": cfg.to_dict()})
    return compiled


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store(entry: Path, ex, meta: dict) -> Path:
    """Export atomically: write into a temporary sibling directory, then rename it into place."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp", dir=entry.parent))
    try:
        ex.export_library(str(tmp / "model.so"))
        meta = {**meta, "sha256": _sha256(tmp / "model.so")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))      # written last: marks a complete entry
        try:
            os.rename(tmp, entry)
        except OSError:                                                 # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry / "model.so"
