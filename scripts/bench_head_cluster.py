"""On the GPU machine: gpt2-xl's c_attn and decode attention as one kernel, a thread-block cluster per head.

    PYTHONPATH=. python3 scripts/bench_head_cluster.py [--out=DIR] [--context=255]     (torch + nvcc)

docs/persistent_decode.md's last idea that keeps one kernel per operator elsewhere: a head's chain qkv -> attention
inside one thread-block cluster, so that no value crosses between SMs through L2 and no kernel boundary sits between
the head's q, k, v rows and its attention. Today's model spends 7.23 + 4.83 + 1.44 = 13.5 us a layer on the H100 on
that chain (ln_linear_qkv, the attention's chunks and its merge: docs/results/trace_decode_h100_99d28ef.md); the
4.83 + 1.44 after qkv ends are what aim 2 of issue 6 cannot afford.

One cluster of CL blocks (512 threads, one an SM) per head h, 25 * CL blocks:

    K and V rows of the block's keys (a CL-th of the T + 1)  -> shared memory by cp.async, first
    W's rows of the block (head h's 192 q, k, v rows, every CL-th) -> registers, all at once, a warp a row
    x -> layernorm (no affine: the model folds it into W) -> the dot products, rounded to fp16
      -> each row written into every cluster block's shared memory (distributed shared memory)  -> cluster barrier
    attention over the block's keys (q . k / 8, the split's max m, sum l, o = sum exp(s - m) v; the block holding
      key T appends the new k, v to the cache) -> (m, l, o) into rank 0's shared memory  -> cluster barrier
    rank 0 merges the CL splits -> y[h * 64 : h * 64 + 64] (fp16)

No biases, no layernorm affine (they cost neither bandwidth nor a dependency). Checked against numpy on one layer,
then timed as 48 launches in a CUDA graph (each layer its own W and cache, so W is cold; CUDA events around a replay,
medians), beside, in the same graph form: the same kernel without its attention (each block writes its q, k, v rows
to global memory and exits: what the cluster layout costs the stream), the GEMV as kernels/ln_linear.py schedules it
(scripts/bench_weight_stream.py's gemv_reg, 600 blocks of 256), and a kernel that only reads the same bytes.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

H, D = 25, 64                        # gpt2-xl's heads, head size (n_embd 1600)

HEAD_KERNEL = r'''
// the sum (every thread gets it) of a float2 over the block's NTH threads: shuffles, then shared memory across warps
template <int NTH>
__device__ __forceinline__ float2 hc_sum2(float2 v, float2* red) {
  for (int o = 16; o; o >>= 1) { v.x += __shfl_xor_sync(0xffffffff, v.x, o); v.y += __shfl_xor_sync(0xffffffff, v.y, o); }
  __syncthreads();                                                      // red free (an earlier call's reads done)
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = make_float2(0.f, 0.f);
  for (int w = 0; w < NTH / 32; ++w) { v.x += red[w].x; v.y += red[w].y; }
  return v; }
template <int NTH>
__device__ __forceinline__ float hc_max(float v, float2* red) {
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5].x = v;
  __syncthreads();
  v = -INFINITY;
  for (int w = 0; w < NTH / 32; ++w) v = fmaxf(v, red[w].x);
  return v; }
__device__ __forceinline__ void hc_cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src) : "memory"); }
// the cluster barrier in two halves: arrive (relaxed: orders nothing) and wait; and the whole (release / acquire)
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }

constexpr int HC_KEYS = 64;                                             // keys a block at most: T + 1 <= CL * 64
// c_attn's rows of head h = blockIdx.x / CL and its attention, one cluster of CL blocks a head (this file's docstring).
// w: c_attn [3C, C] (rows q, then k, then v; head h's are h * 64 .. h * 64 + 63 of each); x [C]; kc, vc [H][TM][64],
// T positions cached (the new key, T, is appended); y [C]: the attention's output. ATT false: no attention, each
// block writes its q, k, v rows to qkv [3C] and exits (no cluster exchange).
// TMA 1: W's rows copied into shared memory by the bulk-copy engine (a cp.async.bulk a row, one mbarrier a warp's
// row slot: rows 0..NW-1, NW..2NW-1, ...) instead of loaded into registers: one block an SM has few requests in flight
// of its own, and a bulk copy is one request for 3200 bytes. TMA 2: the same from W packed by block (w [25 * CL][NR][C],
// the block's rows contiguous, head_pack in Python): one copy a row slot (16 rows, 51.2 KB).
// PDL: launched as a programmatic dependent of the kernel before (x read after griddepcontrol.wait; W and the cached
// keys, which no kernel of the step writes, before it), as the model's decode kernels are.
// tl (null: none): thread 0's clock64 at 6 points, [block][6]: entry, its warp's dot products done, after the first
// cluster barrier, its split's partials written, after the second barrier, the end; and globaltimer at entry and end
// in tl[gridDim.x * 6 + 2 * block + 0/1].
template <int NTH, int CL, bool ATT, int TMA = 0, bool PDL = false>
__global__ void __launch_bounds__(NTH, 1) head_qkv_attend(const half* __restrict__ w, const half* __restrict__ x,
    half* kc, half* vc, int T, int TM, half* __restrict__ y, half* __restrict__ qkv, unsigned long long* tl) {
  unsigned long long* tb = tl && threadIdx.x == 0 ? tl + blockIdx.x * 6 : nullptr;
  auto gtime = []() { unsigned long long v; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(v)); return v; };
  if (tb) { tb[0] = clock64(); tl[gridDim.x * 6 + 2 * blockIdx.x] = gtime(); }
  constexpr int C = 1600, DH = 64, NV = C / 8, NL = (NV + 31) / 32;   // 200 vectors of 8 a row, 7 a lane at most
  constexpr int NR = (3 * DH + CL - 1) / CL, NW = NTH / 32, RPW = (NR + NW - 1) / NW;   // rows a block, a warp (most)
  static_assert(NTH % DH == 0 && NTH >= HC_KEYS * 8, "groups of 64 threads sum the values; a key's row a thread");
  __shared__ __align__(16) half xn[C];                                  // x layernormed
  __shared__ __align__(16) half qkvs[3 * DH];                          // head h's q, k, v: all 192, in every block
  __shared__ __align__(16) half ks[HC_KEYS][DH], vs[HC_KEYS][DH];       // the block's keys' K and V rows
  __shared__ float2 red[NW];
  __shared__ float p[HC_KEYS], part[NTH / DH][DH];
  __shared__ float po[CL][DH], pml[CL][2];                              // rank 0: every split's o, and (m, l)
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int r = (int)cluster.block_rank(), h = blockIdx.x / CL, t = threadIdx.x, lane = t & 31, wp = t >> 5;
  const int nrows = (3 * DH - r + CL - 1) / CL;                         // head rows r, r + CL, ... < 192
  const int n = T + 1, per = (n + CL - 1) / CL, j0 = r * per, nk = max(0, min(n, j0 + per) - j0);
  const size_t cache = (size_t)h * TM * DH;
  if (ATT) cluster_arrive_relaxed();                                    // (every block started: before any DSMEM write)
  // 1. the cached keys' K and V rows into shared memory, 16 bytes a thread: in flight while W streams
  if (ATT) {
    for (int i = t; i < nk * 8; i += NTH) {
      const int jj = i / 8, v = i % 8, j = j0 + jj;
      if (j < T) { hc_cp_async16(&ks[jj][v * 8], kc + cache + (size_t)j * DH + v * 8);
                   hc_cp_async16(&vs[jj][v * 8], vc + cache + (size_t)j * DH + v * 8); } }
    asm volatile("cp.async.commit_group;" ::: "memory");
  }
  // 2. W's rows into registers, every load issued before anything waits: warp wp takes block rows wp, wp + NW, ...;
  //    block row rr is head row hr = r + CL * rr, i.e. c_attn row (hr / 64) * C + h * 64 + hr % 64
  auto w_row = [&](int rr) { const int hr = r + CL * rr; return w + (size_t)((hr / DH) * C + h * DH + hr % DH) * C; };
  uint4 wr[TMA ? 1 : RPW][NL];
  extern __shared__ __align__(128) unsigned char hc_dyn[];               // TMA: the block's rows of W [NR][C]
  __shared__ uint64_t wbar[RPW];
  if (TMA) {
    if (t == 0) for (int i = 0; i < RPW; ++i) bar_init(&wbar[i]);
    __syncthreads();
    if (t == 0) for (int i = 0; i < RPW; ++i) {
      const int n_i = min(NW, nrows - NW * i);
      if (n_i <= 0) break;
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem(&wbar[i])), "r"(n_i * C * 2) : "memory");
      if (TMA == 2) {
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     :: "r"(smem(hc_dyn + (size_t)NW * i * C * 2)), "l"(w + ((size_t)blockIdx.x * NR + NW * i) * C),
                        "r"(n_i * C * 2), "r"(smem(&wbar[i])) : "memory");
      } else {
        for (int rr = NW * i; rr < NW * i + n_i; ++rr)
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                       :: "r"(smem(hc_dyn + (size_t)rr * C * 2)), "l"(w_row(rr)), "r"(C * 2), "r"(smem(&wbar[i])) : "memory"); } }
  } else {
    #pragma unroll
    for (int i = 0; i < RPW; ++i) {
      const int rr = wp + NW * i;
      const uint4* row = reinterpret_cast<const uint4*>(w_row(rr));
      #pragma unroll
      for (int k = 0; k < NL; ++k) { const int v = lane + 32 * k; if (rr < nrows && v < NV) wr[TMA ? 0 : i][k] = row[v]; } } }
  if (PDL) grid_dep_wait();                                              // x: written by the kernel before
  // 3. xn = (x - mean) / sqrt(var + 1e-5), rounded to fp16
  float2 sq = make_float2(0.f, 0.f);
  for (int i = t; i < C; i += NTH) { const float v = __half2float(x[i]); sq.x += v; sq.y += v * v; }
  sq = hc_sum2<NTH>(sq, red);
  const float mean = sq.x / C, rstd = rsqrtf(sq.y / C - mean * mean + 1e-5f);
  for (int i = t; i < C; i += NTH) xn[i] = __float2half((__half2float(x[i]) - mean) * rstd);
  __syncthreads();
  if (ATT) cluster_wait();
  // 4. a warp a row: the dot product, summed over the warp, rounded to fp16; lane c < CL writes it into rank c's qkvs
  #pragma unroll
  for (int i = 0; i < RPW; ++i) {
    const int rr = wp + NW * i, hr = r + CL * rr;
    if (rr < nrows) {                                                   // (the same for the whole warp)
      float acc = 0.f;
      const uint4* ws = reinterpret_cast<const uint4*>(hc_dyn + (size_t)rr * C * 2);
      if (TMA) bar_wait(&wbar[i], 0);
      #pragma unroll
      for (int k = 0; k < NL; ++k) { const int v = lane + 32 * k;
        if (v < NV) acc += dot8(TMA ? ws[v] : wr[TMA ? 0 : i][k], reinterpret_cast<const uint4*>(xn)[v]); }
      for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
      if (ATT && lane < CL) cluster.map_shared_rank(qkvs, lane)[hr] = __float2half(acc);
      if (!ATT && lane == 0) qkv[(hr / DH) * C + h * DH + hr % DH] = __float2half(acc);
    } }
  if (tb) tb[1] = clock64();
  if (!ATT) { if (tb) { tb[2] = tb[3] = tb[4] = tb[5] = tb[1]; tl[gridDim.x * 6 + 2 * blockIdx.x + 1] = gtime(); } return; }
  cluster.sync();                                                       // every block has all 192 of q, k, v
  if (tb) tb[2] = clock64();
  // 5. attention over the block's keys [j0, j0 + nk): thread t < nk takes key j0 + t
  asm volatile("cp.async.wait_all;" ::: "memory");
  if (j0 + nk == n && t < DH) {                                         // the block holding the new key appends it
    ks[nk - 1][t] = qkvs[DH + t]; vs[nk - 1][t] = qkvs[2 * DH + t];
    kc[cache + (size_t)T * DH + t] = qkvs[DH + t]; vc[cache + (size_t)T * DH + t] = qkvs[2 * DH + t]; }
  __syncthreads();
  float s = -INFINITY;
  if (t < nk) {
    s = 0.f;
    #pragma unroll
    for (int i = 0; i < DH / 8; ++i) {                                  // vector (i + t) % 8: no bank conflicts between
      const int ii = (i + t) & 7;                                       // the rows, 128 bytes apart
      s += dot8(reinterpret_cast<const uint4*>(ks[t])[ii], reinterpret_cast<const uint4*>(qkvs)[ii]); }
    s *= 0.125f; }
  const float m = hc_max<NTH>(s, red);
  const float e = t < nk ? __expf(s - m) : 0.f;
  const float l = hc_sum2<NTH>(make_float2(e, 0.f), red).x;
  if (t < HC_KEYS) p[t] = e;
  __syncthreads();
  const int grp = t / DH, d = t % DH;                                   // group grp sums keys grp, grp + NTH / 64, ...
  float o = 0.f;
  for (int jj = grp; jj < nk; jj += NTH / DH) o += p[jj] * __half2float(vs[jj][d]);
  part[grp][d] = o;
  __syncthreads();
  if (t < DH) {
    for (int g = 1; g < NTH / DH; ++g) o += part[g][d];
    cluster.map_shared_rank(&po[0][0], 0)[r * DH + d] = o;
    if (t == 0) { float* ml = cluster.map_shared_rank(&pml[0][0], 0); ml[2 * r] = m; ml[2 * r + 1] = l; } }
  if (tb) tb[3] = clock64();
  cluster.sync();                                                       // rank 0 has every split's (m, l, o)
  if (tb) tb[4] = clock64();
  // 6. rank 0 merges: y = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s
  if (r == 0 && t < DH) {
    float mx = -INFINITY, num = 0.f, den = 0.f;
    #pragma unroll
    for (int s2 = 0; s2 < CL; ++s2) mx = fmaxf(mx, pml[s2][0]);
    #pragma unroll
    for (int s2 = 0; s2 < CL; ++s2) { const float f = __expf(pml[s2][0] - mx); num += f * po[s2][t]; den += f * pml[s2][1]; }
    y[h * DH + t] = __float2half(num / den); }
  if (tb) { tb[5] = clock64(); tl[gridDim.x * 6 + 2 * blockIdx.x + 1] = gtime(); }
}
'''

LAUNCHERS = r'''
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
constexpr int HC_NTH = 512;
template <int CL, bool ATT, int TMA = 0, bool PDL = false> void launch_head(torch::Tensor w, torch::Tensor x,
    torch::Tensor kc, torch::Tensor vc, int64_t T, torch::Tensor y, torch::Tensor qkv, int64_t tl) {
  constexpr int SMEM = TMA ? (3 * 64 + CL - 1) / CL * 1600 * 2 : 0;   // the block's rows of W
  auto k = head_qkv_attend<HC_NTH, CL, ATT, TMA, PDL>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
  cudaLaunchConfig_t cfg = {}; cfg.gridDim = dim3(25 * CL); cfg.blockDim = dim3(HC_NTH); cfg.dynamicSmemBytes = SMEM;
  cfg.stream = at::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute at[2]; at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = CL; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
  at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization; at[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at; cfg.numAttrs = PDL ? 2 : 1;
  auto h = [](torch::Tensor t) { return reinterpret_cast<half*>(t.data_ptr()); };
  TORCH_CHECK(T + 1 <= CL * HC_KEYS, "at most ", CL * HC_KEYS, " keys");
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, k, (const half*)h(w), (const half*)h(x), h(kc), h(vc), (int)T, (int)kc.size(1),
                                    h(y), h(qkv), reinterpret_cast<unsigned long long*>(tl))); }
// one layer: CL blocks a head (4 or 5), att: with the attention, tma: 0 (W in registers), 1 (a bulk copy a row), 2
// (W packed by block: a bulk copy a row slot); pdl: launched as a programmatic dependent (with tma 1 only); tl: the
// timeline's address (0: none)
void head(torch::Tensor w, torch::Tensor x, torch::Tensor kc, torch::Tensor vc, int64_t T, torch::Tensor y,
          torch::Tensor qkv, int64_t cl, bool att, int64_t tma, bool pdl, int64_t tl) {
  TORCH_CHECK(cl == 4 || cl == 5, "cl: 4 or 5 (the instances built)");
  TORCH_CHECK(tma == 0 || cl == 4, "W by TMA: clusters of 4 only (the instances built)");
  TORCH_CHECK(!pdl || tma == 1, "PDL: W by TMA a row only (the instances built)");
  if (pdl) att ? launch_head<4, true, 1, true>(w, x, kc, vc, T, y, qkv, tl) : launch_head<4, false, 1, true>(w, x, kc, vc, T, y, qkv, tl);
  else if (tma == 1) att ? launch_head<4, true, 1>(w, x, kc, vc, T, y, qkv, tl) : launch_head<4, false, 1>(w, x, kc, vc, T, y, qkv, tl);
  else if (tma == 2) att ? launch_head<4, true, 2>(w, x, kc, vc, T, y, qkv, tl) : launch_head<4, false, 2>(w, x, kc, vc, T, y, qkv, tl);
  else if (cl == 4) att ? launch_head<4, true>(w, x, kc, vc, T, y, qkv, tl) : launch_head<4, false>(w, x, kc, vc, T, y, qkv, tl);
  else att ? launch_head<5, true>(w, x, kc, vc, T, y, qkv, tl) : launch_head<5, false>(w, x, kc, vc, T, y, qkv, tl); }
// how many clusters of cl blocks can be resident at once (25 are needed for one wave)
int64_t head_clusters_resident(int64_t cl) {
  cudaLaunchConfig_t cfg = {}; cfg.gridDim = dim3(25 * cl); cfg.blockDim = dim3(HC_NTH);
  cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = cl; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1; cfg.attrs = at; cfg.numAttrs = 1;
  int n = 0;
  C10_CUDA_CHECK(cl == 4 ? cudaOccupancyMaxActiveClusters(&n, head_qkv_attend<HC_NTH, 4, true>, &cfg)
                         : cudaOccupancyMaxActiveClusters(&n, head_qkv_attend<HC_NTH, 5, true>, &cfg));
  return n; }
void stream_read(torch::Tensor b, torch::Tensor out) {                // 8 blocks of 256 an SM
  int sms = 0; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, b.get_device());
  read_sum<<<sms * 8, 256, 0, at::cuda::getCurrentCUDAStream()>>>(reinterpret_cast<const uint4*>(b.data_ptr()),
                                                                   b.numel() * 2 / 16, out.data_ptr<float>()); }
void gemv8_pdl(torch::Tensor w, torch::Tensor x, torch::Tensor y) {   // the same as a programmatic dependent launch
  cudaLaunchConfig_t cfg = {}; cfg.gridDim = dim3(w.size(0) / 8); cfg.blockDim = dim3(256);
  cfg.stream = at::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1; cfg.attrs = at; cfg.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, gemv_pdl<8, 0>, reinterpret_cast<const half*>(w.data_ptr()),
                                    reinterpret_cast<const half*>(x.data_ptr()), (const half*)nullptr,
                                    reinterpret_cast<half*>(y.data_ptr()), (int)w.size(1))); }
void gemv8(torch::Tensor w, torch::Tensor x, torch::Tensor y) {       // kernels/ln_linear.py's schedule: 8 rows a block
  gemv_reg<8, 0><<<w.size(0) / 8, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const half*>(w.data_ptr()), reinterpret_cast<const half*>(x.data_ptr()), nullptr,
      reinterpret_cast<half*>(y.data_ptr()), (int)w.size(1)); }
'''
CPP = """void head(torch::Tensor w, torch::Tensor x, torch::Tensor kc, torch::Tensor vc, int64_t T, torch::Tensor y,
          torch::Tensor qkv, int64_t cl, bool att, int64_t tma, bool pdl, int64_t tl);
int64_t head_clusters_resident(int64_t cl);
void stream_read(torch::Tensor b, torch::Tensor out);
void gemv8(torch::Tensor w, torch::Tensor x, torch::Tensor y);
void gemv8_pdl(torch::Tensor w, torch::Tensor x, torch::Tensor y);"""


def head_rows(cl: int) -> list[int]:
    """c_attn's row indices in the order TMA 2 reads them: block b = h * cl + r takes head h's rows r, r + cl, ... of
    its 192 (q, then k, then v), NR of them (a row slot padded with row 0 where the head has fewer)."""
    C, nr = H * D, (3 * D + cl - 1) // cl
    rows = []
    for b in range(H * cl):
        h, r = divmod(b, cl)
        for rr in range(nr):
            hr = r + cl * rr
            rows.append((hr // D) * C + h * D + hr % D if hr < 3 * D else 0)
    return rows


def head_attention_ref(w, kc, vc, x, T):
    """w: c_attn [3C, C] fp16; kc, vc [H, TM, 64] fp16, T positions cached (position T written here); x [C] fp16
    -> (qkv [3C] fp16, y [C] fp16): the kernel's roundings (xn, q, k, v and y to fp16; sums in float32)."""
    from bench_decode_layers import layernorm_ref
    f32 = lambda a: a.astype(np.float32)
    C = x.shape[0]
    qkv = (f32(w) @ f32(layernorm_ref(x))).astype(np.float16)
    q, k, v = f32(qkv[:C]).reshape(H, D), qkv[C:2 * C].reshape(H, D), qkv[2 * C:].reshape(H, D)
    kc[:, T], vc[:, T] = k, v
    s = np.einsum("hd,htd->ht", q, f32(kc[:, :T + 1])) * 0.125
    p = np.exp(s - s.max(1, keepdims=True))
    y = (np.einsum("ht,htd->hd", p, f32(vc[:, :T + 1])) / p.sum(1, keepdims=True)).astype(np.float16)
    return qkv, y.reshape(C)


def main():
    import torch

    from bench_weight_stream import KERNELS, build_extension, graph_us, option, report
    from tinygpt2.bench import copy_bandwidth

    out_dir, T = option("out"), option("context", 255, int)
    ext = build_extension("bench_head_cluster", "tinygpt2_head_cluster", CPP, KERNELS + HEAD_KERNEL + LAUNCHERS,
                          ["head", "head_clusters_resident", "stream_read", "gemv8", "gemv8_pdl"])
    C, L, TM = 1600, 48, 320
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape, s=0.02: (torch.randn(*shape, generator=g) * s).half().cuda()
    w = [rnd(3 * C, C) for _ in range(L)]
    kc, vc = rnd(L, H, TM, D, s=1.0), rnd(L, H, TM, D, s=1.0)
    x = rnd(C, s=1.0)
    y, qkv, sink = torch.zeros(C, device="cuda").half(), torch.zeros(3 * C, device="cuda").half(), torch.zeros(1, device="cuda")
    lines = [f"{torch.cuda.get_device_name()}; gpt2-xl fp16, context {T} (+ the new key); 48 layers' c_attn "
             f"({3 * C * C * 2 / 1e6:.2f} MB each) in a CUDA graph's replay (events), medians", ""]

    # correct first: layer 0 against numpy, each cluster size, with and without the attention
    want_qkv, want_y = head_attention_ref(w[0].cpu().numpy(), kc[0].cpu().numpy(), vc[0].cpu().numpy(), x.cpu().numpy(), T)
    rel = lambda got, want: float(np.abs(got.float().cpu().numpy() - want.astype(np.float32)).max()
                                  / np.abs(want.astype(np.float32)).max())
    variants = ((4, 0, False), (5, 0, False), (4, 1, False), (4, 2, False), (4, 1, True))   # (blocks a head, TMA, PDL)
    name = lambda tma, pdl: {0: "", 1: ", W by TMA a row", 2: ", W packed, by TMA a row slot"}[tma] + (", PDL" if pdl else "")
    pack = [wl[torch.tensor(head_rows(4), device="cuda")].contiguous() for wl in w]
    wsrc = lambda l, tma: pack[l] if tma == 2 else w[l]
    for cl, tma, pdl in variants:
        how = f"clusters of {cl}{name(tma, pdl)}"
        if not tma:
            lines.append(f"clusters of {cl} resident at once: {ext.head_clusters_resident(cl)} (25 needed)")
        k0, v0 = kc[0].clone(), vc[0].clone()
        y.zero_(); ext.head(wsrc(0, tma), x, k0, v0, T, y, qkv, cl, True, tma, pdl, 0)
        err_y = rel(y, want_y)
        err_k = rel(k0[:, T], want_qkv[C:2 * C].reshape(H, D))
        qkv.zero_(); ext.head(wsrc(0, tma), x, k0, v0, T, y, qkv, cl, False, tma, pdl, 0)
        err_q = rel(qkv, want_qkv)
        assert max(err_y, err_k, err_q) < 2e-2, (how, err_y, err_k, err_q)
        lines.append(f"{how}: checked against numpy, relative error y {err_y:.1e}, new key {err_k:.1e}, q k v {err_q:.1e}")
    torch.cuda.synchronize()

    bw = copy_bandwidth()
    kinds = {"read only (read_sum, 8 blocks of 256 an SM)": lambda l: ext.stream_read(w[l], sink),
             "GEMV as ln_linear schedules it (gemv_reg, 600 blocks of 256)": lambda l: ext.gemv8(w[l], x, qkv),
             "the same GEMV, PDL (gemv_pdl: W loaded, then griddepcontrol.wait)": lambda l: ext.gemv8_pdl(w[l], x, qkv),
             **{f"cluster of {cl} a head{name(tma, pdl)}, qkv rows only (no attention)":
                (lambda l, cl=cl, tma=tma, pdl=pdl: ext.head(wsrc(l, tma), x, kc[l], vc[l], T, y, qkv, cl, False, tma, pdl, 0))
                for cl, tma, pdl in variants},
             **{f"**cluster of {cl} a head{name(tma, pdl)}, qkv + attention**":
                (lambda l, cl=cl, tma=tma, pdl=pdl: ext.head(wsrc(l, tma), x, kc[l], vc[l], T, y, qkv, cl, True, tma, pdl, 0))
                for cl, tma, pdl in variants}}
    lines += ["", f"| 48 launches in a CUDA graph (copy bandwidth {bw / 1e12:.2f} TB/s) | us a layer | TB/s of W |",
              "|---|---|---|"]
    for what, launch in kinds.items():
        us = graph_us(lambda: [launch(l) for l in range(L)]) / L
        lines.append(f"| {what} | {us:.2f} | {3 * C * C * 2 / us / 1e6:.2f} |")

    # where the time goes inside the kernel: thread 0's clock at 6 points of each block, 48 launches one after another
    # (not in a graph: the points are inside each kernel), the SM clock from the clock against globaltimer
    timed = ((0, False), (1, False), (2, False))
    lines += ["", "| inside one launch, us (medians over 48 layers and the blocks; clusters of 4) | " +
              " | ".join(name(t, p)[2:] or "W in registers" for t, p in timed) + " |", "|---|---|---|---|"]
    cols = []
    for tma, pdl in timed:
        nb = 4 * H
        tl = torch.zeros(L, nb * 8, device="cuda", dtype=torch.int64)
        for l in range(L):
            ext.head(wsrc(l, tma), x, kc[l], vc[l], T, y, qkv, 4, True, tma, pdl, tl[l].data_ptr())
        torch.cuda.synchronize()
        t = tl.cpu().double()
        clk, gt = t[:, :nb * 6].reshape(L, nb, 6), t[:, nb * 6:].reshape(L, nb, 2)
        ghz = ((clk[:, :, 5] - clk[:, :, 0]) / (gt[:, :, 1] - gt[:, :, 0])).median().item()
        d = [((clk[:, :, j + 1] - clk[:, :, j]) / ghz / 1e3).median().item() for j in range(4)]
        rank0 = ((clk[:, ::4, 5] - clk[:, ::4, 4]) / ghz / 1e3).median().item()
        skew = ((gt[:, :, 0].max(1).values - gt[:, :, 0].min(1).values) / 1e3).median().item()
        span = ((gt[:, :, 1].max(1).values - gt[:, :, 0].min(1).values) / 1e3).median().item()
        cols.append(d + [rank0, skew, span, ghz])
    for i, what in enumerate(["entry -> its warp's dot products done (W landed, x normalized)",
                              "-> first cluster barrier passed (q, k, v everywhere)",
                              "-> its split of the attention done, partials written into rank 0",
                              "-> second cluster barrier passed", "-> rank 0 merged and wrote y",
                              "blocks' entries, first to last (globaltimer)",
                              "first entry to last end (globaltimer)", "SM clock, GHz (clock64 / globaltimer)"]):
        lines.append(f"| {what} | " + " | ".join(f"{c[i]:.2f}" for c in cols) + " |")
    lines += ["", "The model on the H100 (trace_decode_h100_99d28ef.md, from the previous kernel's end): ln_linear_qkv "
              "7.23 us, the attention's chunks 4.83 and merge 1.44: 13.50 us a layer for this chain."]
    report(lines, out_dir, "bench_head_cluster.md")


if __name__ == "__main__":
    main()
