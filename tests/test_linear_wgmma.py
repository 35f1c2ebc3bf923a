"""kernels/linear_wgmma.py, prefill's linears on Hopper's wgmma: against linear.py's numpy references on a GPU (every
epilogue; n not a multiple of the tile's rows, one token; N not a multiple of its columns, as gpt2-xl's c_attn, 4800,
in 128 columns; K a single K-step), and what ptxas makes of it here: no spills, the products as HGMMA with both
operands from shared memory, the tiles by cp.async and nothing else stored to shared memory."""

import collections
import re
import shutil

import pytest
from test_cuda_compile import ptxas_usage, sass
from test_flash_attention import cuda_device  # noqa: F401 (a fixture)
from test_linear_mma import check_against_numpy, qkv_source

from tinygpt2 import kernels as K
from tinygpt2.errors import RuleError
from tinygpt2.kernels.linear_mma import EPILOGUES

# (K, N, n): gpt2's c_fc at 37 tokens, gpt2-xl's c_attn at one token, a c_proj over 4C at 200, one K-step at 129
CASES = [(768, 3072, 37), (1600, 4800, 1), (3072, 768, 200), (64, 192, 129)]
# BN 128 (the default), 256, 192 and 64 (widths tile_for picks; its 160 on two warpgroups is checked on a GPU by
# bench_matmul's numpy column and gpt2's logits, scripts/gpu_session.sh tiles-check), and one warpgroup
TILES = [{}, dict(tile_n=256), dict(tile_n=192), dict(tile_n=64), dict(tile_n=160, warpgroups=1, stages=5)]


def test_shapes_it_cannot_tile_are_refused():
    with pytest.raises(RuleError, match="K-steps of 64"):
        K.make_linear_wgmma(800, 768)                                  # K not a whole number of 64-wide steps
    with pytest.raises(RuleError, match="multiple of 8 up to 256"):
        K.make_linear_wgmma(768, 768, tile_n=264)                      # wgmma's N is at most 256
    with pytest.raises(RuleError, match="stages >= 3"):
        K.make_linear_wgmma(768, 768, stages=2)
    with pytest.raises(RuleError, match="epilogue"):
        K.make_linear_wgmma(768, 768, "relu")


def test_the_model_tiles_are_the_ones_measured_fastest_for_gpt2_xl():
    """tile_for's cost model (waves of blocks over 132 SMs x a tile's work) picks, for gpt2-xl's four linears at
    1024 tokens, the BN that measured fastest on an H100 (docs/results/bench_matmul_wgmma_h100.md): qkv 160, the
    two c_projs 128 (a ragged last column of tiles: 1600 = 12.5 x 128), c_fc 256."""
    picks = [K.linear_wgmma.tile_for(n_out, 1024)["tile_n"] for n_out in (4800, 1600, 6400)]
    assert picks == [160, 128, 256]
    # the model behind it: 30 column tiles x 8 row tiles = 240 blocks, 2 waves, of 160 + 64
    assert K.linear_wgmma.tile_cost(4800, 160, 1024) == 2 * (160 + 64)
    # against 192's 25 x 8 = 200 blocks: 2 waves as well, of wider tiles
    assert K.linear_wgmma.tile_cost(4800, 192, 1024) == 2 * (192 + 64)


def test_few_blocks_favour_narrow_tiles():
    """gpt2's 768-wide c_proj at 1024 tokens: 3 x 8 = 24 blocks of 128 x 256 would leave most of 132 SMs idle; 12 x 8
    = 96 of 128 x 64 still fit in one wave. Every pick is one wgmma can take (a multiple of 8 up to 256)."""
    from tinygpt2.config import PRESETS

    assert K.linear_wgmma.tile_for(768, 1024)["tile_n"] == 64
    for cfg in PRESETS.values():
        for n_out in (3 * cfg.n_embd, cfg.n_embd, 4 * cfg.n_embd):
            bn = K.linear_wgmma.tile_for(n_out, cfg.n_positions)["tile_n"]
            assert bn % 8 == 0 and bn <= 256, (cfg, n_out)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_it_builds_for_sm_90a_on_hopper_tensor_cores():
    """gpt2-xl's c_fc + GELU (symbolic n), 128 x 256 tiles: no spills within 255 registers; in SASS a K-step's four
    64 x 256 x 16 products (HGMMA, A and B by descriptor: no ldmatrix, no register operand), the warpgroup's arrive and
    wait, the tiles by cp.async (LDGSTS) behind the async-proxy fence, and no other store to shared memory."""
    func = K.make_linear_wgmma(1600, 6400, "gelu", tile_n=256)
    spill, regs, _ = ptxas_usage(func)
    assert spill == 0 and regs <= 255, (spill, regs)
    ins = sass({"lin": func})["lin_kernel"]
    ops = collections.Counter(op.split()[0] for op in ins)
    gmma = [i for i in ins if i.startswith("HGMMA")]
    assert ops["HGMMA.64x256x16.F32"] % 4 == 0 and ops["HGMMA.64x256x16.F32"] >= 4, ops
    assert all("gdesc" in i for i in gmma) and "LDSM.16.M88.4" not in ops, gmma[:2]
    assert ops["WARPGROUP.ARRIVE"] > 0 and ops["WARPGROUP.DEPBAR.LE"] > 0 and ops["FENCE.VIEW.ASYNC.S"] > 0, ops
    assert any(op.startswith("LDGSTS") for op in ops), ops
    assert not any(re.fullmatch(r"STS(\.\w+)*", op) for op in ops), ops


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("k_in,n_out,n", CASES)
def test_it_matches_numpy_on_cuda(k_in, n_out, n, epilogue, tiles, cuda_device):
    check_against_numpy(K.make_linear_wgmma(k_in, n_out, epilogue, **tiles), k_in, n_out, n, epilogue, cuda_device)


def test_the_rule_entry_puts_it_in_the_model_for_sm_90a_fp16_prefill_only():
    """`matmul-wgmma`, first in preset `fused`, on sm_90a in fp16: prefill's four linears are this kernel (wgmma in their
    CUDA), decode's stay fused-decode's, every kernel scheduled; on sm_80 and on sm_100a (wgmma is sm_90a's alone)
    and in float32 the entry is dropped and the WMMA schedule (fp16) takes the linears."""
    from tinygpt2.rules import GPU_FUSED, presets

    def kernels(dtype, arch):
        return qkv_source(GPU_FUSED, dtype, arch)

    rule_of, qkv = kernels("float16", "sm_90a")
    assert "wgmma_f16_ss_mma_async" in qkv and "wmma::" not in qkv
    assert {rule_of[k] for k in ("linear_qkv", "linear_attn_proj", "linear_fc_gelu", "linear_mlp_proj")} == {"hand-scheduled"}
    assert rule_of["ln_linear_qkv_n1"] == "hand-scheduled"
    for arch in ("sm_80", "sm_100a"):
        rule_of, qkv = kernels("float16", arch)
        assert "wgmma" not in qkv and rule_of["linear_qkv"] == "tensor-core-matmul-async", arch
    assert "wgmma" not in kernels("float32", "sm_90a")[1]
    assert "matmul-wgmma" in GPU_FUSED and "matmul-wgmma" not in presets("gpu")   # no list of it alone
