"""On the GPU machine: prefill's causal attention as FlashAttention-2 lays it out -- mma.sync on fragments whose
layout is known, the softmax in registers -- in raw CUDA, beside the model's kernel and torch's SDPA.

    python3 scripts/bench_flash_mma.py [--n=1024] [--out=DIR]     (torch + nvcc + TVM: scripts/device_env.sh first)

Why: issue 6's aim 3 (gpt2-xl prefill@1024 at least HF eager's) failed on a fast host (2026-12-05, nineteenth
session: 48.8k tok/s against 50.2k). Of our 20.3 ms of kernels the attention is 4.5 (kernels/flash_attention.py:
WMMA, whose fragments hide which lane holds what, so every S and every P V goes through shared memory to the lanes
that own its rows; ~36 TFLOP/s). This prototype is the layout that avoids that, to measure before any TVMScript:

    block: one head, BQ = 64 queries (4 warps of 16 rows), the longest rows first; K and V tiles of BK = 64 keys
      in shared memory, double-buffered by cp.async (rows past m read row m - 1: stale rows may hold NaN)
    warp: Q's 16 x 64 as mma A fragments (ldmatrix), loaded once
      per key tile:  S = Q K^T          8 n-tiles x 4 k-steps of mma.m16n8k16 (K's rows by ldmatrix: B fragments)
                     mask, online softmax on S's accumulators: a lane holds rows g and g + 8 (g = lane / 4),
                       keys 2t, 2t + 1 of each n-tile (t = lane % 4), so a row's max and sum are 2 shuffles away
                     P = exp2(S - m), rounded to fp16: the accumulators of n-tiles 2k, 2k + 1 *are* the A fragment
                       of P's k-step k (FA2's trick), no shared memory
                     O = O * alpha + P V  (V's rows by ldmatrix.trans: B fragments)
    out = O / l for rows < n, fp16

The math is kernels/flash_attention.py's (its numpy reference is the check): out[i] = softmax_{j <= m - n + i}(q_i .
k_j / 8) V, probabilities rounded to fp16 before P V, the division by the row's sum at the end.

First run on an H100 in the twentieth session (docs/results/cuda_flash_mma_h100.md: 31.6 us a call at n = 1024, the
TVMScript port 30.6, torch SDPA 20.5); tests/test_bench_flash_mma.py builds it
for sm_90a and reads its SASS (tensor-core products, ldmatrix, no stores to shared memory but the tiles' copies).
Its port to TVMScript, kernels/flash_attention_mma.py (TVM 0.27's T.ptx.ldmatrix, T.ptx.mma, T.ptx.cp.async), is
timed in the same table; the lane layouts both rest on are checked alone by tests/test_cuda_compile.py's
mma_fragments where there is a GPU.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

H, D = 25, 64                        # gpt2-xl's heads, head size

FLASH_MMA_KERNEL = r'''
#include <cuda_fp16.h>
namespace fm {
constexpr int D = 64, BQ = 64, BK = 64, NTH = 128, LD = D + 8;     // a row of shared memory: 72 halves (144 bytes:
                                                                    // 16-byte aligned, ldmatrix's 8 rows in 8 bank groups)
__device__ __forceinline__ unsigned smem(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void ldsm4(unsigned* r, const void* p) {      // four 8 x 8 matrices, lanes 8i..8i+7: rows of i
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem(p))); }
__device__ __forceinline__ void ldsm4_t(unsigned* r, const void* p) {    // the same, each matrix transposed
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem(p))); }
// c (16 x 8, fp32) += a (16 x 16, fp16, row-major) b (16 x 8, fp16, "col": b0 holds k 2t, 2t+1 of column g, b1 k + 8)
__device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)); }
__device__ __forceinline__ void cp16(void* s, const void* g) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(smem(s)), "l"(g)); }
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void wait_but_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
__device__ __forceinline__ unsigned bits(__half2 h) { return *reinterpret_cast<unsigned*>(&h); }
// keys [kt * BK, kt * BK + BK) of a head's cache rows -> tile, 16 bytes a copy (rows past m - 1: row m - 1)
__device__ __forceinline__ void load_tile(half (*tile)[LD], const half* cache, int kt, int m) {
  for (int i = threadIdx.x; i < BK * D / 8; i += NTH) {
    int r = i / (D / 8), c = i % (D / 8) * 8;
    cp16(&tile[r][c], cache + (size_t)min(kt * BK + r, m - 1) * D + c); } }
}  // namespace fm

// qkv [n, 3C] (q: columns h * 64 ...), k_cache, v_cache [H, P, 64] (the new tokens' K, V already at m - n .. m - 1),
// out [n, C]; scale_log2 = log2(e) / sqrt(64). Grid: ceil(n / 64) * H blocks of 128 threads. MINB: blocks an SM
// asked of ptxas (1: 134 registers, 3 blocks an SM by registers; 4: 128, with 24 bytes spilled; sm_90a, nvcc 13)
template <int MINB>
__global__ void __launch_bounds__(fm::NTH, MINB) flash_mma(const half* __restrict__ qkv, const half* __restrict__ k_cache,
    const half* __restrict__ v_cache, half* __restrict__ out, int n, int m, int H, int P, float scale_log2) {
  using namespace fm;
  __shared__ __align__(128) half q_s[BQ][LD];
  __shared__ __align__(128) half k_s[2][BK][LD];
  __shared__ __align__(128) half v_s[2][BK][LD];
  const int C = H * D, n_qt = (n + BQ - 1) / BQ;
  const int h = blockIdx.x % H, qt = n_qt - 1 - blockIdx.x / H;          // the longest rows first
  const int q0 = qt * BQ, warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int shift = m - n;                                                // query i sees keys j <= i + shift
  const half* kc = k_cache + (size_t)h * P * D;
  const half* vc = v_cache + (size_t)h * P * D;
  for (int i = threadIdx.x; i < BQ * D / 8; i += NTH) {                  // Q's rows (past n: row n - 1)
    int r = i / (D / 8), c = i % (D / 8) * 8;
    cp16(&q_s[r][c], qkv + (size_t)min(q0 + r, n - 1) * 3 * C + h * D + c); }
  load_tile(k_s[0], kc, 0, m);
  load_tile(v_s[0], vc, 0, m);
  commit();
  const int n_kt = (min(q0 + BQ - 1, n - 1) + shift) / BK + 1;           // key tiles up to the tile's last row's
  const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;                  // this lane's two rows
  unsigned qa[D / 16][4];                                                 // Q: the A fragments of D / 16 k-steps
  float o[D / 8][4] = {};                                                 // O: 8 n-tiles of 8 columns
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;               // running max (log2 units), this lane's sums
  for (int kt = 0; kt < n_kt; ++kt) {
    if (kt + 1 < n_kt) {                                                  // the next tile into the other buffer (its
      load_tile(k_s[(kt + 1) & 1], kc, kt + 1, m);                        // readers passed the last barrier)
      load_tile(v_s[(kt + 1) & 1], vc, kt + 1, m); }
    commit();
    wait_but_one();                                                       // this tile's copies (and Q's) landed
    __syncthreads();
    if (kt == 0)                                                          // matrices: rows 0-7 / 8-15 x k 0-7, then k 8-15
      for (int kk = 0; kk < D / 16; ++kk) ldsm4(qa[kk], &q_s[warp * 16 + lane % 16][kk * 16 + lane / 16 * 8]);
    half (*ks)[LD] = k_s[kt & 1];
    half (*vs)[LD] = v_s[kt & 1];
    float s[BK / 8][4];                                                   // S: rows g, g + 8 x keys 8j + 2t, + 1
#pragma unroll
    for (int j = 0; j < BK / 8; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 32; ++kk) {                               // K's rows 8j.. as B: two k-steps a load
        unsigned b[4];
        ldsm4(b, &ks[j * 8 + lane % 8][kk * 32 + lane / 8 * 8]);
        mma(s[j], qa[2 * kk], b[0], b[1]);
        mma(s[j], qa[2 * kk + 1], b[2], b[3]); } }
    float mx0 = -INFINITY, mx1 = -INFINITY;                               // mask (causal, and keys past m), scale
#pragma unroll
    for (int j = 0; j < BK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = kt * BK + j * 8 + 2 * t + e;
        s[j][e] = key <= row0 + shift && key < m ? s[j][e] * scale_log2 : -INFINITY;
        s[j][2 + e] = key <= row1 + shift && key < m ? s[j][2 + e] * scale_log2 : -INFINITY;
        mx0 = fmaxf(mx0, s[j][e]);
        mx1 = fmaxf(mx1, s[j][2 + e]); }
#pragma unroll
    for (int d = 1; d < 4; d <<= 1) {                                     // a row's 4 lanes (one quad)
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, d));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, d)); }
    // key 0 is in every row's first tile, so the running max is finite from there on: no -inf - -inf
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);
    m0 = mn0; m1 = mn1;
    unsigned pa[BK / 16][4];                                              // P's A fragments: n-tiles 2k, 2k + 1 of S
    float r0 = 0.f, r1 = 0.f;
#pragma unroll
    for (int j = 0; j < BK / 8; ++j) {
      const __half2 p01 = __floats2half2_rn(exp2f(s[j][0] - mn0), exp2f(s[j][1] - mn0));   // rounded to fp16 for
      const __half2 p23 = __floats2half2_rn(exp2f(s[j][2] - mn1), exp2f(s[j][3] - mn1));   // P V (as HF rounds)
      const float2 f01 = __half22float2(p01), f23 = __half22float2(p23);
      r0 += f01.x + f01.y;
      r1 += f23.x + f23.y;
      pa[j / 2][j % 2 * 2] = bits(p01);                                   // a0 / a2: row g, keys 2t (+ 8)
      pa[j / 2][j % 2 * 2 + 1] = bits(p23); }                             // a1 / a3: row g + 8
    l0 = l0 * a0 + r0;
    l1 = l1 * a1 + r1;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) { o[j][0] *= a0; o[j][1] *= a0; o[j][2] *= a1; o[j][3] *= a1; }
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)
#pragma unroll
      for (int jd = 0; jd < D / 16; ++jd) {                               // V's keys 16kk.. x columns 16jd.., transposed:
        unsigned b[4];                                                    // B of n-tiles 2jd and 2jd + 1
        ldsm4_t(b, &vs[kk * 16 + lane % 8 + (lane / 8 % 2) * 8][jd * 16 + lane / 16 * 8]);
        mma(o[2 * jd], pa[kk], b[0], b[1]);
        mma(o[2 * jd + 1], pa[kk], b[2], b[3]); }
    __syncthreads(); }                                                    // the tile read: its buffer may be refilled
#pragma unroll
  for (int d = 1; d < 4; d <<= 1) {
    l0 += __shfl_xor_sync(0xffffffff, l0, d);
    l1 += __shfl_xor_sync(0xffffffff, l1, d); }
  const float i0 = 1.f / l0, i1 = 1.f / l1;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int col = h * D + j * 8 + 2 * t;
    if (row0 < n) *reinterpret_cast<__half2*>(out + (size_t)row0 * C + col) = __floats2half2_rn(o[j][0] * i0, o[j][1] * i0);
    if (row1 < n) *reinterpret_cast<__half2*>(out + (size_t)row1 * C + col) = __floats2half2_rn(o[j][2] * i1, o[j][3] * i1); }
}
'''

LAUNCHERS = r'''
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
void flash(torch::Tensor qkv, torch::Tensor kc, torch::Tensor vc, torch::Tensor out, int64_t n, int64_t m,
           int64_t minb) {
  TORCH_CHECK(kc.size(2) == 64 && n >= 1 && m >= n && m <= kc.size(1), "head_dim 64, 1 <= n <= m <= n_ctx");
  TORCH_CHECK(minb == 1 || minb == 4, "minb: 1 or 4 (the instances built)");
  const int H = kc.size(0), P = kc.size(1);
  auto h = [](torch::Tensor t) { return reinterpret_cast<half*>(t.data_ptr()); };
  auto k = minb == 4 ? flash_mma<4> : flash_mma<1>;
  k<<<(n + 63) / 64 * H, 128, 0, at::cuda::getCurrentCUDAStream()>>>(h(qkv), h(kc), h(vc), h(out), (int)n, (int)m, H,
                                                                      P, 1.4426950408889634f / 8.f);
  C10_CUDA_CHECK(cudaGetLastError()); }
'''

CPP = ("void flash(torch::Tensor qkv, torch::Tensor kc, torch::Tensor vc, torch::Tensor out, int64_t n, int64_t m, "
       "int64_t minb);")


def flops(n: int, m: int, heads: int = H) -> float:
    """Multiply-adds x 2 of q . k and p . v over the causal triangle (keys j <= m - n + i of query i)."""
    keys = sum(m - n + i + 1 for i in range(n))
    return 2 * 2 * keys * D * heads


def main():
    import torch

    from bench_weight_stream import build_extension, events_us, option, report
    from tinygpt2.kernels.flash_attention import flash_attention_ref, make_flash_attention
    from tinygpt2.kernels.flash_attention_mma import make_flash_attention_mma
    from tinygpt2.tvm_shim import tirx, tvm

    n = option("n", 1024, int)
    m, P, L = n, 1024, 48
    ext = build_extension("bench_flash_mma", "tinygpt2_flash_mma", CPP, FLASH_MMA_KERNEL + LAUNCHERS, ["flash"])
    rng = np.random.default_rng(0)
    qkv = (2 * rng.standard_normal((n, 3 * H * D))).astype(np.float16)          # as scripts/bench_flash.py
    kc = rng.standard_normal((H, P, D)).astype(np.float16)
    vc = rng.standard_normal((H, P, D)).astype(np.float16)
    kc[:, m:] = vc[:, m:] = np.nan                                               # stale rows: never read
    want = flash_attention_ref(qkv, kc, vc, m).astype(np.float32)
    f = flops(n, m)
    lines = [f"{torch.cuda.get_device_name()}; gpt2-xl's attention, n = m = {n}, fp16; max abs err against "
             f"kernels/flash_attention.py's numpy reference; us a call (median), TFLOP/s over the causal triangle", "",
             f"| kernel | max abs err | us a call | x {L} layers, ms | TFLOP/s |", "|---|---|---|---|---|"]

    def row(name, out, us):
        err = float(np.nanmax(np.abs(out.astype(np.float32) - want))) if np.isfinite(out).all() else float("nan")
        lines.append(f"| {name} | {err:.2e} | {us:.1f} | {us * L / 1e3:.2f} | {f / us / 1e6:.0f} |")

    dev = tvm.cuda(0)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")

    def tvm_row(name, func):                      # a TVMScript kernel, built for this n and m, timed by time_evaluator
        func = func.specialize({func.params[3]: tirx.IntImm("int64", m)})
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        args = [tvm.runtime.tensor(x, dev) for x in (qkv, kc, vc, np.zeros((n, H * D), np.float16))]
        lib["main"](*args)
        t = lib.mod.time_evaluator("main", dev, number=20, repeat=5, min_repeat_ms=0)(*args)
        row(name, args[-1].numpy(), float(np.median(t.results)) * 1e6)

    # 1. the model's kernel (kernels/flash_attention.py as model.py builds it for CUDA fp16), and
    # kernels/flash_attention_mma.py, this file's kernel written in TVMScript
    tvm_row("kernels/flash_attention.py (WMMA, the model's)", make_flash_attention(H, D, P, "float16", True, seq_len=n))
    tvm_row("kernels/flash_attention_mma.py (mma.sync, TVMScript)", make_flash_attention_mma(H, D, P, seq_len=n))
    # 2. this file's kernel
    g = {k: torch.from_numpy(v).cuda() for k, v in (("qkv", qkv), ("kc", kc), ("vc", vc))}
    for minb in (1, 4):
        out = torch.zeros((n, H * D), dtype=torch.float16, device="cuda")
        us = events_us(lambda: ext.flash(g["qkv"], g["kc"], g["vc"], out, n, m, minb))
        row(f"flash_mma<{minb}> (mma.sync, softmax in registers)", out.cpu().numpy(), us)
    # 3. torch's scaled_dot_product_attention (FlashAttention-2 on sm_90 where it applies), the same tensors
    q = g["qkv"][:, :H * D].reshape(n, H, D).transpose(0, 1)[None].contiguous()  # [1, H, n, D]
    k, v = g["kc"][None, :, :m], g["vc"][None, :, :m]
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    us = events_us(sdpa)
    row("torch SDPA (is_causal)", sdpa()[0].transpose(0, 1).reshape(n, H * D).cpu().numpy(), us)
    report(lines, option("out"), "bench_flash_mma.md")


if __name__ == "__main__":
    main()
