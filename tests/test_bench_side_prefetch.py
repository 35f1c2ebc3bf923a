"""scripts/bench_side_prefetch.py, a prefetcher on a second stream beside a gpt2-xl layer's skeleton (the benchmark
itself needs the GPU machine): how far ahead each policy lets it prefetch, and the kernels as launched -- built by
nvcc for sm_90a without spills, the GEMVs at 32 registers (8 blocks of 256 an SM: every grid resident at once)."""

import shutil

import pytest
from scripts_loader import load_script

sp = load_script("bench_side_prefetch")
MB = 1 << 20


def test_the_step_reads_each_layers_weights_once_in_order():
    kernels = sp.step_kernels(layers=2)
    assert [name for name, _o, _s in kernels] == ["qkv", "attend", "c_proj", "c_fc", "proj2"] * 2
    ends = 0
    for _name, offset, size in kernels:
        assert offset == ends                                           # contiguous: the order they are read in
        ends += size
    assert ends == 2 * 2 * (3 * 1600 * 1600 + 1600 * 1600 + 2 * 1600 * 6400)   # fp16 bytes of two gpt2-xl layers


def test_next_matrix_policy_runs_one_matrix_ahead_and_the_attention_looks_past_itself():
    kernels = sp.step_kernels(layers=2)
    front = sp.frontiers(kernels, ("next", 1))
    end = {j: off + size for j, (_n, off, size) in enumerate(kernels)}
    assert front[0] == end[0]                                           # before the step: the first matrix
    assert front[1] == end[2]                                           # qkv running: up to c_proj's end
    assert front[2] == end[2]                                           # the attention: its next is c_proj
    assert front[3] == end[3]                                           # c_proj running: c_fc
    assert front[4] == end[4]                                           # c_fc running: the MLP's c_proj
    assert front[5] == end[5]                                           # proj2: the next layer's qkv
    assert front[-1] == end[len(kernels) - 1]                           # the last: everything


def test_byte_policy_and_the_bystander():
    kernels = sp.step_kernels(layers=3)
    total = kernels[-1][1] + kernels[-1][2]
    front = sp.frontiers(kernels, ("bytes", 8 * MB))
    assert front[0] == 8 * MB
    assert front[1] == kernels[0][2] + 8 * MB                           # qkv's end + 8 MB
    assert all(b >= a for a, b in zip(front, front[1:])) and front[-1] == total
    assert sp.frontiers(kernels, None) == [0] * (len(kernels) + 1)      # never allowed anything: it only polls


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_the_kernels_build_without_spills_and_the_gemvs_fit_8_blocks_an_sm(tmp_path):
    import subprocess

    from test_bench_weight_stream import ptxas_report

    src = sp.KERNELS + "".join(f"template __global__ void sp_gemv<{r}>(const half*, const half*, const half*, half*, int, "
                               f"int*, int);\n" for r in (8, 2)) + "".join(
        f"template __global__ void sp_gemv_pipe<{r}, {p}>(const half*, const half*, const half*, half*, int, int, int*, "
        f"int);\n" for r in sorted(set(sp.PIPE_ROWS.values())) for p in ("true", "false"))
    (tmp_path / "k.cu").write_text(src)
    err = subprocess.run(["nvcc", "--cubin", "-O3", "-arch=sm_90a", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                          str(tmp_path / "k.cu")], check=True, capture_output=True, text=True).stderr
    report = ptxas_report(err)
    assert set(report) == {"sp_gemv", "sp_attend", "side_prefetch", "sp_gemv_pipe"}, err
    assert len(report["sp_gemv"]) == 2 and len(report["sp_gemv_pipe"]) == 4
    for name, instances in report.items():
        for regs, spill in instances:
            assert spill == 0, (name, err)
            if name == "sp_gemv":
                assert regs <= 32, (regs, err)
            if name == "sp_gemv_pipe":                                  # 2 blocks of 128 an SM: half its registers
                assert regs <= 128, (regs, err)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_the_persistent_gemv_loads_its_first_rows_of_w_before_it_lets_the_next_kernel_launch_and_waits(tmp_path):
    """sp_gemv_pipe's point: W's first loads (read-only: LDG.CONSTANT) in flight before PREEXIT
    (griddepcontrol.launch_dependents) and ACQBULK (griddepcontrol.wait), x's (plain LDG) after them."""
    import subprocess

    from test_cuda_compile import cuobjdump_sass

    (tmp_path / "k.cu").write_text(sp.KERNELS + "template __global__ void sp_gemv_pipe<4, true>(const half*, "
                                   "const half*, const half*, half*, int, int, int*, int);\n")
    subprocess.run(["nvcc", "--cubin", "-O3", "-arch=sm_90a", "-o", str(tmp_path / "k.cubin"), str(tmp_path / "k.cu")],
                   check=True, capture_output=True)
    sass = cuobjdump_sass(tmp_path / "k.cubin")
    body = sass[sass.index("sp_gemv_pipe"):]
    ops = [op for op in ("LDG.E.128.CONSTANT", "PREEXIT", "ACQBULK", "LDG.E.128 ") if op in body]
    assert ops == ["LDG.E.128.CONSTANT", "PREEXIT", "ACQBULK", "LDG.E.128 "], body[:3000]
    first = {op: body.index(op) for op in ops}
    assert body[:first["PREEXIT"]].count("LDG.E.128.CONSTANT") == 7        # all KO = 7 of the first group
    assert first["LDG.E.128.CONSTANT"] < first["PREEXIT"] < first["ACQBULK"] < first["LDG.E.128 "]
