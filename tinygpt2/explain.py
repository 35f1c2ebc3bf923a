"""`explain`: for a model, a target and a rule list, what each kernel became.

For every kernel (PrimFunc) of `prefill` and `decode`: how many launches of that function use it,
which rule of the list scheduled it (or none), and the launch it became -- grid and block size
(symbolic in n, the new tokens, and m, the sequence length), shared memory per block, vector width,
unrolling. On request, its TVMScript before and after scheduling and its generated code (CUDA C,
WGSL, Metal, AMDGPU assembly or LLVM IR, CPU assembly), and a unified diff against another rule list.

Where the numbers come from:
    rule                 compile.build_scheduled(...).rule_of (the rules are applied one at a time)
    calls                runtime.plan.build_plan(scheduled module, function): the launches using it
    grid, block, shared  TVM's own lowering of the scheduled TIR (tvm.s_tir.pipeline): each device
                         kernel's launch parameters as the host code passes them, and its shared
                         allocations after buffer compaction (what a block really allocates, which
                         the scheduled TIR's T.sblock_alloc_buffer shapes are not). A PrimFunc may
                         become several device kernels (one per top-level thread-bound loop nest).
    vector, unroll       the scheduled TIR: T.vectorized loop extents, pragma_auto_unroll_max_step
                         annotations, T.unroll loops
Nothing is run and no weights are loaded: only the model's config is needed.

    from tinygpt2.explain import explain
    e = explain(cfg, "cuda", rules="default", show=("after", "code"), kernels=["linear_qkv"])
    print(e.table()); print(e.code["linear_qkv"])
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinygpt2 import rules as R
from tinygpt2 import targets as TG
from tinygpt2.config import GPT2Config
from tinygpt2.errors import CheckpointError, CompileError, ExplainError
from tinygpt2.weights import hub_config, preset_config

FUNCTIONS = ("prefill", "decode")
SHOW = ("before", "after", "code", "ir")      # ir: LLVM IR (llvm and rocm targets)
CODE_LANGUAGE = {"cuda": "CUDA C", "webgpu": "WGSL", "metal": "Metal", "rocm": "AMDGPU assembly",
                 "llvm": "CPU assembly"}


# ----------------------------------------------------------------------------------------------- data

@dataclass
class Launch:
    """One device kernel of a PrimFunc, as the host code launches it."""
    kernel: str                           # device kernel name, e.g. "linear_qkv_kernel"
    grid: list[str]                       # blockIdx.x, .y, .z extents (expressions in n, m)
    block: list[str]                      # threadIdx.x, .y, .z extents
    shared_bytes: int | str               # per block: static shared allocations + dynamic shared memory
    local_bytes: int | str                # per thread: local arrays (registers, if they fit)
    cluster: int = 1                      # CUDA: blocks a thread-block cluster (clusterCtaIdx.x), 1: none


@dataclass
class KernelInfo:
    function: str                         # "prefill" or "decode"
    name: str                             # the PrimFunc, e.g. "linear_qkv" (decode's are suffixed _n1)
    calls: int                            # launches of `function` that call it
    call_sites: list[str]                 # their names in the plan, e.g. ["h0_qkv", "h1_qkv"]
    rule: str | None                      # the rule that scheduled it; None: no rule did
    launches: list[Launch] = field(default_factory=list)
    vector: list[int] = field(default_factory=list)           # distinct T.vectorized extents
    unroll: list[int] = field(default_factory=list)           # distinct pragma_auto_unroll_max_step values
    unrolled_loops: int = 0                                    # T.unroll loops
    parallel: list[str] = field(default_factory=list)          # CPU: T.parallel loop extents
    workspace_bytes: int | str = 0        # global intermediates the PrimFunc allocates (unscheduled reductions)

    # one-cell renderings, for the table and the diff
    def grid_text(self) -> str:
        if self.launches:
            return "; ".join(_dims(ln.grid) + (f" in clusters of {ln.cluster}" if ln.cluster > 1 else "")
                             for ln in self.launches)
        return f"parallel {' × '.join(self.parallel)}" if self.parallel else "-"

    def block_text(self) -> str:
        return "; ".join(_dims(ln.block) for ln in self.launches) or "-"

    def shared_text(self) -> str:
        sizes = [ln.shared_bytes for ln in self.launches]
        return "; ".join(_bytes(s) for s in sizes) if any(s != 0 for s in sizes) else "-"

    def vector_text(self) -> str:
        return ",".join(map(str, self.vector)) or "-"

    def unroll_text(self) -> str:
        parts = [",".join(map(str, self.unroll))] if self.unroll else []
        if self.unrolled_loops:
            parts.append(f"{self.unrolled_loops} loop{'s' * (self.unrolled_loops > 1)}")
        return " + ".join(parts) or "-"

    def row(self) -> dict:
        return {"function": self.function, "kernel": self.name, "calls": self.calls, "rule": self.rule or "-",
                "grid": self.grid_text(), "block": self.block_text(), "shared": self.shared_text(),
                "vector": self.vector_text(), "unroll": self.unroll_text()}

    def summary(self) -> str:
        """One line per kernel: what `diff` compares."""
        r = self.row()
        workspace = f" workspace={_bytes(self.workspace_bytes)}" if self.workspace_bytes != 0 else ""
        return (f"{r['function']} {r['kernel']}: rule={r['rule']} calls={r['calls']} grid={r['grid']} "
                f"block={r['block']} shared={r['shared']} vector={r['vector']} unroll={r['unroll']}{workspace}")


COLUMNS = [("function", "function"), ("kernel", "kernel"), ("calls", "calls"), ("rule", "rule"), ("grid", "grid"),
           ("block", "block"), ("shared", "shared mem"), ("vector", "vector"), ("unroll", "unroll")]


@dataclass
class Explanation:
    model: str
    target: str                           # target name (llvm, cuda, webgpu, rocm, metal)
    target_str: str                       # the TVM target
    dtype: str
    rules: list[str]                      # the resolved rule list (rules.describe)
    kernels: list[KernelInfo]             # one per kernel per function, in order of first launch
    before: dict[str, str] = field(default_factory=dict)     # kernel -> TVMScript before scheduling
    after: dict[str, str] = field(default_factory=dict)      # kernel -> TVMScript after scheduling
    code: dict[str, str] = field(default_factory=dict)       # kernel -> its generated code
    ir: dict[str, str] = field(default_factory=dict)         # kernel -> LLVM IR (llvm, rocm)
    notes: list[str] = field(default_factory=list)

    @property
    def rule_of(self) -> dict[str, str | None]:
        return {k.name: k.rule for k in self.kernels}

    def table(self) -> str:
        return format_table(self.kernels)

    def to_dict(self) -> dict:
        d = {"model": self.model, "target": self.target, "tvm_target": self.target_str, "dtype": self.dtype,
             "rules": self.rules, "kernels": [{**asdict(k), "text": k.row()} for k in self.kernels]}
        for name in ("before", "after", "code", "ir"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        if self.notes:
            d["notes"] = self.notes
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def sections(self, show) -> list[tuple[str, str]]:
        """(title, text) for each requested view of each kernel, in table order."""
        out, seen = [], set()
        for k in self.kernels:
            if k.name in seen:
                continue
            seen.add(k.name)
            for what in show:
                text = getattr(self, what).get(k.name)
                if text is None:
                    continue
                title = {"before": "TVMScript before scheduling",
                         "after": f"TVMScript after scheduling (rule: {k.rule or 'none'})",
                         "code": f"{CODE_LANGUAGE[self.target]} ({len(k.launches) or 1} "
                                 f"kernel{'s' * (len(k.launches) > 1)})",
                         "ir": "LLVM IR"}[what]
                out.append((f"{k.function} {k.name}: {title}", text))
        return out


def format_table(kernels: list[KernelInfo]) -> str:
    rows = [k.row() for k in kernels]
    widths = [max([len(title)] + [len(str(r[key])) for r in rows]) for key, title in COLUMNS]
    right = {"calls"}

    def line(cells):
        return "  ".join(str(c).rjust(w) if key in right else str(c).ljust(w)
                         for (key, _), c, w in zip(COLUMNS, cells, widths)).rstrip()

    out = [line([title for _, title in COLUMNS]), line(["-" * w for w in widths])]
    out += [line([r[key] for key, _ in COLUMNS]) for r in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- model

def model_config(spec: str) -> tuple[GPT2Config, str]:
    """The config of a --model spec, without loading (or generating) any weights."""
    from tinygpt2.api import BUNDLED

    if spec.startswith("random:"):
        return preset_config(spec[len("random:"):]), spec
    path = BUNDLED.get(spec) or Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is not a checkpoint directory (no config.json)")
        return GPT2Config.from_json(path / "config.json"), spec
    if path.exists():
        raise CheckpointError(f"{spec} is a file: give the checkpoint directory (config.json + *.safetensors)")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise CheckpointError(f"no such checkpoint directory: {spec}")
    return GPT2Config.from_json(hub_config(spec)), spec


# ----------------------------------------------------------------------------------------------- explain

def explain(cfg: GPT2Config, target: str = "cuda", dtype: str = "float32", rules="default", *,
            arch: str | None = None, functions=FUNCTIONS, kernels=None, show=(), model: str | None = None
            ) -> Explanation:
    """Explain every kernel of `functions` for `target` under `rules` (see the module docstring).

    kernels: names to keep (a PrimFunc name, or a prefill name that also selects decode's `_n1` twin);
    show: any of "before", "after", "code", "ir".
    """
    with _quiet_stderr(_ROCM_NOISE) if target == "rocm" else contextlib.nullcontext():
        return _explain(cfg, target, dtype, rules, arch, functions, kernels, show, model)


# TVM's ROCm code asks the (absent) GPU for its version and thread limit, and says so at every step
_ROCM_NOISE = r"Unable to detect ROCm version|Cannot get maximum number of threads for AMD codegen"


def check(target: str, *rule_lists, arch: str | None = None):
    """Raise TargetError / RuleError for an unknown target or rule, before anything is built."""
    with _quiet_stderr(_ROCM_NOISE) if target == "rocm" else contextlib.nullcontext():
        TG.make_target(target, arch)
        for rules in rule_lists:
            R.resolve(rules, TG.kind(target))


def _explain(cfg, target, dtype, rules, arch, functions, kernels, show, model) -> Explanation:
    from tinygpt2.compile import build_scheduled, hand_kernels
    from tinygpt2.runtime.plan import build_plan
    from tinygpt2.tvm_shim import tirx, tvm

    functions = parse_names(functions, FUNCTIONS, "function")
    show = parse_names(show, SHOW, "--show view")
    if "ir" in show and target not in ("llvm", "rocm"):
        raise ExplainError(f"--show ir (LLVM IR) is for the llvm and rocm targets; {target} generates "
                           f"{CODE_LANGUAGE.get(target, 'code')}: use --show code")
    check(target, rules, arch=arch)               # unknown target or rule: fail before building anything
    sched, tgt, rule_list = build_scheduled(cfg, target, dtype, rules, arch=arch)

    infos: list[KernelInfo] = []
    for fn in functions:
        plan = build_plan(sched.mod, fn)
        sites: dict[str, list[str]] = {}
        for ln in plan.launches:
            sites.setdefault(ln.kernel, []).append(ln.name)
        infos += [KernelInfo(fn, k, len(names), names, sched.rule_of.get(k)) for k, names in sites.items()]
    if kernels:
        infos = _select(infos, kernels)
    names = {k.name for k in infos}
    prims = tvm.IRModule({gv: f for gv, f in sched.mod.functions_items()
                          if isinstance(f, tirx.PrimFunc) and gv.name_hint in names})

    launches = _launches(prims, tgt) if TG.kind(target) == "gpu" else {}
    for k in infos:
        _loops(prims[k.name], k)
        k.launches = launches.get(k.name, [])

    e = Explanation(model or "", target, str(tgt), dtype, R.describe(rule_list), infos)
    if "before" in show:
        from tinygpt2.model import build_module
        unscheduled = build_module(cfg, dtype, **hand_kernels(target, rule_list, tgt))
        e.before = {n: unscheduled[n].script() for n in sorted(names)}
    if "after" in show:
        e.after = {n: prims[n].script() for n in sorted(names)}
    formats = [f for f in ("code", "ir") if f in show]
    if formats:
        _, per_kernel, e.notes = target_code(prims, tgt, formats, {k.name: [ln.kernel for ln in k.launches]
                                                                   for k in infos})
        for fmt in formats:
            setattr(e, fmt, per_kernel[fmt])
    return e


def parse_names(values, allowed, what) -> list[str]:
    """Names from a list or a comma-separated string, checked; "both" means prefill and decode."""
    if isinstance(values, str):
        values = values.split(",")
    out: list[str] = []
    for v in values:
        for x in (FUNCTIONS if v.strip() == "both" and allowed is FUNCTIONS else [v.strip()]):
            if x and x not in allowed:
                raise ExplainError(f"unknown {what} {x!r}: choose from {', '.join(allowed)}")
            if x and x not in out:
                out.append(x)
    return out


def _select(infos: list[KernelInfo], wanted) -> list[KernelInfo]:
    wanted = [w.strip() for w in (wanted.split(",") if isinstance(wanted, str) else wanted) if w.strip()]
    keep = [k for k in infos if any(k.name == w or re.fullmatch(re.escape(w) + r"_n\d+", k.name) for w in wanted)]
    found = {w for w in wanted for k in keep if k.name == w or re.fullmatch(re.escape(w) + r"_n\d+", k.name)}
    missing = [w for w in wanted if w not in found]
    if missing:
        names = sorted({k.name for k in infos})
        raise ExplainError(f"no kernel {missing[0]!r} in {', '.join(sorted({k.function for k in infos}))}; "
                           f"kernels: {', '.join(names)}")
    return keep


# ----------------------------------------------------------------------------------------------- the IR

def _expr(e) -> str:
    """A PrimExpr as short text, with no more parentheses than precedence needs: (n * 3 + 63) // 64."""
    return _fmt(e)[0]


_BINARY = {"Add": ("+", 1), "Sub": ("-", 1), "Mul": ("*", 2), "FloorDiv": ("//", 2), "Div": ("/", 2),
           "FloorMod": ("%", 2), "Mod": ("%", 2)}


def _fmt(e) -> tuple[str, int]:
    """(text, precedence): 1 for + -, 2 for * // %, 3 for atoms and calls."""
    from tinygpt2.tvm_shim import tirx

    if isinstance(e, bool):
        return str(e), 3
    if isinstance(e, int):
        return str(e), 3
    if isinstance(e, tirx.IntImm):
        return str(int(e.value)), 3
    if isinstance(e, tirx.Var):
        return e.name, 3
    if isinstance(e, tirx.Cast):
        return _fmt(e.value)
    kind = type(e).__name__
    if kind in _BINARY:
        op, prec = _BINARY[kind]
        a, pa = _fmt(e.a)
        b, pb = _fmt(e.b)
        a = a if pa >= prec else f"({a})"
        b = b if pb > prec else f"({b})"              # left-associative: a - (b + c), a // (b * c)
        return f"{a} {op} {b}", prec
    if kind in ("Min", "Max"):
        return f"{kind.lower()}({_fmt(e.a)[0]}, {_fmt(e.b)[0]})", 3
    text = re.sub(r'T\.(?:u?int(?:8|16|32|64))\((-?\d+)\)', r"\1", str(e))
    return text, 3 if re.fullmatch(r"[\w.]+", text) else 0


def _size(shape, dtype):
    """Bytes of a buffer, as a PrimExpr (symbolic when the shape is)."""
    from tinygpt2.tvm_shim import tirx, tvm

    t = tvm.runtime.DataType(str(dtype))
    total = tirx.IntImm("int64", t.bits * t.lanes // 8)
    for s in shape:
        total = total * (tirx.IntImm("int64", int(s)) if isinstance(s, int) else tirx.Cast("int64", s))
    return total


def _total(sizes) -> int | str:
    """The sum of byte counts (PrimExprs), simplified: an int, or an expression in n / m."""
    from tinygpt2.tvm_shim import simplify, tirx

    total = tirx.IntImm("int64", 0)
    for s in sizes:
        total = total + (tirx.IntImm("int64", s) if isinstance(s, int) else
                         s if str(s.ty) == "int64" else tirx.Cast("int64", s))
    total = simplify(total)
    return int(total.value) if isinstance(total, tirx.IntImm) else _expr(total)


def _dims(dims: list[str]) -> str:
    dims = list(dims)
    while len(dims) > 1 and dims[-1] == "1":
        dims.pop()
    return " × ".join(d if re.fullmatch(r"[\w.]+", d) else f"({d})" for d in dims) if len(dims) > 1 else dims[0]


def _bytes(b: int | str) -> str:
    if not isinstance(b, int):
        return f"{b} B"
    if b < 1024:
        return f"{b} B"
    return f"{b / 1024:.1f} KiB".replace(".0 KiB", " KiB")


def _loops(func, info: KernelInfo):
    """Vector widths, unrolling, CPU parallel loops and global workspaces, from the scheduled TIR."""
    from tinygpt2.tvm_shim import tirx, walk

    vector, unroll, parallel = set(), set(), []

    def on_for(loop):
        if loop.kind == tirx.ForKind.VECTORIZED and not (isinstance(loop.extent, tirx.IntImm) and
                                                          int(loop.extent) == 1):    # 1: not vectorized
            vector.add(int(loop.extent) if isinstance(loop.extent, tirx.IntImm) else _expr(loop.extent))
        elif loop.kind == tirx.ForKind.UNROLLED:
            info.unrolled_loops += 1
        elif loop.kind == tirx.ForKind.PARALLEL:
            parallel.append(_expr(loop.extent))
        step = loop.annotations.get("pragma_auto_unroll_max_step") if loop.annotations else None
        if step is not None:
            unroll.add(int(step))

    walk(func.body, tirx.For, on_for)
    info.vector = sorted(vector, key=lambda v: (isinstance(v, str), v))
    info.unroll = sorted(unroll)
    info.parallel = parallel
    block = getattr(func.body, "block", None)
    info.workspace_bytes = _total([_size(buf.shape, buf.dtype) for buf in
                                   (block.alloc_buffers if block is not None else []) if buf.scope() == "global"])


def _launches(prims, tgt) -> dict[str, list[Launch]]:
    """PrimFunc -> its device kernels' launches, read off TVM's lowering (as compile.webgpu_kernels does)."""
    from tinygpt2.tvm_shim import kernel_launches, lower_host

    try:
        lowered = lower_host(prims, tgt)
    except Exception as e:
        raise CompileError(f"lowering for {tgt.kind.name} failed: {str(e).strip().splitlines()[-1]}") from e
    device = {gv.name_hint: f for gv, f in lowered.functions_items()}
    out: dict[str, list[Launch]] = {}
    for gv in prims.get_global_vars():
        calls = kernel_launches(lowered[gv.name_hint])
        launches = []
        for c in calls:
            name = c.args[0].value
            tags = list(c.attrs.launch_params)
            dims = dict(zip(tags, c.args[len(c.args) - len(tags):]))
            grid = [_expr(dims.get(f"blockIdx.{a}", 1)) for a in "xyz"]
            block = [_expr(dims.get(f"threadIdx.{a}", 1)) for a in "xyz"]
            shared, local = _allocations(device[name]) if name in device else ([], [])
            dyn = dims.get("tirx.use_dyn_shared_memory")        # dynamic shared memory, in bytes
            launches.append(Launch(name, grid, block, _total(shared + ([dyn] if dyn is not None else [])),
                                   _total(local), int(dims.get("clusterCtaIdx.x", 1))))
        out[gv.name_hint] = launches
    return out


def _allocations(device_func):
    """The sizes of a lowered device kernel's shared (per block) and local (per thread) allocations."""
    from tinygpt2.tvm_shim import tirx, walk

    sizes = {"shared": [], "local": []}

    def on_alloc(node):
        buf = node.buffer
        scope = buf.scope()
        if scope == "shared.dyn":           # TVM's merged dynamic buffer: the launch's dynamic size counts it
            return
        key = "shared" if scope.startswith("shared") else "local" if scope.startswith("local") else None
        if key:
            sizes[key].append(_size(buf.shape, buf.dtype))

    walk(device_func.body, tirx.AllocBuffer, on_alloc)
    return sizes["shared"], sizes["local"]


# ----------------------------------------------------------------------------------------------- code

# where each kernel starts in a device module's source
_STARTS = {
    "cuda": re.compile(r'^extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', re.M),
    "webgpu": re.compile(r"^// Function: (\S+)\n(?://-+\n)?", re.M),
    "metal": re.compile(r"^// Function: (\S+)\n", re.M),
    "asm": re.compile(r"^(?:[ \t]*\.globl[ \t]+\S+\n)?(?:[ \t]*\.p2align.*\n)?[ \t]*\.type[ \t]+([\w.$]+),@function\n",
                      re.M),
    "ll": re.compile(r'^define [^@\n]*@"?([\w.$]+)"?\(', re.M),
}


def split_source(source: str, style: str) -> dict[str, str]:
    """{kernel name: its code} from a module's whole source (the preamble before the first kernel dropped)."""
    matches = list(_STARTS[style].finditer(source))
    if style == "cuda":                                # definitions only, not forward declarations
        matches = [m for m in matches if not source[m.start():source.find("\n", m.start())].rstrip().endswith(";")]
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(source)
        chunk = source[m.start():end]
        if style in ("ll", "cuda"):                    # a function ends at its closing brace
            close = re.search(r"^}\s*$", chunk, re.M)
            chunk = chunk[:close.end()] if close else chunk
        elif style == "asm":                           # the module's metadata follows the last function
            meta = re.search(r"^\s*\.(?:amdgpu_metadata|end_amdgpu_metadata|section\s+\.note)", chunk, re.M)
            chunk = chunk[:meta.start()] if meta else chunk
        elif style in ("webgpu", "metal"):             # drop the "// Function:" header itself
            chunk = chunk[m.end() - m.start():]
        if chunk.strip():
            out[m.group(1)] = out.get(m.group(1), "") + chunk.rstrip() + "\n"
    return out


def target_code(prims, tgt, formats=("code",), kernels_of: dict[str, list[str]] | None = None):
    """Compile only the PrimFuncs for `tgt`; -> ({format: whole source}, {format: {PrimFunc: its code}}, notes).

    Formats: "code", the device source (CUDA C, WGSL, Metal, AMDGPU assembly; CPU assembly for llvm);
    "ir", LLVM IR (llvm, rocm). kernels_of maps a PrimFunc to its device kernels (from _launches);
    without it kernels are matched by name (<func>_kernel, <func>_kernel_<i>).
    """
    from tinygpt2.compile import device_module
    from tinygpt2.tvm_shim import tvm

    kind = tgt.kind.name
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        if kind == "rocm":
            notes += stack.enter_context(_rocm_without_install())
        try:
            with tgt:
                ex = tvm.compile(prims, target=tgt)
        except Exception as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CompileError(f"code generation for {kind} failed: {msg}") from e
    module = ex.mod if kind == "llvm" else device_module(ex.mod, "hip" if kind == "rocm" else kind)
    if module is None:
        raise CompileError(f"the {kind} build has no device module: a kernel was not scheduled")
    sources, per_kernel = {}, {}
    for fmt in formats:
        if kind in ("llvm", "rocm"):     # inspect_source formats: "ll"/"" LLVM IR, "asm" assembly
            style, src_fmt = ("ll", "ll" if kind == "llvm" else "") if fmt == "ir" else ("asm", "asm")
        else:
            style, src_fmt = kind, ""
        sources[fmt] = source = module.inspect_source(src_fmt)
        chunks = split_source(source, style)
        names = [gv.name_hint for gv in prims.get_global_vars()]
        if kind == "llvm":
            # a PrimFunc is <name>_compute_ (the body; __tvm_ffi_<name> only unpacks arguments), followed
            # by the __tvm_parallel_lambda functions of its parallel loops
            owner_of = {f"{n}_compute_": n for n in names}
            parts_of: dict[str, list[str]] = {}
            owner = None
            for c, code in chunks.items():
                owner = owner if "__tvm_parallel_lambda" in c else owner_of.get(c)
                if owner:
                    parts_of.setdefault(owner, []).append(code)
        else:
            parts_of = {}
            for name in names:
                wanted = (kernels_of or {}).get(name) or [c for c in chunks if re.fullmatch(
                    re.escape(name) + r"_kernel(?:_\d+)?", c)]
                parts_of[name] = [chunks[c] for c in wanted if c in chunks]
        per_kernel[fmt] = {n: "\n".join(parts) for n, parts in parts_of.items() if parts}
    return sources, per_kernel, notes


@contextlib.contextmanager
def _rocm_without_install():
    """Build ROCm code where no ROCm is installed: no device bitcode libraries, no ld.lld link.

    TVM's ROCm codegen asks Python callbacks for the device libraries' bitcode (ocml, ockl) and to
    link the object into a code object; both need a ROCm install. Without one, the callbacks are
    swapped (for this build only) for ones that link nothing: the LLVM IR and assembly are complete
    except that math calls (__ocml_*) stay unresolved. Yields the notes to show.
    """
    from tinygpt2.tvm_shim import global_funcs_swapped, rocm_installed

    if rocm_installed():
        yield []
        return
    with global_funcs_swapped({"tvm_callback_rocm_bitcode_path": lambda *a: [],
                               "tvm_callback_rocm_link": lambda obj: obj}):
        yield ["no ROCm install here: the AMD device libraries (ocml, ockl) were not linked, so their math "
               "calls stay unresolved, and no code object was linked"]


@contextlib.contextmanager
def _quiet_stderr(drop: str):
    """Drop TVM's C++ log lines matching `drop` (written to fd 2, out of Python's reach); keep the rest."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):        # stderr replaced (pytest capture, notebooks)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not re.search(drop, ln)]
            if kept:
                sys.stderr.write("".join(kept))


# ----------------------------------------------------------------------------------------------- diff

def diff(a: Explanation, b: Explanation, show=()) -> str:
    """A unified diff of two explanations (same model and target, two rule lists): the one-line summary
    of every kernel, then each requested view (before/after/code/ir) of every kernel that changed."""
    label_a, label_b = ",".join(a.rules) or "(no rules)", ",".join(b.rules) or "(no rules)"
    out = list(difflib.unified_diff([k.summary() for k in a.kernels], [k.summary() for k in b.kernels],
                                    f"rules {label_a} ({a.target})", f"rules {label_b} ({b.target})",
                                    lineterm="", n=0))
    for what in show:
        va, vb = getattr(a, what), getattr(b, what)
        for name in [k.name for k in a.kernels]:
            ta, tb = va.get(name, ""), vb.get(name, "")
            if ta != tb:
                out += difflib.unified_diff(ta.splitlines(), tb.splitlines(), f"{name} ({what}, {label_a})",
                                            f"{name} ({what}, {label_b})", lineterm="")
    return "\n".join(out) + ("\n" if out else "")
