"""Target names -> TVM targets. llvm, cuda and webgpu run; rocm and metal only generate code."""

from __future__ import annotations

import re

from tinygpt2.errors import TargetError
from tinygpt2.tvm_shim import cpu_device, sm_version, tvm

TARGETS = ("llvm", "cuda", "webgpu", "rocm", "metal")
RUNNABLE = ("llvm", "cuda", "webgpu")
DEFAULT_CUDA_ARCH = "sm_90a"         # H100/H200; used when no GPU is present to ask


def kind(target: str) -> str:
    """"cpu" or "gpu": which family of DLight rules applies."""
    return "cpu" if target == "llvm" else "gpu"


def cuda_arch() -> str:
    """The arch of GPU 0 if there is one (sm_90 Hopper -> sm_90a), else DEFAULT_CUDA_ARCH."""
    dev = tvm.cuda(0)
    if not dev.exist:
        return DEFAULT_CUDA_ARCH
    major, minor = dev.compute_version.split(".")
    return f"sm_{major}{minor}" + ("a" if major == "9" else "")


def supports_pdl(tgt) -> bool:
    """Whether kernels for the TVM target `tgt` can use programmatic dependent launch: CUDA, sm_90+."""
    return tgt is not None and tgt.kind.name == "cuda" and sm_version(str(tgt.attrs.get("arch", ""))) >= 90


def supports_wgmma(tgt) -> bool:
    """Whether kernels for `tgt` can use Hopper's warpgroup MMA (wgmma.mma_async): CUDA sm_90a only (the "a":
    architecture-specific, not carried to later GPUs, whose tensor cores take other instructions)."""
    return tgt is not None and tgt.kind.name == "cuda" and str(tgt.attrs.get("arch", "")) == "sm_90a"


# what --arch names, per target: a CUDA compute capability, an AMD GPU, an LLVM CPU (its -mcpu)
ARCH_PATTERNS = {"cuda": (r"sm_\d{2,3}[af]?", "sm_80, sm_90a"), "rocm": (r"gfx[0-9a-f]{3,4}", "gfx942"),
                 "llvm": (r"[a-z][a-z0-9_.-]*", "znver4, skylake-avx512")}


def check_arch(name: str, arch: str | None) -> None:
    """TargetError unless `arch` is None or looks like an arch of target `name` (TVM's own check is a C++
    assertion, and LLVM takes an unknown CPU name with a warning)."""
    if arch is None:
        return
    if name not in ARCH_PATTERNS:
        raise TargetError(f"--arch does not apply to the {name} target")
    pattern, examples = ARCH_PATTERNS[name]
    if not re.fullmatch(pattern, arch):
        raise TargetError(f"--arch {arch!r} is no {name} arch (e.g. {examples})")
    if name == "llvm" and arch not in tvm.target.codegen.llvm_get_cpu_archlist(tvm.target.Target("llvm")):
        raise TargetError(f"--arch {arch!r}: LLVM knows no such CPU (e.g. {examples})")


def make_target(name: str, arch: str | None = None) -> "tvm.target.Target":
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
    check_arch(name, arch)
    host = {"kind": "llvm"}
    if name == "llvm":
        # this machine's CPU (e.g. znver4): without it LLVM targets baseline x86-64, no AVX2/AVX-512 FMA
        return tvm.target.Target({"kind": "llvm", "mcpu": arch or tvm.target.codegen.llvm_get_system_cpu()})
    if name == "cuda":
        # 48 KiB is the shared memory a block gets without opting in, on every arch since Kepler
        return tvm.target.Target({"kind": "cuda", "arch": arch or cuda_arch(), "max_shared_memory_per_block": 49152,
                                  "max_threads_per_block": 1024, "thread_warp_size": 32}, host=host)
    if name == "rocm":
        return tvm.target.Target({"kind": "rocm", "mcpu": arch or "gfx942"}, host=host)
    if name == "metal":
        return tvm.target.Target({"kind": "metal"}, host=host)
    return tvm.target.Target({"kind": "webgpu"}, host=host)


def device(name: str):
    """The TVM device that runs a target's code (WebGPU runs through runtime/webgpu.py instead)."""
    if name == "llvm":
        return cpu_device()                               # its thread pool sized to the cores (tvm_shim)
    if name == "cuda":
        dev = tvm.cuda(0)
        if not dev.exist:
            raise TargetError("no CUDA GPU found: use --target llvm or --target webgpu")
        return dev
    raise TargetError(f"target {name!r} only generates code here; it cannot run (use llvm, cuda or webgpu)")


def require_device(name: str, dtype: str = "float32") -> None:
    """TargetError now, before anything is compiled, if target `name` has nothing here to run on (no CUDA
    GPU; no WebGPU adapter, or one without float16 when dtype asks for it)."""
    if name == "webgpu":
        from tinygpt2.runtime.webgpu import find_adapter
        find_adapter(dtype)
    else:
        device(name)
