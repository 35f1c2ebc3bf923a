"""The one place tinygpt2 imports Apache TVM from.

TVM's Python API moves between releases (0.27 renamed `tvm.tir` to `tvm.tirx`, moved scheduling to
`tvm.s_tir`, replaced Relax StructInfo by types, ...). Everything else in the project imports TVM
names from here, so API drift is fixed in this file only. The version is pinned in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import linecache
import os
import re
import sys

import numpy as np
import tvm
import tvm.sym
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.script import tirx as T

__all__ = ["tvm", "relax", "s_tir", "tirx", "dl", "T", "TVM_VERSION", "TVM_FFI_VERSION", "to_tensor", "shape_tuple",
           "is_scheduled", "int64", "walk", "simplify", "lower_host", "kernel_launches", "wmma_intrin_group", "register_nvcc",
           "rocm_installed", "global_funcs_swapped", "cpu_device"]

TVM_VERSION = tvm.__version__
TVM_FFI_VERSION = importlib.metadata.version("apache-tvm-ffi")


class _InspectWithCheapStack:
    """The `inspect` module, but for `stack()`: TVM's parser modules see this in its place (below)."""

    def __getattr__(self, name):
        return getattr(inspect, name)

    @staticmethod
    def stack(context: int = 1):
        """inspect.stack(), each frame's code_context read straight from linecache (one line)."""
        out, frame = [], sys._getframe(1)
        while frame is not None:
            filename, lineno = frame.f_code.co_filename, frame.f_lineno
            line = linecache.getline(filename, lineno, frame.f_globals) if context > 0 else ""
            out.append(inspect.FrameInfo(frame, filename, lineno, frame.f_code.co_name, [line] if line else None,
                                         0 if line else None))
            frame = frame.f_back
        return out


# TVM 0.27: every @T.prim_func / @I.ir_module calls inspect.stack(), whose source lookup for each frame
# (findsource -> getmodule) scans all of sys.modules. In a process with many modules (pytest) that made
# importing tvm.s_tir.tensor_intrin.cuda (248 prim_funcs; DLight's tensor-core rules import it) take 85-240 s
# on the 2-core machine, and it slows every kernel factory of ours. The parser only reads the frames, their
# locals and the calling line (is_defined_in_class, resolve_closure_vars), which linecache gives at once.
for _module in (tvm.tirx.script.parser.entry, tvm.script.parser.ir.entry):
    _module.inspect = _InspectWithCheapStack()


def _metal_matmul_declines(self, func, target, _):
    raise NotImplementedError("MetalMatmul is disabled: its simdgroup tensorization segfaults in TVM 0.27")


# TVM 0.27: dl.gpu.Matmul hands Metal kernels to MetalMatmul, whose simdgroup tensorization crashed the
# whole process (a segfault in Tensorize) -- the apache-tvm-ffi 0.1.15 bug below. With the pinned 0.1.14 it
# raises instead ("doesn't match the tensor intrin" on our kernels), which Matmul catches before going on
# with the SIMT tiling it gives every other GPU; MetalMatmul is made to decline so that either way ends there.
dl.gpu.matmul.MetalMatmul.apply = _metal_matmul_declines


# apache-tvm-ffi 0.1.15.* segfaults inside every s_tir tensorize (pyproject pins 0.1.14.post1); where a
# different one is installed anyway, tensor cores are left off rather than crashing the process
TENSORIZE_OK = not TVM_FFI_VERSION.startswith("0.1.15")


def sm_version(arch: str) -> int:
    """"sm_90a" -> 90, -1 for anything not an sm_ arch (DLight's own version returns -1 for any arch with
    a letter suffix)."""
    digits = re.match(r"sm_(\d+)", arch)
    return int(digits.group(1)) if digits else -1


def _check_sm_version(arch: str) -> int:
    return sm_version(arch) if TENSORIZE_OK else -1


# TVM 0.27: dl.gpu.Matmul only tensorizes (WMMA tensor cores, fp16 in, fp32 accumulate) when
# check_sm_version(arch) >= 70, and that helper reads "sm_90a" -- the arch Hopper needs -- as -1: on an
# H100 the default rule list silently fell back to CUDA-core tiling, ~6x slower for fp16 prefill.
dl.gpu.matmul.check_sm_version = _check_sm_version


def int64(v: int):
    """A TIR int64 constant: every shape and loop extent in the kernels is int64."""
    return T.int64(v)


def _cores_here(cpus) -> int | None:
    """Physical cores among `cpus` (Linux sysfs), or None where that is unknown."""
    try:
        cores = set()
        for cpu in cpus:
            topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
            with open(topology + "physical_package_id") as package, open(topology + "core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        return len(cores) or None
    except OSError:
        return None


_cpu_pool_sized = False


def cpu_device():
    """tvm.cpu(0), its thread pool first sized to the cores this process may use (once; not when the user sets
    TVM_NUM_THREADS or OMP_NUM_THREADS). TVM's own default is half of std::thread::hardware_concurrency on
    x86, a guess that the other half are hyper-threads: on a 2-core VM without them (the CI machine), one
    thread. Measured there (random:gpt2 fp32, rules tuned): prefill@128 84 -> 195 tok/s, decode 28 -> 51."""
    global _cpu_pool_sized
    if not _cpu_pool_sized:
        _cpu_pool_sized = True
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []   # Linux only
        cores = _cores_here(cpus)
        if cores and not (os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")):
            # -3: TVM's kSpecifyThreadShareAllCore, `cores` threads free to run on any of the allowed CPUs. It
            # must come before the calling thread's pool exists (its first parallel launch, or NumThreads()):
            # a pool never grows past the workers it was created with (nor does kBig, 1, lift the halving)
            tvm.get_global_func("runtime.config_threadpool")(-3, cores, [str(c) for c in cpus])
    return tvm.cpu(0)


def to_tensor(array: np.ndarray, device) -> "tvm.runtime.Tensor":
    """Copy a numpy array to a TVM tensor on `device`."""
    return tvm.runtime.tensor(np.ascontiguousarray(array), device)


def empty(shape, dtype: str, device):
    return tvm.runtime.empty(tuple(int(s) for s in shape), dtype, device)


def shape_tuple(values) -> "tvm.runtime.ShapeTuple":
    """A Relax `R.Shape` argument (how the model receives the symbolic total length)."""
    return tvm.runtime.ShapeTuple([int(v) for v in values])


def is_scheduled(func) -> bool:
    """Whether a DLight rule marked this PrimFunc as scheduled."""
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


# TVM 0.27 launches a CUDA kernel with programmatic dependent launch (cuLaunchKernelEx with the
# programmatic stream serialization attribute) when its launch parameters carry this tag, spelt as
# TVM spells it (src/runtime/metadata.h). Nothing in TVM's own pipeline adds it; pdl_tir_pipeline does.
PDL_LAUNCH_TAG = "tirx.use_programtic_dependent_launch"
KERNEL_LAUNCH_PARAMS = "tirx.kernel_launch_params"      # a device kernel's launch arguments, set by SplitHostDevice


def _waits_on_grid(func) -> bool:
    """Whether a device kernel calls griddepcontrol.wait (TVM 0.27 has no Python TIR visitor: its script)."""
    return 'T.ptx.griddepcontrol("wait"' in func.script()


@tvm.transform.module_pass(opt_level=0, name="LaunchWithPDL")
def launch_with_pdl(mod, _ctx):
    """Tag every device kernel that waits on griddepcontrol for a programmatic dependent launch (the
    flag goes first: TVM wants the dynamic shared memory tag, when there is one, last)."""
    for gv, func in list(mod.functions_items()):
        params = func.attrs.get(KERNEL_LAUNCH_PARAMS) if isinstance(func, tirx.PrimFunc) and func.attrs else None
        if params is not None and PDL_LAUNCH_TAG not in params and _waits_on_grid(func):
            mod[gv] = func.with_attr(KERNEL_LAUNCH_PARAMS, [PDL_LAUNCH_TAG, *params])
    return mod


def pdl_tir_pipeline() -> str:
    """The name of TVM's default ("s_tir") TIR pipeline followed by launch_with_pdl, registered once:
    what tvm.compile's `tir_pipeline` takes for CUDA."""
    name = "tinygpt2_s_tir_pdl"

    def factory():
        base, finalize_host, finalize_device = tirx.get_tir_pipeline("s_tir")
        return tvm.transform.Sequential([base, launch_with_pdl]), finalize_host, finalize_device

    tirx.register_tir_pipeline(name, factory)
    return name


# --- reading TIR: walking it, simplifying, and the kernel launches of TVM's own lowering ---

def walk(node, node_type, visit, order: str = "pre") -> None:
    """visit(n) for every n of node_type under node (TVM 0.27 has no Python TIR visitor class: tvm_ffi's walk)."""
    tvm_ffi.structural_walk(node, (node_type, visit), order=order)


def simplify(expr):
    """An integer expression simplified by TVM's arithmetic analyzer (0.27: tvm.sym, was tvm.arith)."""
    return tvm.sym.Analyzer().simplify(expr)


def lower_host(prims: "tvm.IRModule", tgt) -> "tvm.IRModule":
    """PrimFuncs through TVM's default s_tir lowering for `tgt`, up to the split into host and device code:
    each host function then launches its device kernels (kernel_launches). CSE off, so that the launches'
    arguments stay plain expressions rather than hoisted `cse_v*` scalars."""
    lower = tvm.s_tir.pipeline.default_s_tir_pipeline()[0]
    with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
        return lower(tirx.transform.BindTarget(tgt)(prims))


def kernel_launches(host_func) -> list:
    """The device-kernel launches of a lowered host function (lower_host), in order. TVM 0.27 spells each
    as a `tirx.call_ffi_kernel` call: args = (kernel name, its arguments..., launch extents), and
    attrs.launch_params names the extents ("blockIdx.x", "threadIdx.x", "tirx.use_dyn_shared_memory", ...)."""
    launch_op = tvm.ir.Op.get("tirx.call_ffi_kernel")
    calls = []
    walk(host_func.body, tvm.ir.expr.Call,
         lambda c: calls.append(c) if isinstance(c.op, tvm.ir.Op) and c.op.same_as(launch_op) else None, order="post")
    return calls


# --- build helpers whose home moved or that touch TVM's global registry ---

def wmma_intrin_group(*args, **kwargs) -> dict:
    """tvm.s_tir.tensor_intrin.cuda.get_wmma_intrin_group, imported on first use: that module registers
    248 PrimFuncs when imported (seconds), and only tensor-core schedules need it."""
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group
    return get_wmma_intrin_group(*args, **kwargs)


def register_nvcc() -> None:
    """Importing tvm.support.nvcc registers the callback through which tvm.compile turns CUDA C into a
    binary at build time (nvcc or NVRTC, by TVM_CUDA_COMPILE_MODE); without it only source is kept."""
    importlib.import_module("tvm.support.nvcc")


def rocm_installed() -> bool:
    """Whether TVM finds a ROCm install (its device bitcode libraries and linker)."""
    import tvm.support.rocm as rocm

    try:
        rocm.find_rocm_path()
        return True
    except RuntimeError:
        return False


@contextlib.contextmanager
def global_funcs_swapped(funcs: dict):
    """TVM global functions (the callbacks its C++ code looks up by name) replaced for the block's duration,
    the old ones put back after."""
    old = {n: tvm_ffi.get_global_func(n, allow_missing=True) for n in funcs}
    for n, f in funcs.items():
        tvm_ffi.register_global_func(n, f, override=True)
    try:
        yield
    finally:
        for n, f in old.items():
            if f is not None:
                tvm_ffi.register_global_func(n, f, override=True)
