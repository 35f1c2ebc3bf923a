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
import pickle
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tinygpt2 import rules as R
from tinygpt2 import targets as TG
from tinygpt2.config import GPT2Config
from tinygpt2.dtypes import check_dtype
from tinygpt2.errors import CacheError, CompileError, RuleError
from tinygpt2.model import build_module
from tinygpt2.tvm_shim import (TVM_FFI_VERSION, TVM_VERSION, is_scheduled, kernel_launches, lower_host, pdl_tir_pipeline,
                                register_nvcc, relax, tirx, tvm)

__version__ = "0.1.0"
PHASES = ("build", "schedule", "lower", "codegen")
HAND_SCHEDULED = "hand-scheduled"          # rule_of's entry for a kernel that came scheduled (no rule's)
_HERE = Path(__file__).parent
# the graph, the kernels, the rule lists, our own rule and the shim (which patches DLight): what the code depends on;
# and runtime/plan.py, whose objects (the launch plans, WebGPU's expressions) an entry holds pickled
_SOURCES = [_HERE / name for name in ("compile.py", "model.py", "rules.py", "tensor_core.py", "tvm_shim.py")]
_KERNELS = sorted((_HERE.parent / "kernels").glob("*.py")) or sorted((_HERE / "kernels").glob("*.py"))
_SOURCES += _KERNELS          # editable checkout: top-level kernels/; installed: tinygpt2/kernels
_SOURCES += [p for p in (_HERE.parent / "runtime" / "plan.py", _HERE / "runtime" / "plan.py") if p.exists()][:1]
STALE_TMP_S = 24 * 3600       # a temporary entry directory this old was left by a process that died


# the model's Relax functions (model.build_module): decode_sample only on a GPU
FUNCTIONS = ("prefill", "decode", "decode_greedy", "decode_sample")


def _function_names(mod) -> set[str]:
    return {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, relax.Function)}


def cache_root() -> Path:
    return Path(os.environ.get("TINYGPT2_CACHE", Path.home() / ".cache" / "tinygpt2"))


def check_cache_root() -> Path:
    """cache_root(), created if missing; CacheError if it cannot hold entries (before a compile, not after)."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        usable = root.is_dir() and os.access(root, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        raise CacheError(f"the compile cache {root} is not a writable folder: set TINYGPT2_CACHE to one, "
                         "or pass --no-cache")
    return root


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
    executable: object = field(repr=False, default=None)    # Relax VM executable / loaded library
    from_cache: bool = False
    plans: dict = field(repr=False, default_factory=dict)    # each of FUNCTIONS the module has -> runtime.plan.Plan
    webgpu: dict | None = field(repr=False, default=None)    # see webgpu_kernels
    kernel_scripts: dict = field(repr=False, default_factory=dict)   # kernel -> scheduled TVMScript (step-through)

    @property
    def fused_decode(self) -> bool:
        """Whether decode has the hand-scheduled GPU kernels (fused attention and ln + linear; model.py)."""
        return any(ln.kernel.startswith("decode_attention") for ln in self.plans["decode"].launches)

    @property
    def folded_layernorms(self) -> bool:
        """Whether the functions take ln_1 / ln_2 folded into c_attn / c_fc (weights.fold_layernorms, the
        parameters of weights.param_names(config, folded=True)): builds with fused-decode, whose prefill
        normalizes without an affine (kernel `normalize`)."""
        return any(ln.kernel == "normalize" for ln in self.plans["prefill"].launches)

    @property
    def flash_prefill(self) -> bool:
        """Whether prefill's attention is one kernel (flash-prefill; kernels/flash_attention.py)."""
        return any(ln.kernel.startswith("flash_attention") for ln in self.plans["prefill"].launches)


def schedule(mod, target: "tvm.target.Target", rule_list: list, *, require_all: bool) -> Scheduled:
    """Apply `rule_list` to every kernel; rules are tried in order, the first match wins.

    Rules are applied one at a time (DLight skips kernels already scheduled, so this is the same as
    applying the list at once) because that is the only way to learn which rule matched which kernel.
    """
    mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(mod.functions)   # ApplyDefaultSchedule mutates
    # a kernel written already scheduled (fused-decode's, hand-softmax's: rules.py) is no rule's
    rule_of: dict[str, str | None] = {gv.name_hint: HAND_SCHEDULED if is_scheduled(f) else None
                                      for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
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
                         "tvm": TVM_VERSION, "tvm_ffi": TVM_FFI_VERSION, "tinygpt2": __version__}, sort_keys=True).encode())
    for src in _SOURCES:                     # the kernels' and the graph's own code
        h.update(src.read_bytes())
    return h.hexdigest()[:24]


def _dump(dump_dir: Path | None, name: str, text: str):
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / name).write_text(text)


def hand_kernels(target: str, rule_list, tgt=None) -> dict:
    """build_module's `gpu` and `hand`: the hand-scheduled kernels the list asks for (on a CPU only those it has:
    hand-softmax, flash-prefill). The pdl-decode entries, the cluster ones and flash-prefill-mma are dropped where
    the target (tgt, the TVM target) cannot run them (all need CUDA sm_90 or later: rules.SM90_REQUESTS;
    matmul-wgmma sm_90a itself)."""
    gpu = TG.kind(target) == "gpu"
    hand = R.hand_kernels(rule_list, TG.kind(target))
    if not TG.supports_pdl(tgt):
        hand = tuple(h for h in hand if h not in R.SM90_REQUESTS)
    if not TG.supports_wgmma(tgt):
        hand = tuple(h for h in hand if h != "matmul-wgmma")
    return {"gpu": target if gpu else None, "hand": hand}


def build_scheduled(cfg: GPT2Config, target: str = "llvm", dtype: str = "float32", rules="default", *,
                    arch: str | None = None, dump_dir: Path | None = None) -> tuple[Scheduled, "tvm.target.Target", list]:
    """Phases build + schedule (no codegen): what `explain` and the WebGPU path start from."""
    check_dtype(dtype)
    tgt = TG.make_target(target, arch)
    rule_list = R.resolve(rules, TG.kind(target))
    mod = build_module(cfg, dtype, **hand_kernels(target, rule_list, tgt))
    _dump(dump_dir, "00-build.py", mod.script())
    sched = schedule(mod, tgt, rule_list, require_all=TG.kind(target) == "gpu")
    _dump(dump_dir, "01-schedule.py", sched.mod.script())
    return sched, tgt, rule_list


def device_module(mod, kind: str):
    """The imported module of `kind` ("cuda", "webgpu", ...) under a built module, or None."""
    if mod.kind == kind:
        return mod
    for sub in mod.imports:
        found = device_module(sub, kind)
        if found is not None:
            return found
    return None


def tir_pass_context(tgt):
    """The pass options of the TIR build: on CUDA, the shared-memory copies a schedule marks async become
    cp.async (tensor-core-matmul-async; tensor_core.py). Nothing else is marked, so nothing else changes."""
    return tvm.transform.PassContext(config={"tirx.use_async_copy": tgt.kind.name == "cuda"})


def cuda_binary_at_build_time():
    """Make tvm.compile for CUDA compile the CUDA C to a binary at build time (nvcc, or NVRTC without it).

    tvm_shim.register_nvcc registers the callback that does it; without it the library carries only
    source, to be compiled at load time (NVRTC). nvcc is the default here: NVRTC needs the cuda-bindings
    package."""
    register_nvcc()
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc" if shutil.which("nvcc") else "nvrtc")


def build_cuda_kernel(func, arch: str = "sm_90a"):
    """One scheduled PrimFunc built for CUDA as the model's kernels are (a binary at build time), as `main` of a
    tvm.runtime.Executable: for the scripts that run a kernel alone (scripts/bench_tvm_*.py)."""
    cuda_binary_at_build_time()
    target = TG.make_target("cuda", arch)
    with target:
        return tvm.compile(tvm.IRModule({"main": func}), target=target)


def codegen(sched: Scheduled, tgt, *, dump_dir: Path | None = None):
    """Phases lower + codegen: a tvm.runtime.Executable."""
    if tgt.kind.name == "cuda":
        cuda_binary_at_build_time()
    # CUDA graphs: RewriteCUDAGraph (in "default_build") captures the static-shape stretches of decode
    # (everything between the attention kernels, whose shapes depend on the length m)
    config = {"relax.backend.use_cuda_graph": tgt.kind.name == "cuda"}
    try:
        with tgt, tvm.transform.PassContext(opt_level=3, config=config):
            lowered = relax.get_pipeline("default_build")(sched.mod)
        _dump(dump_dir, "02-lower.py", lowered.script())
        # on CUDA, TVM's TIR pipeline + the launch flag of the kernels that use PDL (kernels/_pdl.py)
        tir_pipeline = pdl_tir_pipeline() if tgt.kind.name == "cuda" else "default"
        with tir_pass_context(tgt):
            ex = tvm.compile(lowered, target=tgt, relax_pipeline=None, tir_pipeline=tir_pipeline)
    except Exception as e:          # TVM raises many types; one message naming the phase is what helps
        raise CompileError(f"codegen for {tgt.kind.name} failed: {str(e).strip().splitlines()[-1]}") from e
    if tgt.kind.name != "llvm":
        device_mod = device_module(ex.mod, tgt.kind.name)
        if device_mod is None:
            raise CompileError(f"the {tgt.kind.name} build has no device module: a kernel was not scheduled")
        with contextlib.suppress(Exception):
            _dump(dump_dir, f"03-{tgt.kind.name}.txt", device_mod.inspect_source())
    return ex


def webgpu_kernels(sched: Scheduled, tgt) -> dict:
    """What the WebGPU executor needs, read off TVM's own lowering (TVM ships no Python WebGPU runtime).

    Returns {"kernels": {kernel: wgsl}, "functions": {primfunc: {"params": [names],
    "launches": [{"kernel", "buffers": [param names, in binding order], "pod": [Expr, ...],
    "grid": {"blockIdx.x": Expr, ...}}]}}}. A PrimFunc may become several kernels (one per
    top-level thread-bound loop nest), launched in order.
    """
    from tinygpt2.runtime.plan import Expr

    prims = tvm.IRModule({gv: f for gv, f in sched.mod.functions_items() if isinstance(f, tirx.PrimFunc)})
    # CSE off in both lowerings below: otherwise it hoists `cse_v*` scalars into the kernels' arguments
    # differently in each, and the argument lists read off the second would not match the first's WGSL
    no_cse = tvm.transform.PassContext(config={"tirx.disable_cse_tir": True})
    with tgt, no_cse:
        ex = tvm.compile(prims, target=tgt)
    source = ex.mod.imports[0].inspect_source()
    # the source is "// Function: <name>\n//----\n<wgsl>" per kernel (each header printed twice)
    parts = re.split(r"^// Function: (\S+)\n//-+\n", source, flags=re.M)
    kernels = {}
    for name, code in zip(parts[1::2], parts[2::2]):
        if code.strip():
            kernels[name] = code
    # launches: the host side of TVM's own lowering calls each kernel with its arguments and grid
    lowered = lower_host(prims, tgt)
    functions = {}
    for gv, f in prims.functions_items():
        launches = []
        for c in kernel_launches(lowered[gv.name_hint]):
            tags = list(c.attrs.launch_params)
            args = list(c.args[1:len(c.args) - len(tags)])
            buffers = [str(a).removesuffix(".data") for a in args if str(a.ty) == "handle" or str(a).endswith(".data")]
            pod = [Expr(a) for a in args[len(buffers):]]
            dims = dict(zip(tags, c.args[len(c.args) - len(tags):]))
            launches.append({"kernel": c.args[0].value, "buffers": buffers, "pod": pod,
                             "grid": {t: Expr(e) for t, e in dims.items() if t.startswith("blockIdx")}})
        params = [p.name for p in f.params]
        # buffers a kernel uses that are not parameters: global intermediates (a layernorm's row sums
        # when no rule moved them to shared memory); TVM's host code would allocate them, we must
        for ln in launches:
            ln["buffers"] = [b if b in params or re.sub(r"_\d+$", "", b) not in params else re.sub(r"_\d+$", "", b)
                             for b in ln["buffers"]]      # lowering may rename a parameter x to x_1
        workspaces = {}
        for buf in _root_allocations(f):
            if buf.scope() == "global":
                workspaces[buf.name] = {"dtype": str(buf.dtype), "shape": [Expr(e) for e in buf.shape]}
        unknown = {b for ln in launches for b in ln["buffers"] if b not in params and b not in workspaces}
        if unknown:
            raise CompileError(f"{gv.name_hint}: kernels use buffers {sorted(unknown)} that are neither "
                               "parameters nor global allocations")
        functions[gv.name_hint] = {"params": params, "launches": launches, "workspaces": workspaces}
        for ln in launches:
            code = kernels.get(ln["kernel"])
            if code is None:
                raise CompileError(f"WGSL for {ln['kernel']} not found in the webgpu build")
            pod = re.search(r"struct PODArgs \{(.*?)\}", code, re.S)
            n_fields = len([x for x in pod.group(1).split(",") if x.strip()]) if pod else 0
            if n_fields != len(ln["pod"]) + 1:       # scalars + packGridDimX, as the host call passes them
                raise CompileError(f"{ln['kernel']}: WGSL takes {n_fields} scalars, the host passes "
                                   f"{len(ln['pod']) + 1}")
    return {"kernels": kernels, "functions": functions}


def _root_allocations(func) -> list:
    """Buffers allocated by a scheduled PrimFunc's root block (T.sblock_alloc_buffer)."""
    body = func.body
    block = getattr(body, "block", None)
    return list(block.alloc_buffers) if block is not None else []


def compile(cfg: GPT2Config, target: str = "llvm", dtype: str = "float32", rules="default", *,  # noqa: A001
            arch: str | None = None, cache: bool = True, dump_dir: Path | None = None,
            progress: bool = False) -> Compiled:
    """Compile GPT-2 of `cfg` for `target` with a rule list; reuse the on-disk cache when possible."""
    from tqdm import tqdm

    from tinygpt2.runtime.plan import build_plan

    tgt = TG.make_target(target, arch)
    rule_list = R.resolve(rules, TG.kind(target))
    names = R.describe(rule_list)
    entry = (check_cache_root() if cache else cache_root()) / cache_key(cfg, tgt, dtype, names)
    if cache and dump_dir is None and (entry / "meta.json").exists():
        try:
            return _load(entry, cfg, target, dtype, names)
        except Exception:                                     # any corrupt or unreadable entry: rebuild it
            shutil.rmtree(entry, ignore_errors=True)
    bar = tqdm(total=3, desc=f"compiling for {target}", unit="phase", leave=False,
               disable=not progress or not sys.stderr.isatty())          # no bar in logs and pipes
    bar.set_postfix_str("build + schedule")
    sched, tgt, _ = build_scheduled(cfg, target, dtype, rule_list, arch=arch, dump_dir=dump_dir)
    compiled = Compiled(cfg, target, dtype, names, sched.rule_of, None)
    compiled.plans = {fn: build_plan(sched.mod, fn) for fn in FUNCTIONS if fn in _function_names(sched.mod)}
    compiled.kernel_scripts = {gv.name_hint: f.script() for gv, f in sched.mod.functions_items()
                               if isinstance(f, tirx.PrimFunc)}
    bar.update()
    bar.set_postfix_str("lower + codegen")
    if target == "webgpu":
        compiled.webgpu = webgpu_kernels(sched, tgt)
    else:
        compiled.executable = codegen(sched, tgt, dump_dir=dump_dir)
    bar.update()
    if cache:
        bar.set_postfix_str("store")
        _store(entry, compiled, {"rule_of": sched.rule_of, "rules": names, "target": str(tgt), "dtype": dtype,
                                 "config": cfg.to_dict()})
    bar.update()
    bar.close()
    return compiled


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(entry: Path, cfg, target, dtype, names) -> Compiled:
    meta = json.loads((entry / "meta.json").read_text())
    for name, digest in meta["sha256"].items():
        if _sha256(entry / name) != digest:                 # truncated or overwritten file
            raise ValueError(f"checksum mismatch: {name}")
    compiled = Compiled(cfg, target, dtype, names, meta["rule_of"], None, from_cache=True)
    compiled.plans = pickle.loads((entry / "plans.pkl").read_bytes())
    if (entry / "kernel_scripts.json").exists():
        compiled.kernel_scripts = json.loads((entry / "kernel_scripts.json").read_text())
    if (entry / "model.so").exists():
        compiled.library = entry / "model.so"
        compiled.executable = tvm.runtime.load_module(str(compiled.library))
    if (entry / "webgpu.pkl").exists():
        compiled.webgpu = pickle.loads((entry / "webgpu.pkl").read_bytes())
    return compiled


def _store(entry: Path, compiled: Compiled, meta: dict):
    """Write atomically: into a temporary sibling directory, renamed into place when complete."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp", dir=entry.parent))
    try:
        (tmp / "plans.pkl").write_bytes(pickle.dumps(compiled.plans))
        (tmp / "kernel_scripts.json").write_text(json.dumps(compiled.kernel_scripts))
        if compiled.executable is not None:
            compiled.executable.export_library(str(tmp / "model.so"))
        if compiled.webgpu is not None:
            (tmp / "webgpu.pkl").write_bytes(pickle.dumps(compiled.webgpu))
        meta = {**meta, "sha256": {p.name: _sha256(p) for p in sorted(tmp.iterdir())}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))      # written last: marks a complete entry
        try:
            os.rename(tmp, entry)
        except OSError:
            if (entry / "meta.json").exists():                          # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
            else:                    # what is there is no entry (half deleted, say): replace it
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
        compiled.library = entry / "model.so" if compiled.executable is not None else None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sweep_stale(entry.parent)


def _sweep_stale(root: Path) -> None:
    """Remove temporary entry directories that processes killed mid-store left behind (older than a day)."""
    now = time.time()
    for d in root.glob("*.tmp*"):
        try:
            if d.is_dir() and now - d.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass
