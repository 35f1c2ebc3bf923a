"""Step-through: run a model's `prefill` or `decode` one kernel launch at a time, on any target, and
look at every intermediate. The teaching and debugging entry point:

    from tinygpt2.reference import Reference
    from tinygpt2.runtime.step import compare, step_through

    ref = Reference.of(model).prefill(ids)
    for s in step_through(model, ids):                  # or step_through(model, token, "decode")
        print(s.name, s.kernel, s.grid, [o.shape for o in s.outputs], compare(s, ref).rel)

Each launch of the function's plan (runtime/plan.py) is run by itself, in order, on the executor's
own weights and KV cache:

- llvm / cuda: the compiled PrimFunc is called directly from the model's library, its temporaries
  laid out in the plan's memory slots (`plan_memory`);
- webgpu: the executor encodes just that launch's dispatches (`_encode(fn, env, dispatches)`), one
  submit per launch, into its own slot buffers; outputs are read back after each.

After the last launch the cache length is committed, so the model is exactly where
`model.prefill(ids)` / `model.decode(token)` would have left it, and `model.decode(...)` continues
from there. Stopping early (`stop_at`, or leaving the loop) leaves a half-written step: the cache is
reset, and the next thing to run must be a prefill.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from tinygpt2.errors import GenerationError, StepError

from .plan import Scalar, slot_sizes

FUNCTIONS = ("prefill", "decode")


@dataclass
class Step:
    index: int                     # position in the function's launch list
    function: str                  # "prefill" or "decode"
    name: str                      # call site: the Relax variable it defines, e.g. "h0_qkv"
    kernel: str                    # the PrimFunc it calls, e.g. "linear_qkv" ("linear_qkv_n1" in decode)
    grid: str                      # how it was launched, as far as the target shows it
    outputs: list[np.ndarray]      # what it wrote (KV cache: the filled positions [H, m, D] only)
    script: str | None             # the kernel's scheduled TVMScript
    rule: str | None               # the rule that scheduled the kernel (None: left as written)
    env: dict                      # {"n": new tokens, "m": sequence length after them}

    @property
    def output(self) -> np.ndarray:
        return self.outputs[0]


def launch_names(model, function: str = "prefill") -> list[str]:
    return [ln.name for ln in model.compiled.plans[function].launches]


def check_stop_at(model, stop_at: str, functions=FUNCTIONS):
    """Raise StepError unless `stop_at` names a launch or a kernel of one of `functions`."""
    plans = [model.compiled.plans[fn] for fn in functions]
    if any(stop_at in (ln.name, ln.kernel) for plan in plans for ln in plan.launches):
        return
    launches = plans[0].launches
    names = [ln.name for ln in launches[:4]] + ["...", *(ln.name for ln in launches[-3:])]
    kernels = list(dict.fromkeys(ln.kernel for ln in launches))
    suffix = " (decode's end in _n1)" if functions[0] == "prefill" and len(functions) > 1 else ""
    raise StepError(f"no launch or kernel named {stop_at!r} in {' or '.join(functions)}; launches: "
                    f"{', '.join(names)} (h<layer>_<op> for layers 0-{model.config.n_layer - 1}); "
                    f"kernels: {', '.join(kernels)}{suffix}")


def step_through(model, ids, function: str = "prefill", stop_at: str | None = None):
    """Yield a `Step` after each kernel launch of `function`; stop after `stop_at` (a launch or kernel name).

    `ids`: the prompt's token ids for prefill, one token (int or [int]) for decode. Bad arguments raise
    here, at the call; a prefill starts a new sequence at once (the cache is emptied).
    """
    if function not in FUNCTIONS:
        raise StepError(f"unknown function {function!r}: choose prefill or decode")
    if stop_at is not None:
        check_stop_at(model, stop_at, (function,))
    ex = model.executor
    ids = ex._check_ids(ids)
    if function == "prefill":
        if len(ids) == 0:
            raise GenerationError("prefill needs at least one token")
        ex.cache.reset()                                 # a new sequence
    elif ex.cache.length == 0:
        raise GenerationError("decode() before prefill(): there is no sequence to continue")
    elif len(ids) != 1:
        raise GenerationError(f"decode takes exactly one token, got {len(ids)}")
    m = ex.cache.reserve(len(ids))                       # raises before anything runs if the context overflows
    return _steps(model, function, ids, m, stop_at)      # a generator: the checks above run at the call


def _steps(model, function, ids, m, stop_at):
    ex, plan = model.executor, model.compiled.plans[function]
    env = {"n": len(ids), "m": m}
    scripts = getattr(model.compiled, "kernel_scripts", None) or {}
    if hasattr(ex, "functions"):                                        # WebGPUExecutor
        runs = _webgpu_launches(ex, model.compiled.webgpu, plan, function, env, ids)
    else:
        runs = _vm_launches(ex, model.compiled, plan, env, ids, scripts)
    done = False
    try:
        for i, (launch, grid, outs) in enumerate(runs):
            if i == len(plan.launches) - 1:
                ex.cache.commit(m)                                      # the step is complete
                done = True
            yield Step(i, function, launch.name, launch.kernel, grid, outs, scripts.get(launch.kernel),
                       model.compiled.rule_of.get(launch.kernel), dict(env))
            if stop_at in (launch.name, launch.kernel):
                break
    finally:
        if not done:             # stopped part-way: no complete sequence in the cache any more
            ex.cache.reset()


class Error(NamedTuple):
    abs: float                     # largest |ours - reference|
    rel: float                     # abs / largest |reference| of that tensor

    def ok(self, tol: float) -> bool:
        return self.rel <= tol


def compare(step: Step, reference: dict) -> Error:
    """A step's outputs against `tinygpt2.reference` values of the same launch (worst of its outputs)."""
    want = reference[step.name]
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    worst = Error(0.0, 0.0)
    for got, ref in zip(step.outputs, want):
        if got.shape != ref.shape:
            # the KV cache: the filled positions only; decode's scores/probs: the key axis spans the
            # whole cache, past the position they hold zeros (checked here) and the reference stops
            common = tuple(slice(0, min(a, b)) for a, b in zip(got.shape, ref.shape))
            if got.shape[-1] > ref.shape[-1] and np.any(got[..., ref.shape[-1]:] != 0):
                raise StepError(f"{step.name}: non-zero values past the sequence length")
            got, ref = got[common], ref[common]
        if got.shape != ref.shape:
            raise StepError(f"{step.name}: output shape {got.shape} but the reference has {ref.shape}")
        diff = float(np.max(np.abs(got.astype(np.float32) - ref))) if ref.size else 0.0
        rel = diff / max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
        worst = Error(max(worst.abs, diff), max(worst.rel, rel))
    return worst


# --- llvm / cuda --------------------------------------------------------------------------------

def _vm_launches(ex, compiled, plan, env, ids, scripts):
    from tinygpt2.tvm_shim import empty, to_tensor

    dev = ex.device
    # a fresh Executable keeps its library in .mod; a cache-loaded one is the library's module itself
    root = getattr(compiled.executable, "mod", compiled.executable)
    slots = [empty((count,), dtype, dev) for dtype, count in slot_sizes(plan, env)]    # the plan's memory
    ids_t = to_tensor(ids.astype(np.int32), dev)
    pos_t = to_tensor(np.array([env["m"] - 1], np.int32), dev)             # decode's position input
    grid = _cpu_grid if compiled.target == "llvm" else _gpu_grid           # cuda: blocks x threads

    def tensor(t):
        if t.kind == "ids":
            return ids_t
        if t.kind == "pos":
            return pos_t
        if t.kind == "cache":
            return ex.cache.tensors[t.index]
        if t.kind == "param":
            return ex.params[t.index]
        return slots[plan.slot_of[t.index]]._create_view(t.concrete(env))

    for launch in plan.launches:
        func = root.get_function(launch.kernel, True)
        if func is None:
            raise StepError(f"kernel {launch.kernel} is not in the compiled library")
        func(*[a.value(env) if isinstance(a, Scalar) else tensor(a) for a in launch.args])
        outs = [_filled(o, tensor(o).numpy(), env) for o in launch.outputs]    # .numpy() waits for the GPU
        yield launch, grid(scripts.get(launch.kernel), env), outs


# --- webgpu -------------------------------------------------------------------------------------

def _webgpu_launches(ex, art, plan, fn, env, ids):
    f = ex.functions[fn]
    queue = ex.device.queue
    queue.write_buffer(ex.ids, 0, ids.astype(np.int32))
    queue.write_buffer(ex.pos, 0, np.array([env["m"] - 1], np.int32))
    by_launch: dict[str, list] = {}
    for d in f["dispatches"]:
        by_launch.setdefault(d.launch_name, []).append(d)
    for launch in plan.launches:
        ds = by_launch[launch.name]
        for d in ds:                                   # one dispatch per submit
            queue.submit([ex._encode(fn, env, [d]).finish()])
        outs = []
        for o in launch.outputs:
            buf = f["buffer_of"](o)
            shape = o.concrete(env)
            dtype = np.dtype(o.dtype)
            count = int(np.prod(shape))
            raw = queue.read_buffer(buf, 0, min(-(-count * dtype.itemsize // 4) * 4, buf.size))
            outs.append(_filled(o, np.frombuffer(raw, dtype=dtype)[:count].reshape(shape).copy(), env))
        wgsl = [art["kernels"].get(k["kernel"]) for k in art["functions"][launch.kernel]["launches"]]
        yield launch, _webgpu_grid(ds, wgsl, env), outs


# --- helpers ------------------------------------------------------------------------------------

def _filled(t, array, env):
    """The KV cache only up to the sequence length m (beyond it: stale values no kernel reads)."""
    return array[:, : env["m"]] if t.kind == "cache" else array


_T = SimpleNamespace(int64=int, int32=int, Cast=lambda dtype, x: x, max=max, min=min)


def _extent(text: str, env) -> int | str:
    """A loop extent from TVMScript (e.g. "(n + T.int64(31)) // T.int64(32)") evaluated at n, m."""
    try:
        return int(eval(text, {"__builtins__": {}, "T": _T}, dict(env)))      # noqa: S307 -- our own IR text
    except Exception:
        return re.sub(r"T\.int(?:32|64)\((\d+)\)", r"\1", text)


def _loops(script: str, kind: str) -> list[tuple[str, str]]:
    """(first argument, thread tag or "") of every `T.<kind>(...)` loop in a TVMScript, in order."""
    out = []
    for match in re.finditer(rf"T\.{kind}\(", script):
        depth, i, args, start = 1, match.end(), [], match.end()
        while depth:
            c = script[i]
            if c in "([":
                depth += 1
            elif c in ")]":
                depth -= 1
            elif c == "," and depth == 1:
                args.append(script[start:i])
                start = i + 1
            i += 1
        args.append(script[start:i - 1])
        tag = next((re.search(r'"(.*)"', a).group(1) for a in args[1:] if a.strip().startswith("thread=")), "")
        out.append((args[0].strip(), tag))
    return out


def _cpu_grid(script, env) -> str:
    """llvm kernels run on the calling thread; `T.parallel` loops are spread over TVM's thread pool."""
    if script is None:
        return "host"
    par = [str(_extent(e, env)) for e, _ in _loops(script, "parallel")]
    return f"host, parallel {' + '.join(par)}" if par else "host, serial"


def _thread_groups(script, env) -> list[tuple[list, list]]:
    """Per GPU kernel in a scheduled PrimFunc: ([blockIdx extents x, y, z], [threadIdx extents x, y, z])."""
    groups, cur = [], None
    for e, tag in _loops(script, "thread_binding"):
        if not tag.startswith(("blockIdx", "threadIdx")):
            continue                                   # vthread: not part of the launch
        if tag.startswith("blockIdx") and (cur is None or any(k.startswith("threadIdx") for k in cur)):
            cur = {}
            groups.append(cur)
        if cur is not None:
            cur.setdefault(tag, _extent(e, env))
    return [([g.get(f"blockIdx.{a}", 1) for a in "xyz"], [g.get(f"threadIdx.{a}", 1) for a in "xyz"])
            for g in groups]


def _dims(values) -> str:
    while len(values) > 1 and values[-1] == 1:
        values = values[:-1]
    return "x".join(str(v) for v in values)


def _gpu_grid(script, env) -> str:
    if script is None:
        return "gpu"
    return "; ".join(f"grid {_dims(b)} block {_dims(t)}" for b, t in _thread_groups(script, env)) or "gpu"


def _webgpu_grid(dispatches, wgsl_kernels, env) -> str:
    """The workgroups each dispatch launched, with the threads per workgroup its WGSL declares."""
    parts = []
    for d, code in zip(dispatches, wgsl_kernels):
        x, y, z, _ = d.dims(env)
        size = re.search(r"@workgroup_size\(([^)]*)\)", code or "")
        threads = [int(v) for v in re.findall(r"\d+", size.group(1))] if size else []
        parts.append(f"{_dims([x, y, z])} wg" + (f" of {_dims(threads)}" if threads else ""))
    return "; ".join(parts)
