"""scripts/bench_head_cluster.py, gpt2-xl's c_attn and decode attention as one kernel of a thread-block cluster per
head (the benchmark itself needs the GPU machine): its numpy reference against the same computation written with
torch's own operators, and the kernel as launched -- built by nvcc for sm_90a without spills, one block of 512 an SM
by its registers, and in SASS every load of W issued before the block's first barrier (the layernorm's), so that the
block's whole share of W is in flight while it normalizes x."""

import re
import shutil

import numpy as np
import pytest
from scripts_loader import load_script
from test_cuda_compile import cuobjdump_sass


def test_the_reference_is_c_attn_then_attention_over_the_cache_and_the_new_key():
    torch = pytest.importorskip("torch")
    F_ = torch.nn.functional
    hc = load_script("bench_head_cluster")
    rng = np.random.default_rng(0)
    C, H, D, T = 1600, hc.H, hc.D, 7
    w = (rng.standard_normal((3 * C, C)) * 0.02).astype(np.float16)
    kc = rng.standard_normal((H, 10, D)).astype(np.float16)
    vc = rng.standard_normal((H, 10, D)).astype(np.float16)
    x = rng.standard_normal(C).astype(np.float16)
    kc_ref = kc.copy()
    qkv, y = hc.head_attention_ref(w, kc_ref, vc.copy(), x, T)

    t = lambda a: torch.from_numpy(a).float()
    xn = F_.layer_norm(t(x), (C,)).half().float()
    q, k, v = (t(w) @ xn).half().float().view(3, H, D)
    keys = torch.cat([t(kc[:, :T]), k[:, None]], 1)                    # [H, T + 1, D]: the cache, then the new key
    values = torch.cat([t(vc[:, :T]), v[:, None]], 1)
    att = F_.scaled_dot_product_attention(q[:, None], keys, values).half().float().reshape(C)
    np.testing.assert_allclose(qkv.astype(np.float32), torch.cat([q, k, v]).reshape(-1).numpy(), rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(y.astype(np.float32), att.numpy(), rtol=1e-2, atol=1e-3)
    np.testing.assert_array_equal(kc_ref[:, T], qkv[C:2 * C].reshape(H, D))   # the new key appended at position T
    np.testing.assert_array_equal(kc_ref[:, :T], kc[:, :T])             # and nothing else of the cache touched


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_the_kernel_builds_without_spills_one_block_an_sm_its_weights_in_flight_before_any_barrier(tmp_path):
    from test_bench_weight_stream import build

    hc = load_script("bench_head_cluster")
    assert "constexpr int HC_NTH = 512;" in hc.LAUNCHERS
    args = "const half*, const half*, half*, half*, int, int, half*, half*, unsigned long long*"
    instances = [f"head_qkv_attend<512, {cl}, {att}>" for cl in (4, 5) for att in ("true", "false")] + \
        [f"head_qkv_attend<512, 4, {att}, {tma}>" for att in ("true", "false") for tma in (1, 2)] + \
        [f"head_qkv_attend<512, 4, {att}, 1, true>" for att in ("true", "false")]
    err = build(tmp_path, hc.HEAD_KERNEL, dict.fromkeys(instances, args))
    report = re.findall(r"Compiling entry function '_Z15head_qkv_attend\w*'.*?(\d+) bytes spill stores.*?"
                        r"Used (\d+) registers", err, re.S)
    assert len(report) == len(instances), err
    for spill, regs in report:
        assert int(spill) == 0 and int(regs) * 512 <= 65536, (spill, regs)

    out = cuobjdump_sass(tmp_path / "k.cubin")
    kernels = re.split(r"Function : ", out)[1:]
    kernels = {k.split()[0]: k for k in kernels if k.startswith("_Z15head_qkv_attend")}
    assert len(kernels) == len(instances)
    for name, body in kernels.items():
        if not name.split("EEvPK6")[0].endswith("ELi0ELb0"):              # TMA (the 4th template argument) 1 or 2
            # W by TMA: bulk copies (a row each, issued by thread 0 in a loop) before the layernorm's barriers,
            # and no 16-byte loads of W into registers
            assert "UBLKCP" in body.split("BAR.SYNC")[1] and "LDG.E.128" not in body, name
            continue
        before = body.split("BAR.SYNC")[0]
        # 3 rows a warp at most (48 or 39 rows, 16 warps), 7 16-byte vectors a lane a row (200 a row)
        assert len(re.findall(r"LDG\.E\.128", before)) == 3 * 7, name


def test_w_packed_by_block_is_c_attn_s_rows_each_once_a_head_s_q_k_v_rows_in_its_four_blocks():
    hc = load_script("bench_head_cluster")
    rows = hc.head_rows(4)
    assert sorted(rows) == list(range(3 * 1600))                         # a permutation (48 rows a block, no padding)
    C = 1600
    for b in (0, 5, 99):                                                 # block b: head b // 4, rows b % 4, + 4, ...
        h, r = divmod(b, 4)
        got = rows[b * 48:(b + 1) * 48]
        want = [part * C + h * 64 + i for part in range(3) for i in range(64)][r::4]
        assert got == want
