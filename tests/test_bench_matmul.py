"""scripts/bench_matmul.py's tiles (the benchmark itself needs the GPU machine): what its float32 names mean as
rules.TiledMatmul configs, and that `simt-dlight` is DLight's own Matmul config, so that the table's baseline is
the rule the `default` preset applies; what its mma-... names build (kernels/linear_mma.py)."""

from scripts_loader import load_script

from tinygpt2.rules import TiledMatmul
from tinygpt2.targets import make_target
from tinygpt2.tvm_shim import dl


def test_simt_dlight_is_dlights_cuda_config():
    bench, cuda = load_script("bench_matmul"), make_target("cuda", "sm_90a")
    assert bench.simt_rule("simt-dlight").get_configs(cuda) == dl.gpu.Matmul().get_configs(cuda)


def test_tile_names():
    rule = load_script("bench_matmul").simt_rule("simt-16x32-4x8-k32-vt2x1-v2")
    cfg = rule.get_configs(make_target("cuda", "sm_90a"))
    assert (cfg.block_size_x, cfg.block_size_y, cfg.micro_size_x, cfg.micro_size_y) == (16, 32, 4, 8)
    assert (cfg.micro_size_k, cfg.vthread_x, cfg.vthread_y, cfg.vector_size, cfg.unroll) == (32, 2, 1, 2, 256)
    assert not rule.k_major and not rule.prefetch                      # DLight's layout unless -km, ...
    rule = load_script("bench_matmul").simt_rule("simt-16x16-8x8-km-u1024-p")
    assert rule.k_major and rule.get_configs(make_target("cuda", "sm_90a")).unroll == 1024
    assert rule.prefetch                                               # ... and its copy unless -p


def test_the_rule_entrys_tile_is_the_one_kept():
    """tiled-matmul's default tile is the one docs/results/bench_matmul_fp32_h200.md kept:
    simt-16x8-4x8-k32-v4-km-p."""
    cuda, kept = make_target("cuda", "sm_90a"), load_script("bench_matmul").simt_rule("simt-16x8-4x8-k32-v4-km-p")
    rule = TiledMatmul()
    assert rule.get_configs(cuda) == kept.get_configs(cuda)
    assert (rule.k_major, rule.prefetch) == (kept.k_major, kept.prefetch) == (True, True)


def test_mma_variant_names():
    """mma-BMxBN-wWMxWN-kBK-sS[-bB] is kernels/linear_mma.py's kernel with that tile, warps, K-step, stages (and launch
    bounds), with the epilogue of the linear it stands in for: here c_fc's GELU on 64-column tiles, 4 warps,
    __launch_bounds__(128, 1)."""
    from tinygpt2 import kernels as K

    func = load_script("bench_matmul").mma_kernel("mma-128x64-w2x2-k64-s3-b1", K.make_linear_gelu, 1600, 6400)
    text = func.script()
    assert 'T.launch_thread("blockIdx.x", T.int64(100))' in text and 'T.launch_thread("threadIdx.y", 4)' in text
    assert '{"tirx.launch_bounds_min_blocks_per_sm": 1}' in text and "T.tanh" in text
    assert "smem = T.alloc_buffer((41472,)" in text                   # 3 stages x (128 + 64) rows x (64 + 8) halves
