"""On the GPU machine: gpt2-xl's whole decode layer -- attention and MLP -- for every layer in one launch.

    PYTHONPATH=. python3 scripts/bench_decode_layers.py [--out=DIR] [--context=255]     (torch + nvcc)

Step 2 of docs/persistent_decode.md, after the MLP alone (scripts/bench_weight_stream.py's `mlp_layers`): does a
one-kernel decode step beat today's ~28 us a layer (one kernel per operator in a CUDA graph), and by how much?

One block of 256 threads an SM, all resident for the whole launch. Each block streams fixed rows of every layer's
four matrices, in order, through one TMA ring of shared memory (4 x 51.2 KB) that runs on across phases and layers:

    x -> ln_1 -> qkv rows        -> [barrier A: q, k, v complete]
      -> attention (blocks 5h .. 5h + 4: head h, a fifth of its keys each)  -> [barrier B: every split's output]
      -> attn c_proj, split by its input rows (each block merges the splits of its inputs; W_o as [in, out]:
         a partial of all 1600 outputs, float atomics)
      -> [barrier C] -> x += the sum -> ln_2
      -> c_fc rows (gelu, kept in shared memory) -> MLP c_proj split by the same rows (float atomics)
      -> [barrier D] -> x += the sum -> the next layer

Every block keeps its own copy of x and computes the layernorms itself (1600 values: cheaper than a dependency).
The next phase's weights are already in the ring while a block waits at a barrier or sits out the attention.
Simplified against the model (what costs no bandwidth and no dependency): no biases, layernorms without their
affine weights. The KV cache holds `--context` positions; the new token's key and value are appended there.

A variant (LLA) drops barrier A: each block stores its qkv rows as tagged 8-byte values (NCCL's LL protocol), and
the attending blocks wait for the 192 values their head needs, without a fence or a counter.

Checked against numpy (`decode_layers_ref`: the same roundings) on 4 layers, then timed on 48 in a CUDA graph (CUDA
events around a replay, median; the graph also copies x in and zeroes the accumulators), with and without its
barriers (wrong results: what the dependencies cost); then thread 0's clock at 13 points of each layer (TL_POINTS),
medians for the attending blocks and the others. Results: docs/results/bench_decode_layers_h200.md -- correct, and
slower than the model (33.7-34.2 us a layer), half of it in the four dependencies.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

H, D = 25, 64                        # gpt2-xl's heads, head size (n_embd 1600)
SQRT_2_OVER_PI = 0.7978845608028654

LAYER_KERNEL = r'''
// a block's sum of v over its NTH threads (every thread gets it): shuffles, then shared memory across the warps
template <int NTH>
__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  __syncthreads();                                                      // red free (an earlier call's reads done)
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = 0.f;
  for (int w = 0; w < NTH / 32; ++w) v += red[w];
  return v; }
template <int NTH>
__device__ __forceinline__ float block_max(float v, float* red) {
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = -INFINITY;
  for (int w = 0; w < NTH / 32; ++w) v = fmaxf(v, red[w]);
  return v; }
// xn = (x - mean) / sqrt(var + 1e-5), rounded to fp16 (the model's layernorm without its affine weights)
template <int NTH, int C>
__device__ __forceinline__ void layernorm(const half* x, half* xn, float* red) {
  float s = 0.f, q = 0.f;
  for (int i = threadIdx.x; i < C; i += NTH) { const float v = __half2float(x[i]); s += v; q += v * v; }
  const float mean = block_sum<NTH>(s, red) / C;
  const float var = block_sum<NTH>(q, red) / C - mean * mean;
  const float rstd = rsqrtf(var + 1e-5f);
  for (int i = threadIdx.x; i < C; i += NTH) xn[i] = __float2half((__half2float(x[i]) - mean) * rstd);
  __syncthreads(); }
// grid-wide barrier as mlp_layers' (thread 0 fences the block's writes and arrives), SYNC false: none (wrong results)
// (tb, thread 0's timeline slot or null: clock64 once the fence is passed)
template <bool SYNC>
__device__ __forceinline__ void grid_sync(unsigned* arrived, unsigned long long* tb = nullptr) {
  if (!SYNC) return;
  __syncthreads();
  if (threadIdx.x == 0) { __threadfence(); if (tb) *tb = clock64(); grid_arrive_wait(arrived); }
  __syncthreads(); }

// attention for the new token, split over the keys ("flash-decoding"): block b < HD * SPLIT takes head b / SPLIT and
// the b % SPLIT-th of the T + 1 keys (the cached T and the new one, which the block holding it appends to the cache).
// Thread t loads key t's K and V rows at once (one round trip for the block, not one a key: the loads wait behind
// the weight stream's), q . k / sqrt(64), then the split's max m, sum l of exp(s - m) and o = sum exp(s - m) v,
// written as floats for the consumers to merge (att_merge): no dependency of its own.
// (LLA: q, k, v come as tagged 8-byte values from qll, awaited until their tag is `tag`: no barrier before)
template <int NTH, int C, int DH, int SPLIT, bool LLA>
__device__ void attend(const half* qkv, const unsigned long long* qll, unsigned long long tag, half* kc, half* vc, int T,
                       float* po, float* pml, float* red) {
  static_assert(DH == 64 && NTH % DH == 0, "4 groups of 64 threads sum the values");
  __shared__ __align__(16) half qs[DH], kn[DH], vn[DH], vs[64][DH];
  __shared__ float p[64], part[NTH / DH][DH];
  const int h = blockIdx.x / SPLIT, sp = blockIdx.x % SPLIT, n = T + 1, per = (n + SPLIT - 1) / SPLIT;
  const int j0 = sp * per, nk = min(n, j0 + per) - j0;                  // this block's keys [j0, j0 + nk)
  if (LLA && threadIdx.x < DH) {
    const unsigned long long* u = qll + h * DH + threadIdx.x;
    qs[threadIdx.x] = __float2half(__uint_as_float((unsigned)ll_wait(u, tag)));
    kn[threadIdx.x] = __float2half(__uint_as_float((unsigned)ll_wait(u + C, tag)));
    vn[threadIdx.x] = __float2half(__uint_as_float((unsigned)ll_wait(u + 2 * C, tag)));
  } else if (threadIdx.x < DH) {                                        // q, k, v of head h: written by other blocks
    const unsigned short* u = reinterpret_cast<const unsigned short*>(qkv);
    qs[threadIdx.x] = __ushort_as_half(__ldcg(u + h * DH + threadIdx.x));
    kn[threadIdx.x] = __ushort_as_half(__ldcg(u + C + h * DH + threadIdx.x));
    vn[threadIdx.x] = __ushort_as_half(__ldcg(u + 2 * C + h * DH + threadIdx.x));
  }
  __syncthreads();
  if (j0 + nk == n && threadIdx.x < DH) { kc[T * DH + threadIdx.x] = kn[threadIdx.x]; vc[T * DH + threadIdx.x] = vn[threadIdx.x]; }
  const int t = threadIdx.x, j = j0 + t;
  float s = -INFINITY;
  if (t < nk) {
    const uint4* k = reinterpret_cast<const uint4*>(j < T ? kc + (size_t)j * DH : kn);
    const uint4* v = reinterpret_cast<const uint4*>(j < T ? vc + (size_t)j * DH : vn);
    uint4 kr[DH / 8], vr[DH / 8];
    #pragma unroll
    for (int i = 0; i < DH / 8; ++i) { kr[i] = k[i]; vr[i] = v[i]; }   // every load in flight at once
    const uint4* q = reinterpret_cast<const uint4*>(qs);
    s = 0.f;
    #pragma unroll
    for (int i = 0; i < DH / 8; ++i) { s += dot8(kr[i], q[i]); reinterpret_cast<uint4*>(vs[t])[i] = vr[i]; }
    s *= 0.125f;
  }
  const float m = block_max<NTH>(s, red);
  const float e = t < nk ? __expf(s - m) : 0.f;
  const float l = block_sum<NTH>(e, red);
  if (t < 64) p[t] = e;
  __syncthreads();
  const int grp = t / DH, d = t % DH;                                   // group grp sums keys grp, grp + 4, ...
  float o = 0.f;
  for (int jj = grp; jj < nk; jj += NTH / DH) o += p[jj] * __half2float(vs[jj][d]);
  part[grp][d] = o;
  __syncthreads();
  if (t < DH) {
    for (int g2 = 1; g2 < NTH / DH; ++g2) o += part[g2][d];
    po[blockIdx.x * DH + d] = o;
    if (t == 0) { pml[2 * blockIdx.x] = m; pml[2 * blockIdx.x + 1] = l; }
  }
}
// output row `row` of the attention (head row / 64, dimension row % 64), merged over the SPLIT splits, read through L2
template <int DH, int SPLIT>
__device__ __forceinline__ float att_merge(const float* po, const float* pml, int row) {
  const int h = row / DH, d = row % DH;
  float ms[SPLIT], mx = -INFINITY, num = 0.f, den = 0.f;
  #pragma unroll
  for (int s = 0; s < SPLIT; ++s) { ms[s] = __ldcg(pml + 2 * (h * SPLIT + s)); mx = fmaxf(mx, ms[s]); }
  #pragma unroll
  for (int s = 0; s < SPLIT; ++s) {
    const float f = __expf(ms[s] - mx);
    num += f * __ldcg(po + (h * SPLIT + s) * DH + d); den += f * __ldcg(pml + 2 * (h * SPLIT + s) + 1); }
  return num / den; }

// x += the sum in acc[k % 3] (read through L2), then this block's share of acc[(k + 2) % 3] zeroed (every block read
// it after the barrier before, and it is added into again only after the next one): mlp_layers' rotation, with
// k counting the layer's two sums
template <int NTH, int C>
__device__ __forceinline__ void take_sum(half* xs, float* acc3, int k) {
  const float* acc = acc3 + (k % 3) * C;
  for (int i = threadIdx.x; i < C; i += NTH) xs[i] = __hadd(xs[i], __float2half(__ldcg(acc + i)));
  float* old = acc3 + ((k + 2) % 3) * C;
  for (int i = (long)blockIdx.x * C / gridDim.x + threadIdx.x; i < (long)(blockIdx.x + 1) * C / gridDim.x; i += NTH) old[i] = 0.f;
  __syncthreads(); }

constexpr int DECODE_SPLIT = 5;                                         // blocks a head (125 of gpt2-xl's 132 SMs)
// every layer of the decode step in one launch (this file's docstring). ws: the layers' weight addresses, 4 a layer
// (c_attn [3C, C], c_proj as [in, out] [C, C], c_fc [F, C], MLP c_proj as [in, out] [F, C]); kc, vc: [L][H][TM][64]
// the cache, T positions filled; qkv [3C], po [HD * SPLIT * 64], pml [HD * SPLIT * 2] float: the exchange buffers;
// acc3 [3][C] float, zeros.
// LLA: no barrier A -- each block stores its qkv rows as tagged 8-byte values into qll [3C] (zeros at the call's
// start; the tag is the layer + 1), and the attending blocks await the 192 they need (NCCL's LL protocol, as
// mlp_layers' variant 8): no fence, no counter, no wait for blocks the head does not need.
// MATH false: no dot products in the weight phases (the chunks are waited for and dropped; wrong results): what the
// blocks' arithmetic costs on the critical path.
// PF > 0: each chunk issued into the ring also prefetches the chunk PF further on into L2 (cp.async.bulk.prefetch.L2).
// The dependencies leave HBM idle ~15 us a layer (run 6: 32.30 us a layer with them, 17.25 without, no dot products);
// weights already in L2 when a block leaves a barrier would shorten the phases after it. (For the MLP alone, with one
// barrier a layer, the same prefetch lost: 16.1-20.8 against 14.8 us, bench_weight_stream_h200.md.)
template <int NTH, int C, int F, int HD, bool SYNC, bool LLA = false, bool MATH = true, int PF = 0>
__global__ void __launch_bounds__(NTH, 1) decode_layers(const long long* ws, half* xio, half* kcs, half* vcs, int T, int TM,
    half* qkv, unsigned long long* qll, float* po, float* pml, float* acc3, unsigned* arrived, int L, unsigned long long* tl) {
  static_assert(C / 8 <= NTH && HD * 64 == C, "a thread's 8 outputs; heads of 64");
  constexpr int SPLIT = DECODE_SPLIT;
  extern __shared__ __align__(128) unsigned char sm[];
  constexpr int S = 4, CB = 51200, R = CB / (2 * C);                   // the ring; rows a chunk, of any matrix (K = C)
  uint4* ring = reinterpret_cast<uint4*>(sm);
  half* xs = reinterpret_cast<half*>(ring + S * (CB / 16));             // x, this block's copy [C]
  half* xn = xs + C;                                                    // x layernormed [C]
  __shared__ uint64_t full[S + 1]; __shared__ float red[NTH / 32]; __shared__ float hl[64];
  const int G = gridDim.x, b = blockIdx.x;
  const int q1 = (long)b * 3 * C / G, nq = (long)(b + 1) * 3 * C / G - q1;   // this block's rows of c_attn,
  const int o1 = (long)b * C / G, no = (long)(b + 1) * C / G - o1;           // of attn c_proj (its inputs),
  const int r1 = (long)b * F / G, n1 = (long)(b + 1) * F / G - r1;           // of c_fc and of MLP c_proj (inputs)
  const int ncq = (nq + R - 1) / R, nco = (no + R - 1) / R, nc1 = (n1 + R - 1) / R;
  const int e1 = ncq, e2 = ncq + nco, e3 = e2 + nc1, per = e3 + nc1, nc = L * per;   // a layer's chunk boundaries
  auto src = [&](int g, unsigned* bytes) {                              // chunk g of the block's stream: its rows
    const int l = g / per, c = g % per;
    const int m = c < e1 ? 0 : c < e2 ? 1 : c < e3 ? 2 : 3, cc = c - (m == 0 ? 0 : m == 1 ? e1 : m == 2 ? e2 : e3);
    const int first = (m == 0 ? q1 : m == 1 ? o1 : r1) + cc * R, n = m == 0 ? nq : m == 1 ? no : n1;
    *bytes = min(R, n - cc * R) * C * 2;
    return reinterpret_cast<const half*>(ws[4 * l + m]) + (size_t)first * C; };
  auto issue = [&](int g) {                                             // thread 0: chunk g into its stage, and (PF)
    unsigned bytes; const half* w = src(g, &bytes);                     // chunk g + PF into L2
    tma_rows(ring + (g % S) * (CB / 16), w, bytes, &full[g % S]);
    if (PF && g + PF < nc) { w = src(g + PF, &bytes);
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(w), "r"(bytes) : "memory"); } };
  if (threadIdx.x == 0) {
    for (int s = 0; s <= S; ++s) bar_init(&full[s]);
    tma_rows(xs, xio, C * 2, &full[S]);
    for (int g = 0; g < min(S, nc); ++g) issue(g);
  }
  __syncthreads();
  bar_wait(&full[S], 0);
  float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};               // a partial of y[8 t : 8 t + 8]
  for (int g = 0; g < nc; ++g) {
    const int l = g / per, c = g % per;
    // tl (null: none): thread 0's clock64 at 13 points of each layer (TL_POINTS in Python), a row per layer and block
    unsigned long long* tb = tl && threadIdx.x == 0 ? tl + ((size_t)l * G + b) * 13 : nullptr;
    if (tb && c == 0) tb[0] = clock64();
    if (c == 0) layernorm<NTH, C>(xs, xn, red);                        // ln_1
    const uint4* chunk = ring + (g % S) * (CB / 16);
    bar_wait(&full[g % S], (g / S) & 1);
    if (!MATH) {}
    else if (c < e1) fc_step<NTH, C, R, false>(chunk, reinterpret_cast<const uint4*>(xn), c * R, nq, hl, red);
    else if (c < e2) proj_step<C>(chunk, (c - e1) * R, min(R, no - (c - e1) * R), hl, a);
    else if (c < e3) fc_step<NTH, C, R>(chunk, reinterpret_cast<const uint4*>(xn), (c - e2) * R, n1, hl, red);
    else proj_step<C>(chunk, (c - e3) * R, min(R, n1 - (c - e3) * R), hl, a);
    __syncthreads();                                                    // the stage is read: refill it
    if (threadIdx.x == 0 && g + S < nc) { asm volatile("fence.proxy.async.shared::cta;"); issue(g + S); }
    if (c == e1 - 1) {                                                  // q, k, v rows done: publish, attend
      if (tb) tb[1] = clock64();
      const unsigned long long tag = (unsigned long long)(l + 1) << 32;
      if (LLA) { for (int i = threadIdx.x; i < nq; i += NTH) ll_store(qll + q1 + i, tag | __float_as_uint(hl[i]));
                 if (tb) tb[2] = clock64(); }                            // (hl: rounded to fp16 already)
      else { for (int i = threadIdx.x; i < nq; i += NTH) qkv[q1 + i] = __float2half(hl[i]);
             grid_sync<SYNC>(arrived, tb ? tb + 2 : nullptr); }         // A
      if (tb) tb[3] = clock64();
      const size_t cache = ((size_t)l * HD + b / SPLIT) * TM * 64;
      if (b < HD * SPLIT) attend<NTH, C, 64, SPLIT, LLA>(qkv, qll, tag, kcs + cache, vcs + cache, T, po, pml, red);
      if (tb) tb[4] = clock64();
      grid_sync<SYNC>(arrived, tb ? tb + 5 : nullptr);                  // B
      for (int i = threadIdx.x; i < no; i += NTH) hl[i] = __half2float(__float2half(att_merge<64, SPLIT>(po, pml, o1 + i)));
      __syncthreads();
      if (tb) tb[6] = clock64();
    }
    if (c == e2 - 1 || c == per - 1) {                                  // a sum done: add it, wait, take it
      const int k = c == per - 1;
      if (tb) tb[7 + 3 * k] = clock64();
      add_partial<C>(acc3 + ((2 * l + k) % 3) * C, a);
      grid_sync<SYNC>(arrived, tb ? tb + 8 + 3 * k : nullptr);          // C, D
      take_sum<NTH, C>(xs, acc3, 2 * l + k);
      if (c == e2 - 1) layernorm<NTH, C>(xs, xn, red);                 // ln_2
      if (tb) tb[9 + 3 * k] = clock64();
    }
  }
  if (b == 0) for (int i = threadIdx.x; i < C; i += NTH) xio[i] = xs[i];
}
'''

LAUNCHERS = r'''
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
constexpr int LAYER_SMEM = 4 * 51200 + 2 * 2 * 1600;
// gpt2-xl's shapes only (the caller checks); ws: int64 [L * 4] weight addresses
void layers(torch::Tensor ws, torch::Tensor x, torch::Tensor kc, torch::Tensor vc, int64_t T, torch::Tensor qkv,
            torch::Tensor qll, torch::Tensor po, torch::Tensor pml, torch::Tensor acc3, torch::Tensor arrived, int64_t blocks,
            bool sync, bool lla, bool math, int64_t pf, int64_t timeline) {
  auto k = pf == 4 ? (math ? decode_layers<256, 1600, 6400, 25, true, false, true, 4> : decode_layers<256, 1600, 6400, 25, true, false, false, 4>)
         : pf == 8 ? decode_layers<256, 1600, 6400, 25, true, false, true, 8>
         : !math ? (sync ? decode_layers<256, 1600, 6400, 25, true, false, false> : decode_layers<256, 1600, 6400, 25, false, false, false>)
         : !sync ? decode_layers<256, 1600, 6400, 25, false> : lla ? decode_layers<256, 1600, 6400, 25, true, true>
                                                                  : decode_layers<256, 1600, 6400, 25, true>;
  TORCH_CHECK(pf == 0 || pf == 4 || pf == 8, "pf: 0, 4 or 8 (the instances built)");
  TORCH_CHECK(po.numel() == 25 * DECODE_SPLIT * 64 && pml.numel() == 25 * DECODE_SPLIT * 2,
              "po, pml: sized for ", DECODE_SPLIT, " blocks a head");
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, LAYER_SMEM);
  auto h = [](torch::Tensor t) { return reinterpret_cast<half*>(t.data_ptr()); };
  k<<<blocks, 256, LAYER_SMEM, at::cuda::getCurrentCUDAStream()>>>(reinterpret_cast<const long long*>(ws.data_ptr()), h(x),
      h(kc), h(vc), (int)T, (int)kc.size(2), h(qkv), reinterpret_cast<unsigned long long*>(qll.data_ptr()), po.data_ptr<float>(), pml.data_ptr<float>(), acc3.data_ptr<float>(),
      reinterpret_cast<unsigned*>(arrived.data_ptr()), (int)(ws.size(0) / 4), reinterpret_cast<unsigned long long*>(timeline)); }
int64_t layers_blocks_resident() { int n = 0; auto k = decode_layers<256, 1600, 6400, 25, true>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, LAYER_SMEM);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, 256, LAYER_SMEM); return n; }
'''
CPP = """void layers(torch::Tensor ws, torch::Tensor x, torch::Tensor kc, torch::Tensor vc, int64_t T, torch::Tensor qkv,
            torch::Tensor qll, torch::Tensor po, torch::Tensor pml, torch::Tensor acc3, torch::Tensor arrived, int64_t blocks,
            bool sync, bool lla, bool math, int64_t pf, int64_t timeline);
int64_t layers_blocks_resident();"""


# decode_layers' timeline: what lies between each of its 13 points and the next
TL_POINTS = ["ln_1, qkv rows", "barrier A: qkv stored, the fence (LLA: stored)", "barrier A: arrive and wait",
             "attention (LLA: its q, k, v awaited)",
             "barrier B: the fence", "barrier B: arrive and wait, the splits merged", "attn c_proj rows",
             "barrier C: the adds, the fence", "barrier C: arrive and wait, x updated, ln_2", "c_fc and MLP c_proj rows",
             "barrier D: the adds, the fence", "barrier D: arrive and wait, x updated"]


# (kernels/layernorm.py's and kernels/gelu.py's layernorm_ref and gelu_ref, written again: importing tinygpt2.kernels
# imports TVM, which this torch-only script must not need on a bare GPU machine)
def layernorm_ref(x):
    x = x.astype(np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-5)).astype(np.float16)


def gelu_ref(v):
    return 0.5 * v * (1 + np.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v ** 3)))


def decode_layers_ref(w, kc, vc, x, T):
    """w: per layer (c_attn [3C, C], c_proj as [in, out] [C, C], c_fc [F, C], MLP c_proj as [in, out] [F, C]) fp16;
    kc, vc [L, H, TM, 64] fp16 (T positions filled; position T written here); x [C] fp16 -> x after every layer,
    in float32 sums with the kernel's roundings to fp16."""
    f32 = lambda a: a.astype(np.float32)
    x = x.astype(np.float16)
    C = x.shape[0]
    for l, (wqkv, wo_t, w1, w2_t) in enumerate(w):
        qkv = (f32(wqkv) @ f32(layernorm_ref(x))).astype(np.float16)
        q, k, v = f32(qkv[:C]).reshape(H, D), qkv[C:2 * C].reshape(H, D), qkv[2 * C:].reshape(H, D)
        kc[l, :, T], vc[l, :, T] = k, v
        s = np.einsum("hd,htd->ht", q, f32(kc[l, :, :T + 1])) * 0.125
        p = np.exp(s - s.max(1, keepdims=True))
        att = (np.einsum("ht,htd->hd", p, f32(vc[l, :, :T + 1])) / p.sum(1, keepdims=True)).astype(np.float16)
        x = (f32(x) + (f32(att.reshape(C)) @ f32(wo_t)).astype(np.float16)).astype(np.float16)
        h = gelu_ref(f32(w1) @ f32(layernorm_ref(x))).astype(np.float16)
        x = (f32(x) + (f32(h) @ f32(w2_t)).astype(np.float16)).astype(np.float16)
    return x


def main():
    import torch

    from bench_weight_stream import KERNELS, build_extension, graph_us, option, report
    from tinygpt2.bench import copy_bandwidth, decode_bytes_per_token
    from tinygpt2.config import PRESETS

    out_dir, T = option("out"), option("context", 255, int)
    ext = build_extension("bench_decode_layers", "tinygpt2_decode_layers", CPP, KERNELS + LAYER_KERNEL + LAUNCHERS,
                          ["layers", "layers_blocks_resident"])
    cfg = PRESETS["gpt2-xl"]
    C, F, L = cfg.n_embd, cfg.n_inner, cfg.n_layer
    assert (C, F, cfg.n_head) == (1600, 6400, H), "the kernel is instantiated for gpt2-xl"
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert ext.layers_blocks_resident() >= 1, "a block of decode_layers does not fit on an SM"
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape, s=0.02: (torch.randn(*shape, generator=g) * s).half().cuda()
    w = [(rnd(3 * C, C), rnd(C, C), rnd(F, C), rnd(F, C)) for _ in range(L)]
    TM = 320                                   # the cache's positions
    kc, vc = rnd(L, H, TM, D, s=1.0), rnd(L, H, TM, D, s=1.0)
    ws = torch.tensor([t.data_ptr() for layer in w for t in layer], dtype=torch.int64, device="cuda")
    x0 = rnd(C, s=1.0)
    SPLIT = 5                                  # the kernel's blocks a head (DECODE_SPLIT; its launcher checks)
    assert T + 1 <= min(64 * SPLIT, TM) and H * SPLIT <= sms, "a split's keys: at most 64; a block a split"
    xio, qkv = x0.clone(), torch.zeros(3 * C, device="cuda").half()
    po, pml = torch.zeros(H * SPLIT * D, device="cuda"), torch.zeros(H * SPLIT * 2, device="cuda")
    acc3, arrived = torch.zeros(3, C, device="cuda"), torch.zeros(1, device="cuda", dtype=torch.int32)
    lines = [f"{torch.cuda.get_device_name()}; gpt2-xl fp16, context {T}; a CUDA graph's replay (events), medians", ""]

    qll = torch.zeros(3 * C, device="cuda", dtype=torch.int64)     # LLA's tagged q, k, v (zeros at each call)
    run = lambda ws_, sync, lla, math=True, pf=0, tl=0: ext.layers(ws_, xio, kc, vc, T, qkv, qll, po, pml, acc3, arrived,
                                                                    sms, sync, lla, math, pf, tl)
    # (sync, lla, math, pf): decode_layers' template flags, as its comments say
    kinds = {"every layer, four grid barriers a layer": (True, False, True, 0),
             "the same, q, k, v as tagged values awaited by the attending blocks (no barrier A)": (True, True, True, 0),
             "the same without its barriers (wrong results)": (False, False, True, 0),
             "four barriers, each chunk issued prefetching the one 4 further on into L2": (True, False, True, 4),
             "four barriers, L2 prefetch 8 chunks ahead": (True, False, True, 8),
             "four barriers, no dot products in the weight phases (wrong results)": (True, False, False, 0),
             "the same, L2 prefetch 4 chunks ahead (wrong results)": (True, False, False, 4),
             "neither barriers nor dot products (wrong results)": (False, False, False, 0)}

    # correct first: 4 layers against numpy, for each synchronised kind
    n = 4
    want = decode_layers_ref([tuple(t.cpu().numpy() for t in layer) for layer in w[:n]], kc[:n].cpu().numpy(),
                             vc[:n].cpu().numpy(), x0.cpu().numpy(), T).astype(np.float32)
    for name, (sync, lla, math, pf) in kinds.items():
        if not (sync and math):
            continue
        xio.copy_(x0); acc3.zero_(); qll.zero_(); arrived.zero_()
        run(ws[:4 * n], sync, lla, pf=pf)
        err = float(np.abs(xio.float().cpu().numpy() - want).max() / np.abs(want).max())
        assert err < 2e-2, f"decode_layers ({name}), {n} layers: relative error {err:.2e}"
        lines += [f"{name}: checked against numpy on {n} layers, relative error {err:.1e}"]

    layer_bytes = sum(t.numel() * 2 for t in w[0]) + 2 * H * (T + 1) * D * 2
    bw = copy_bandwidth()
    lines += ["", f"| {L} layers in one launch ({sms} blocks of 256) | us a layer | TB/s (weights + KV) |", "|---|---|---|"]
    step_us = {}
    for name, (sync, lla, math, pf) in kinds.items():
        arrived.zero_()
        us = graph_us(lambda: (xio.copy_(x0), acc3.zero_(), qll.zero_(), run(ws, sync, lla, math, pf))) / L
        lines.append(f"| {name} | {us:.2f} | {layer_bytes / us / 1e6:.2f} |")
        step_us[name] = us * L
    # where a layer's time goes: thread 0's clock in one more call (medians over layers, and over the blocks that
    # attend / the others), at the SM clock measured by bench_weight_stream.py's section 5 (1.97 GHz)
    lines += ["", "| thread 0's clock, us (medians over layers): four barriers, attending blocks / the others; "
              "no barrier A, the same |", "|---|---|---|---|---|"]
    cols = []
    for lla in (False, True):
        tl = torch.zeros(L, sms, 13, device="cuda", dtype=torch.int64)
        xio.copy_(x0); acc3.zero_(); qll.zero_(); arrived.zero_()
        run(ws, True, lla, tl=tl.data_ptr())
        t = tl.cpu().double()
        d = [(t[:, :, j] - t[:, :, j - 1]) / 1.97e3 for j in range(1, 13)] + [(t[1:, :, 0] - t[:-1, :, 0]) / 1.97e3]
        cols += [[x[:, :H * SPLIT].median().item() for x in d], [x[:, H * SPLIT:].median().item() for x in d]]
    for i, what in enumerate(TL_POINTS + ["a layer, start to start"]):
        lines.append(f"| {what} | " + " | ".join(f"{c[i]:.2f}" for c in cols) + " |")
    # the step as the model's: these layers plus lm_head's bytes at the copy rate; against bench's roofline
    per_token = decode_bytes_per_token(cfg, "float16", T)
    lm_head_us = cfg.vocab_size * C * 2 / bw / 1e-6
    tok_s = 1e6 / (min(step_us[k] for k, (sync, _, math, _) in kinds.items() if sync and math) + lm_head_us)
    roof = bw / per_token
    lines += ["", f"A step of the faster synchronised layers plus lm_head at the copy rate ({bw / 1e12:.2f} TB/s, "
              f"{lm_head_us:.1f} us): {tok_s:.0f} tok/s, {100 * tok_s / roof:.0f}% of the roofline ({roof:.0f} tok/s "
              f"at context {T}); today's model: 714 tok/s, 54% (~28 us a layer)."]
    report(lines, out_dir, "bench_decode_layers.md")


if __name__ == "__main__":
    main()
