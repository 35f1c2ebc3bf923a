"""scripts/bench_weight_stream.py's raw CUDA kernels (the benchmark itself needs the GPU machine): they build for
sm_90a with nvcc alone, none spills, and each keeps to the registers its occupancy argument rests on -- the GEMV
at most 32 a thread like kernels/ln_linear.py's (8 blocks of 256 an SM), and the persistent MLP kernel too, so
that its 800 blocks can all be resident at once (its grid barrier waits for every one of them)."""

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_weight_stream.py"
# the template instances the script's launchers use
INSTANCES = ["gemv_reg<8, 0>", "gemv_reg<2, 1>", "gemv_tma<8, 0>", "gemv_tma<2, 1>"]


def kernels_source() -> str:
    """The script's KERNELS string, read from its source (importing it would need torch's CUDA build)."""
    for node in ast.parse(SCRIPT.read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "KERNELS":
            return ast.literal_eval(node.value)
    raise AssertionError("no KERNELS in scripts/bench_weight_stream.py")


def ptxas_report(tmp_path) -> dict[str, tuple[int, int]]:
    """{kernel: (registers a thread, bytes spilled)} from ptxas -v, the templates instantiated as launched."""
    args = "const half*, const half*, const half*, half*, int"
    src = kernels_source() + "".join(f"template __global__ void {k}({args});\n" for k in INSTANCES)
    (tmp_path / "k.cu").write_text(src)
    run = subprocess.run(["nvcc", "--cubin", "-O3", "-arch=sm_90a", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                          str(tmp_path / "k.cu")], check=True, capture_output=True, text=True)
    out, name = {}, None
    for line in run.stderr.splitlines():
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
    report = ptxas_report(tmp_path)
    assert set(report) >= {"read_sum", "gemv_reg", "gemv_tma", "prefetch_l2", "idle", "mlp_persistent"}, report
    for name, instances in report.items():
        for regs, spill in instances:
            assert spill == 0, (name, regs, spill)
    assert max(r for r, _ in report["gemv_reg"]) <= 32
    assert max(r for r, _ in report["mlp_persistent"]) <= 32
