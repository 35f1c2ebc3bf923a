"""scripts/bench_decode_layers.py, a whole decode layer of gpt2-xl for every layer in one launch (the benchmark
itself needs the GPU machine): its numpy reference against the same layer written with torch's own operators, and
the kernel as launched -- built by nvcc for sm_90a without spills, one block of 256 an SM by its registers and its
shared memory (the ring's 200 KB, x twice, the attention's buffers), which its grid barriers rely on."""

import re
import shutil

import numpy as np
import pytest
from scripts_loader import load_script


def test_the_reference_is_a_gpt2_block_without_biases_and_affine_layernorms():
    torch = pytest.importorskip("torch")
    F_ = torch.nn.functional
    dl = load_script("bench_decode_layers")
    rng = np.random.default_rng(0)
    C, F, H, D, T = 1600, 6400, dl.H, dl.D, 5
    w = [(rng.standard_normal(s) * 0.02).astype(np.float16) for s in ((3 * C, C), (C, C), (F, C), (F, C))]
    kc = rng.standard_normal((1, H, 8, D)).astype(np.float16)
    vc = rng.standard_normal((1, H, 8, D)).astype(np.float16)
    x = rng.standard_normal(C).astype(np.float16)
    got = dl.decode_layers_ref([tuple(w)], kc.copy(), vc.copy(), x, T)

    t = lambda a: torch.from_numpy(a).float()
    ln = lambda v: F_.layer_norm(v, (C,)).half().float()
    xt = t(x)
    q, k, v = (t(w[0]) @ ln(xt)).half().float().view(3, H, D)
    keys = torch.cat([t(kc[0, :, :T]), k[:, None]], 1)                 # [H, T + 1, D]: the cache, then the new key
    values = torch.cat([t(vc[0, :, :T]), v[:, None]], 1)
    att = F_.scaled_dot_product_attention(q[:, None], keys, values).half().float().reshape(C)
    xt = (xt + (att @ t(w[1])).half().float()).half().float()
    h = F_.gelu(t(w[2]) @ ln(xt), approximate="tanh").half().float()
    want = (xt + (h @ t(w[3])).half().float()).half().float().numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_the_kernel_builds_without_spills_and_fits_one_block_an_sm(tmp_path):
    from test_bench_weight_stream import build

    dl = load_script("bench_decode_layers")
    args = ("const long long*, half*, half*, half*, int, int, half*, unsigned long long*, float*, float*, float*, "
            "unsigned*, int, unsigned long long*")
    instances = [f"decode_layers<256, 1600, 6400, 25, {s}>" for s in ("true", "false", "true, true", "true, false, false",
                                                                      "false, false, false", "true, false, true, 4",
                                                                      "true, false, false, 4", "true, false, true, 8")]
    err = build(tmp_path, dl.LAYER_KERNEL, dict.fromkeys(instances, args))
    report = re.findall(r"Compiling entry function '_Z13decode_layers\w*'.*?(\d+) bytes spill stores.*?"
                        r"Used (\d+) registers, used \d+ barriers, (\d+) bytes smem", err, re.S)
    assert len(report) == len(instances), err
    dynamic = 4 * 51200 + 2 * 2 * 1600                                   # the launcher's LAYER_SMEM
    assert "constexpr int LAYER_SMEM = 4 * 51200 + 2 * 2 * 1600;" in dl.LAUNCHERS
    for spill, regs, static in report:
        assert int(spill) == 0 and int(regs) * 256 <= 65536, (spill, regs)
        assert int(static) + dynamic <= 227 * 1024, static               # sm_90's shared memory for one block
