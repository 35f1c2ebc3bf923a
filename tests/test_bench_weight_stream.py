"""scripts/bench_weight_stream.py's raw CUDA kernels (the benchmark itself needs the GPU machine): they build for
sm_90a with nvcc alone, none spills, and each keeps to the registers its occupancy argument rests on -- the GEMV
at most 32 a thread like kernels/ln_linear.py's (8 blocks of 256 an SM); the persistent MLP kernels so that their
800 blocks can all be resident at once (their grid barrier waits for every one of them): the TMA one at 32 (8 of
256 an SM), the register-loaded ones at 64 (8 of 128); the streaming ones, one block an SM, within the registers an
SM has for their block (1024, 512 or 256 threads; the cp.async one, 1024, at 64), and the bare ring at 32 (two
blocks of 1024 an SM). (mlp_splitk and mlp_layers, one block of 256 an SM, fit by their shared memory; their
__launch_bounds__ keeps their registers to the block.) And the register-loaded kernel that claims to load its
c_proj rows before the barrier does, in SASS."""

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cuda_compile import cuobjdump_sass

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_weight_stream.py"
# the template instances the script's launchers use, with their parameter lists
GEMV = "const half*, const half*, const half*, half*, int"
MLP = "const half*, const half*, half*, const half*, const half*, half*, int, int, unsigned*"
STREAM = "const half*, const half*, half*, const half*, const half*, half*, unsigned*, int, unsigned long long*"
INSTANCES = {f"{k}<{t}>": GEMV for k in ("gemv_reg", "gemv_tma", "gemv_pdl") for t in ("8, 0", "2, 1")} | \
    {f"mlp_persistent_reg<{b}>": MLP for b in ("true", "false")} | \
    {f"mlp_stream<{b}, {t}, 1600, 6400>": STREAM for b in ("true", "false") for t in (1024, 512, 256)} | \
    {"mlp_splitk<256, 1600, 6400>": "const half*, const half*, const half*, const half*, half*, float*, unsigned*"} | \
    {f"mlp_layers<256, 1600, 6400, {b}, {r}>": "const long long*, const long long*, half*, float*, unsigned*, int, "
                                                   "unsigned long long*, unsigned long long*"
     for b in ("true", "false") for r in ("4, 51200, 0, true", "4, 51200, 0, false", "4, 51200, 4, false",
                                          "4, 51200, 8, false", "4, 25600, 8, false", "4, 25600, 16, false",
                                          "4, 51200, 0, false, false", "4, 51200, 0, false, true, true",
                                          "4, 51200, 0, false, true, false, true",
                                          "4, 51200, 0, false, true, false, false, 32",
                                          *(f"{ring}, 0, false, true, false, false, 32, {kf}" for ring, kf in
                                            (("4, 51200", 4), ("4, 51200", 3), ("4, 51200", 2), ("8, 25600", 6),
                                             ("8, 25600", 4), ("8, 25600", 2))),
                                          *(f"4, 51200, 0, false, true, false, false, 0, 0, {cl}" for cl in (4, 2)))} | \
    {f"ring_read<{v}>": "const char*, long, float*" for v in ("4, 51200, false", "16, 12800, false", "4, 51200, true",
                                                              "16, 12800, true", "4, 25600, false", "8, 12800, false")}


def kernels_source() -> str:
    """The script's KERNELS string, read from its source (importing it would need torch's CUDA build)."""
    for node in ast.parse(SCRIPT.read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "KERNELS":
            return ast.literal_eval(node.value)
    raise AssertionError("no KERNELS in scripts/bench_weight_stream.py")


def build(tmp_path, source: str = "", instances: dict | None = None) -> str:
    """nvcc's ptxas -v report for the kernels (KERNELS, then `source`), the templates instantiated as launched
    (`instances`: name<args> -> parameter list; this script's INSTANCES by default); the cubin in tmp_path."""
    instances = INSTANCES if instances is None else instances
    src = kernels_source() + source + "".join(f"template __global__ void {k}({a});\n" for k, a in instances.items())
    (tmp_path / "k.cu").write_text(src)
    return subprocess.run(["nvcc", "--cubin", "-O3", "-arch=sm_90a", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                           str(tmp_path / "k.cu")], check=True, capture_output=True, text=True).stderr


def ptxas_report(stderr: str) -> dict[str, list[tuple[int, int]]]:
    """{kernel: [(registers a thread, bytes spilled) for each instance]} from ptxas -v."""
    out, name = {}, None
    for line in stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            length = re.match(r"_Z(\d+)", m.group(1))                 # mangled: _Z <length> <identifier> ...
            name = m.group(1)[length.end():length.end() + int(length.group(1))]
            spill = 0
        elif m := re.search(r"(\d+) bytes spill stores", line):
            spill = int(m.group(1))
        elif m := re.search(r"Used (\d+) registers", line):
            out.setdefault(name, []).append((int(m.group(1)), spill))
    return out


def test_the_benchmark_kernels_build_without_spills_within_their_registers(tmp_path):
    stderr = build(tmp_path)
    report = ptxas_report(stderr)
    assert set(report) >= {"read_sum", "gemv_reg", "gemv_tma", "gemv_pdl", "prefetch_l2", "idle", "mlp_persistent",
                           "mlp_persistent_reg", "mlp_stream", "mlp_stream_cp", "ring_read", "mlp_splitk",
                           "mlp_layers"}, report
    assert len(report["mlp_persistent_reg"]) == 2 and len(report["mlp_stream"]) == 6, report
    for name, instances in report.items():
        for regs, spill in instances:
            assert spill == 0, (name, regs, spill)
    for name, most in {"gemv_reg": 32, "mlp_persistent": 32, "mlp_persistent_reg": 64, "mlp_stream_cp": 64,
                       "ring_read": 32}.items():
        assert max(r for r, _ in report[name]) <= most, (name, report[name])
    # mlp_stream<math, threads, C, F>: one block of `threads` an SM (its registers, from its mangled name's report)
    fits = [(int(t), int(r)) for t, r in re.findall(r"mlp_streamILb\dELi(\d+)E.*?Used (\d+) registers", stderr, re.S)]
    assert len(fits) == 6 and all(regs * threads <= 65536 for threads, regs in fits), fits


def test_the_register_loaded_mlp_issues_its_c_proj_loads_before_the_grid_barrier(tmp_path):
    """mlp_persistent_reg<true>: the 13 loads of its c_proj rows (LDG.E.128.CONSTANT: W is read-only) come before
    the barrier's atomic; in <false>, after it. What the benchmark's two rows compare."""
    build(tmp_path)
    out = cuobjdump_sass(tmp_path / "k.cubin")
    for pre in (True, False):
        mangled = f"_Z18mlp_persistent_regILb{int(pre)}EEv"
        body = out[out.index(mangled):]
        body = body[:body.index("EXIT ;", body.index("ATOMG"))]
        before, after = body.split("ATOMG", 1)
        w_before = before.count("LDG.E.128.CONSTANT") - 7           # c_fc's 7 vector loads come first, in both
        assert (w_before, after.count("LDG.E.128.CONSTANT")) == ((13, 0) if pre else (0, 13)), (pre, w_before)
