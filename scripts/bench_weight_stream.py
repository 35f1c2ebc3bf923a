"""On the GPU machine: how fast can one kernel per weight matrix stream gpt2-xl's decode weights at all?

    PYTHONPATH=. python3 scripts/bench_weight_stream.py [--out=DIR] [--reads | --mlp-only | --timeline | --layers [--variants=9,10]]
    bash scripts/gpu_session.sh weight-stream                           (the same, after the device install)

Decode at batch 1 reads every weight once per token, so its time is bounded below by bytes / bandwidth
(`tinygpt2 bench`'s roofline). Our decode step launches one kernel per weight matrix (kernels/ln_linear.py),
and reaches 54% of that roofline on gpt2-xl (docs/results/README.md). This script measures, with small raw
CUDA kernels built here by torch's cpp_extension (nvcc), what that design can reach and what the obvious
ways around its per-kernel cost buy -- the evidence behind issue 6's "what would close it":

  1. streaming reads, cold (each buffer read once per pass, the set larger than L2): one kernel reading
     exactly the bytes of one of gpt2-xl's matrices, and the step of such kernels (one per matrix, plus the
     KV cache at the 1 GiB rate) against the roofline with the copy bandwidth of this run: the ceiling of a
     kernel-per-matrix decode step that did nothing but read;
  2. one decode GEMV (y = W x, W [N, K] fp16, our kernels' layout: a warp per row, every load of W in
     registers at once), cold, with W in L2 already (the same W again), and after W was prefetched into L2
     (prefetch.global.L2, a line a thread) by a kernel before a 6 us idle kernel (what the latency-bound
     attention leaves); and the same GEMV copying W by TMA (cp.async.bulk) into shared memory;
  3. the MLP (gelu(c_fc) then c_proj + residual) x 48 layers in one CUDA graph: two kernels a layer (plain,
     W by TMA, or launched early by PDL), against one kernel a layer that does both linears with a grid-wide
     barrier between them, so that HBM can stream c_proj's weights while the last blocks finish c_fc:
       - persistent, 800 blocks all resident: c_proj's rows copied by TMA into shared memory before the barrier;
         or loaded into registers (64 a thread, 8 blocks of 128 an SM) after it, or before it;
       - streaming, one block an SM: its rows of both matrices flow through a ring of shared-memory chunks that
         runs ahead across the barrier, filled by TMA (also timed without the barrier, and taken apart step by step
         from the bare ring) or by cp.async;
       - split: no barrier inside the MLP, c_proj split by the blocks' c_fc rows (W2 read as [in, out]), the partial
         sums added by float atomics;
     and every layer in one launch (`--layers`: these rows alone, with the two-kernel baseline): the split kernel's
     work a layer, one grid barrier a layer, the ring running on across layers -- with its variants (ring sizes,
     who fences, L2 prefetch ahead of the ring) and a timeline of its barrier.
  4. the ring alone, no arithmetic: how fast one (or two) blocks an SM stream a buffer through a ring of
     shared-memory chunks filled by TMA, against read_sum's registers.
     (--reads runs sections 1 and 2 alone, --mlp-only sections 3 and 4.)
  5. (--timeline, alone) where the streaming kernel's time goes: thread 0 of each block writes when each chunk
     arrived and when the block was done with it, from the bare ring to the whole kernel one step at a time.

Kernel times come from CUPTI (torch.profiler), as scripts/trace_decode.py's; graph times from CUDA events,
medians. Prints Markdown tables; --out also writes them to DIR/bench_weight_stream.md.
"""

import os
import statistics
import sys

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.cpp_extension import load_inline

from tinygpt2.bench import copy_bandwidth, decode_bytes_per_token
from tinygpt2.config import PRESETS

# the kernels (device code only: tests/test_bench_weight_stream.py builds them with nvcc alone), then their launchers
KERNELS = r'''
#include <cuda_fp16.h>
#include <cstdint>
#include <cooperative_groups.h>
#define KO 7                     // vector loads of W a thread (gpt2-xl: 200 or 800 vectors a row / 32 or 128 lanes)

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {              // 8 halves . 8 halves, in float32
  const half2* x = reinterpret_cast<const half2*>(&a); const half2* y = reinterpret_cast<const half2*>(&b); float s = 0.f;
  #pragma unroll
  for (int e = 0; e < 4; ++e) { float2 p = __half22float2(x[e]), q = __half22float2(y[e]); s += p.x * q.x + p.y * q.y; }
  return s; }
__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v))); }
// a row's partial sums, TPR threads a row (a power of two): warp shuffles, then shared memory across its warps
__device__ __forceinline__ float row_reduce(float acc, float* red, int TPR) {   // TPR: a power of 2
  for (int o = TPR < 32 ? TPR / 2 : 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
  if (TPR > 32) { if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc; __syncthreads();
    int w0 = (threadIdx.x / TPR) * (TPR / 32); acc = 0.f; for (int i = 0; i < TPR / 32; ++i) acc += red[w0 + i]; }
  return acc; }
__device__ __forceinline__ void store(half* y, const half* r, int row, float acc, int mode) {   // 0: gelu, 1: + r
  y[row] = mode == 0 ? __float2half(gelu(acc)) : __hadd(r[row], __float2half(acc)); }

// 1. a streaming read (what is read is folded into a result that is never true, so it is not optimized out)
__global__ void read_sum(const uint4* __restrict__ p, long n, float* out) {
  float s = 0.f; long stride = (long)gridDim.x * blockDim.x;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) { uint4 v = p[i]; s += __uint_as_float(v.x ^ v.y ^ v.z ^ v.w); }
  if (s == 1.2345f) out[0] = s; }

// 2. the GEMV as kernels/ln_linear.py schedules it: R rows a block, W's slice of a thread in registers
template <int R, int MODE>
__global__ void __launch_bounds__(256) gemv_reg(const half* __restrict__ w, const half* __restrict__ x, const half* __restrict__ r,
                                                half* __restrict__ y, int K) {
  __shared__ float red[8];
  const int TPR = 256 / R, row = blockIdx.x * R + threadIdx.x / TPR, lane = threadIdx.x % TPR, nv = K / 8;
  uint4 wr[KO]; float acc = 0.f;
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) wr[i] = reinterpret_cast<const uint4*>(w + (size_t)row * K)[v]; }
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) acc += dot8(wr[i], reinterpret_cast<const uint4*>(x)[v]); }
  acc = row_reduce(acc, red, TPR);
  if (lane == 0) store(y, r, row, acc, MODE); }

// TMA: one bulk copy of the block's R rows into shared memory, completion counted by an mbarrier
__device__ __forceinline__ unsigned smem(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void bar_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem(bar))); asm volatile("fence.mbarrier_init.release.cluster;"); }
__device__ __forceinline__ void tma_rows(void* dst, const void* src, unsigned bytes, uint64_t* bar) {   // one thread
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem(bar)), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(smem(dst)), "l"(src), "r"(bytes), "r"(smem(bar)) : "memory"); }
__device__ __forceinline__ bool bar_test(uint64_t* bar, unsigned phase) {     // has the phase completed? (no wait)
  unsigned done;
  asm volatile("{ .reg .pred p; mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
               : "=r"(done) : "r"(smem(bar)), "r"(phase) : "memory");
  return done; }
__device__ __forceinline__ void bar_wait(uint64_t* bar, unsigned phase) {
  asm volatile("{ .reg .pred p; W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1; @!p bra W; }" :: "r"(smem(bar)), "r"(phase) : "memory"); }
// the block's R rows, from shared memory, dotted with x (coherent loads of x when another block wrote it)
__device__ __forceinline__ float smem_dot(const half* ws, const half* x, int K, int R, bool coherent) {
  const int TPR = 256 / R, rr = threadIdx.x / TPR, lane = threadIdx.x % TPR, nv = K / 8; float acc = 0.f;
  for (int v = lane; v < nv; v += TPR) {
    uint4 xv; const uint4* p = reinterpret_cast<const uint4*>(x) + v;
    if (coherent) asm volatile("ld.relaxed.gpu.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(xv.x), "=r"(xv.y), "=r"(xv.z), "=r"(xv.w) : "l"(p));
    else xv = *p;
    acc += dot8(reinterpret_cast<const uint4*>(ws + (size_t)rr * K)[v], xv); }
  return acc; }
template <int R, int MODE>
__global__ void __launch_bounds__(256) gemv_tma(const half* __restrict__ w, const half* __restrict__ x, const half* __restrict__ r,
                                                half* __restrict__ y, int K) {
  extern __shared__ __align__(128) unsigned char sm[];
  __shared__ uint64_t bar; __shared__ float red[8];
  half* ws = reinterpret_cast<half*>(sm);
  if (threadIdx.x == 0) { bar_init(&bar); tma_rows(ws, w + (size_t)blockIdx.x * R * K, R * K * 2, &bar); }
  __syncthreads(); bar_wait(&bar, 0);
  const int TPR = 256 / R; float acc = row_reduce(smem_dot(ws, x, K, R, false), red, TPR);
  if (threadIdx.x % TPR == 0) store(y, r, blockIdx.x * R + threadIdx.x / TPR, acc, MODE); }

// 2. W into L2 ahead of its GEMV: a 128-byte line a prefetch, grid-stride; and a kernel that idles ~ns
__global__ void prefetch_l2(const char* p, long n) {
  long stride = (long)gridDim.x * blockDim.x * 128;
  for (long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 128; i < n; i += stride) asm volatile("prefetch.global.L2 [%0];" :: "l"(p + i)); }
__global__ void idle(long ns) { long t0 = clock64(); while (clock64() - t0 < ns * 2) {} }   // ~2 GHz

// a grid-wide barrier, thread 0 of each block: arrive, then wait for the whole grid. The counter only grows (graph
// replays reuse it), so it must start at a multiple of the grid: a counter per kernel and grid size. A wait that
// spins for seconds traps (an error in Python) instead of hanging the GPU.
__device__ __forceinline__ void grid_arrive_wait(unsigned* arrived) {
  unsigned old = atomicAdd(arrived, 1u), target = (old / gridDim.x + 1) * gridDim.x, now; long spins = 0;
  do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(now) : "l"(arrived) : "memory");
       if (++spins > (1L << 28)) __trap(); } while ((int)(now - target) < 0); }

// 3. the MLP in one persistent launch: h = gelu(W1 x) (8 rows a block), a grid-wide barrier, y = r + W2 h (2 rows a
// block). W2's rows are copied (TMA) into the shared memory W1's rows used, as soon as those are used, so that they
// stream in while the block waits at the barrier. Every block must be resident at once (checked by the caller).
__global__ void __launch_bounds__(256) mlp_persistent(const half* __restrict__ w1, const half* __restrict__ x, half* h,
    const half* __restrict__ w2, const half* __restrict__ r, half* __restrict__ y, int C, int F, unsigned* arrived) {
  extern __shared__ __align__(128) unsigned char sm[];
  __shared__ uint64_t bar; __shared__ float red[8];
  half* ws = reinterpret_cast<half*>(sm);
  if (threadIdx.x == 0) { bar_init(&bar); tma_rows(ws, w1 + (size_t)blockIdx.x * 8 * C, 8 * C * 2, &bar); }
  __syncthreads(); bar_wait(&bar, 0);
  float acc = row_reduce(smem_dot(ws, x, C, 8, false), red, 32);
  if (threadIdx.x % 32 == 0) store(h, nullptr, blockIdx.x * 8 + threadIdx.x / 32, acc, 0);
  __syncthreads();                                      // W1's rows used: the buffer takes W2's
  if (threadIdx.x == 0) {
    asm volatile("fence.proxy.async.shared::cta;");     // the generic reads of ws before the async write
    tma_rows(ws, w2 + (size_t)blockIdx.x * 2 * F, 2 * F * 2, &bar);
    __threadfence();                                    // this block's h before its arrival (as cooperative groups' grid sync)
    grid_arrive_wait(arrived);
  }
  __syncthreads(); bar_wait(&bar, 1);
  acc = row_reduce(smem_dot(ws, h, F, 2, true), red, 128);
  if (threadIdx.x % 128 == 0) store(y, r, blockIdx.x * 2 + threadIdx.x / 128, acc, 1); }

// 4. the GEMV launched early (PDL), as tinygpt2's decode linears are: W's loads written before the wait, x read after
// it. Unlike tinygpt2's (32 registers, kernels/_pdl.py), ptxas gives this one 40, so 6 blocks of 256 fit an SM and an
// 800-block grid runs in two waves on an H200: its row in the MLP table is not a measure of PDL.
// PDL: blocks until the kernels before this one have finished (a no-op in a kernel launched the ordinary way)
__device__ __forceinline__ void grid_dep_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
// a row's dot product: KO vectors of the thread (TPR threads a row), W from registers; x is written by another
// block or the kernel before, so it is never a __restrict__ argument: plain ld.global, which stays after the waits
template <int TPR>
__device__ __forceinline__ float row_dot(const uint4* wr, const half* x, int lane, int nv) {
  float acc = 0.f;
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) acc += dot8(wr[i], reinterpret_cast<const uint4*>(x)[v]); }
  return acc; }
template <int R, int MODE>
__global__ void __launch_bounds__(256) gemv_pdl(const half* __restrict__ w, const half* x, const half* __restrict__ r,
                                                half* __restrict__ y, int K) {
  __shared__ float red[8];
  const int TPR = 256 / R, row = blockIdx.x * R + threadIdx.x / TPR, lane = threadIdx.x % TPR, nv = K / 8;
  uint4 wr[KO];
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) wr[i] = reinterpret_cast<const uint4*>(w + (size_t)row * K)[v]; }
  grid_dep_wait();
  float acc = row_reduce(row_dot<TPR>(wr, x, lane, nv), red, TPR);
  if (lane == 0) store(y, r, row, acc, MODE); }

// the MLP in one persistent launch, W in registers. 800 blocks of 128 threads, at most 64 registers a thread, so
// that 8 blocks fit an SM and all 800 are resident at once (the caller checks): half gemv_pdl's threads, each
// holding twice the weights. c_fc: 8 rows a block, two a warp, one after the other (KO vectors a lane); c_proj:
// 2 rows a block, 64 threads a row, KO2 = 13 vectors a thread. With PRE, the block loads its c_proj rows into
// registers *before* it waits at the grid-wide barrier, so that HBM streams W2 while the last blocks finish
// c_fc; without, after it. x and h are copied into shared memory by cp.async first: with W's slice filling the
// registers, loads of them into registers would go one at a time.
#define KO2 13
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {       // through L2 only: coherent
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem(dst)), "l"(src) : "memory"); }
__device__ __forceinline__ void copy_to_smem(uint4* dst, const half* src, int nv) {      // the whole block
  for (int v = threadIdx.x; v < nv; v += blockDim.x) cp_async16(dst + v, reinterpret_cast<const uint4*>(src) + v);
  asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void smem_ready() { asm volatile("cp.async.wait_group 0;" ::: "memory"); __syncthreads(); }
template <bool PRE>
__global__ void __launch_bounds__(128, 8) mlp_persistent_reg(const half* __restrict__ w1, const half* x, half* h,
    const half* __restrict__ w2, const half* __restrict__ r, half* __restrict__ y, int C, int F, unsigned* arrived) {
  __shared__ uint4 xs[1600 / 8], hs[6400 / 8];          // gpt2-xl's C and F (the caller checks)
  __shared__ float red[4];
  copy_to_smem(xs, x, C / 8);
  #pragma unroll 1
  for (int k = 0; k < 2; ++k) {
    const int lane = threadIdx.x % 32, row = blockIdx.x * 8 + (threadIdx.x / 32) * 2 + k, nv = C / 8;
    uint4 wr[KO];
    #pragma unroll
    for (int i = 0; i < KO; ++i) { int v = i * 32 + lane; if (v < nv) wr[i] = reinterpret_cast<const uint4*>(w1 + (size_t)row * C)[v]; }
    if (k == 0) smem_ready();
    float acc = 0.f;
    #pragma unroll
    for (int i = 0; i < KO; ++i) { int v = i * 32 + lane; if (v < nv) acc += dot8(wr[i], xs[v]); }
    acc = row_reduce(acc, red, 32);
    if (lane == 0) h[row] = __float2half(gelu(acc));
  }
  const int lane = threadIdx.x % 64, row = blockIdx.x * 2 + threadIdx.x / 64, nv = F / 8;
  const uint4* wrow = reinterpret_cast<const uint4*>(w2 + (size_t)row * F);
  uint4 wr[KO2];
  auto load_w2 = [&] {
    #pragma unroll
    for (int i = 0; i < KO2; ++i) { int v = i * 64 + lane; if (v < nv) wr[i] = wrow[v]; } };
  if (PRE) load_w2();
  __syncthreads();                                      // every warp's h stored
  if (threadIdx.x == 0) {
    __threadfence();                                    // ... and visible before this block's arrival
    grid_arrive_wait(arrived);
  }
  __syncthreads();
  if (!PRE) load_w2();
  copy_to_smem(hs, h, nv);
  smem_ready();
  float acc = 0.f;
  #pragma unroll
  for (int i = 0; i < KO2; ++i) { int v = i * 64 + lane; if (v < nv) acc += dot8(wr[i], hs[v]); }
  acc = row_reduce(acc, red, 64);
  if (lane == 0) store(y, r, row, acc, 1); }

// 5. the MLP streamed: one block an SM, each owning contiguous rows of c_fc and then of c_proj, which thread 0 copies
// by TMA through a ring of STAGES chunks of shared memory (CHUNK bytes: 16 rows of c_fc or 4 of c_proj). The ring
// runs ahead of the arithmetic across the two matrices, so the block's first c_proj rows are already streaming in
// while it waits at the grid-wide barrier for the other blocks' h -- HBM never waits for the barrier, only the SMs.
#define CHUNK 51200
#define STAGES 4
#define NT 1024
// MATH false: no dot products (the chunks are waited for, reduced as zeros and stored). flags, to take the kernel
// apart: BARRIER, the grid-wide barrier (without it c_proj reads whatever h holds: wrong, for timing); RPRE, the
// residuals of the block's c_proj rows read into shared memory at the start instead of by each chunk's store
// (a global load between the chunk's two block barriers, in SASS); RING_ONLY, none of the chunk's steps but the
// wait, one block barrier and the refill -- the bare ring, over the two matrices as this kernel splits them;
// NOCOPY, no copies of x and h into shared memory (the dot products read whatever it holds: wrong, for timing).
#define BARRIER 1
#define RPRE 2
#define RING_ONLY 4
#define NOCOPY 8
// tl (null: none): a timeline, TLS slots a block, written by thread 0 -- %globaltimer (ns) at the start and the end
// (slots 0, 1), clock64 at the start, the end and past the grid barrier (2, 3, 4), and for each of the first 8
// chunks clock64 once it has arrived and once the block is done with it (5 + 2c, 6 + 2c)
#define TLS 24
__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
// a chunk's row . vec: R rows of K halves a chunk, TPR = NTH / R threads a row, thread (rr, lane) its lane's share
template <int NTH, int K, int R>
__device__ __forceinline__ float chunk_dot(const uint4* chunk, const uint4* vec, int rr, int lane) {
  constexpr int TPR = NTH / R, NV = K / 8;
  float acc = 0.f;
  #pragma unroll
  for (int i = 0; i < (NV + TPR - 1) / TPR; ++i) { const int v = lane + i * TPR; if (v < NV) acc += dot8(chunk[rr * NV + v], vec[v]); }
  return acc; }
// one chunk's step, its shapes compile-time constants (the kernel's steps were issue-bound: 1.6 us a chunk at 1024
// threads, every warp dividing by run-time row counts and looping over a run-time trip count, 2026-12-04): R rows of
// K, TPR threads a row, the chunk's first row `first` of the block's n, written to out[base + row]
template <bool MATH, int NTH, int K, bool FC>
__device__ __forceinline__ void stream_step(const uint4* chunk, const uint4* vec, int first, int n, int base, half* out,
                                            const half* r, const half* rs, float* red, int flags) {
  constexpr int R = CHUNK / (2 * K), TPR = NTH / R;
  const int rr = threadIdx.x / TPR, lane = threadIdx.x % TPR, row = first + rr;
  float acc = MATH && row < n ? chunk_dot<NTH, K, R>(chunk, vec, rr, lane) : 0.f;
  acc = row_reduce(acc, red, TPR);
  if (lane == 0 && row < n) {
    if (FC) out[base + row] = __float2half(gelu(acc));
    else if (flags & RPRE) out[base + row] = __hadd(rs[row], __float2half(acc));
    else store(out, r, base + row, acc, 1);
  }
}
template <bool MATH, int NTH, int C, int F>
__global__ void __launch_bounds__(NTH, 1) mlp_stream(const half* __restrict__ w1, const half* x, half* h,
    const half* __restrict__ w2, const half* __restrict__ r, half* __restrict__ y, unsigned* arrived, int flags,
    unsigned long long* tl) {
  extern __shared__ __align__(128) unsigned char sm[];
  uint4* ring = reinterpret_cast<uint4*>(sm);                           // [STAGES][CHUNK / 16]
  uint4* xs = ring + STAGES * (CHUNK / 16);                             // x, [C / 8]
  uint4* hs = xs + C / 8;                                               // h, [F / 8], once every block has written it
  __shared__ uint64_t full[STAGES]; __shared__ float red[NTH / 32]; __shared__ half rs[32];
  constexpr int R1 = CHUNK / (2 * C), R2 = CHUNK / (2 * F);             // rows a chunk
  const int G = gridDim.x, b = blockIdx.x;
  const int r1 = (long)b * F / G, n1 = (long)(b + 1) * F / G - r1;     // this block's c_fc rows [r1, r1 + n1)
  const int r2 = (long)b * C / G, n2 = (long)(b + 1) * C / G - r2;     // and c_proj rows
  const int nc1 = (n1 + R1 - 1) / R1, nc = nc1 + (n2 + R2 - 1) / R2;    // chunks: c_fc's, then c_proj's
  unsigned long long* tb = tl && threadIdx.x == 0 ? tl + (size_t)b * TLS : nullptr;
  if (tb) { tb[0] = gtime(); tb[2] = clock64(); }
  auto issue = [&](int c) {                                             // thread 0: chunk c into its stage
    uint4* dst = ring + (c % STAGES) * (CHUNK / 16);
    if (c < nc1) tma_rows(dst, w1 + (size_t)(r1 + c * R1) * C, min(R1, n1 - c * R1) * C * 2, &full[c % STAGES]);
    else tma_rows(dst, w2 + (size_t)(r2 + (c - nc1) * R2) * F, min(R2, n2 - (c - nc1) * R2) * F * 2, &full[c % STAGES]); };
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) bar_init(&full[s]);
    for (int c = 0; c < min(STAGES, nc); ++c) issue(c);
  }
  const bool steps = !(flags & RING_ONLY);
  const bool copies = steps && !(flags & NOCOPY);
  if (copies) for (int v = threadIdx.x; v < C / 8; v += NTH) xs[v] = __ldcg(reinterpret_cast<const uint4*>(x) + v);
  if ((flags & RPRE) && threadIdx.x < n2) rs[threadIdx.x] = r[r2 + threadIdx.x];    // n2 <= 32 (the caller checks)
  __syncthreads();
  for (int c = 0; c < nc; ++c) {
    const uint4* chunk = ring + (c % STAGES) * (CHUNK / 16);
    if (c == nc1 && steps) {                                            // c_fc done here: wait for everyone's h
      if (threadIdx.x == 0 && (flags & BARRIER)) { __threadfence(); grid_arrive_wait(arrived); }
      __syncthreads();
      if (copies) for (int v = threadIdx.x; v < F / 8; v += NTH) hs[v] = __ldcg(reinterpret_cast<const uint4*>(h) + v);
      __syncthreads();
      if (tb) tb[4] = clock64();
    }
    bar_wait(&full[c % STAGES], (c / STAGES) & 1);
    if (tb && c < 8) tb[5 + 2 * c] = clock64();
    if (steps) {
      if (c < nc1) stream_step<MATH, NTH, C, true>(chunk, xs, c * R1, n1, r1, h, r, rs, red, flags);
      else stream_step<MATH, NTH, F, false>(chunk, hs, (c - nc1) * R2, n2, r2, y, r, rs, red, flags);
    }
    __syncthreads();                                                    // the stage is read: refill it
    if (tb && c < 8) tb[6 + 2 * c] = clock64();
    if (threadIdx.x == 0 && c + STAGES < nc) { asm volatile("fence.proxy.async.shared::cta;"); issue(c + STAGES); }
  }
  if (tb) { tb[3] = clock64(); tb[1] = gtime(); }
}

// the split MLP's two steps and its sum (mlp_splitk, mlp_layers): R rows of K halves a chunk.
// fc_step: h[row] = gelu(W1[row] . x) for the chunk's rows (TPR threads a row), rounded to fp16 as a tensor would be
// (GELU false: W1[row] . x, as scripts/bench_decode_layers.py's qkv rows)
template <int NTH, int K, int R, bool GELU = true>
__device__ __forceinline__ void fc_step(const uint4* chunk, const uint4* xv, int first, int n, float* hl, float* red) {
  constexpr int TPR = NTH / R;
  const int rr = threadIdx.x / TPR, lane = threadIdx.x % TPR, row = first + rr;
  float acc = row < n ? chunk_dot<NTH, K, R>(chunk, xv, rr, lane) : 0.f;
  acc = row_reduce(acc, red, TPR);
  if (lane == 0 && row < n) hl[row] = __half2float(__float2half(GELU ? gelu(acc) : acc)); }
// proj_step: a += h[k] W2T[k, 8 t : 8 t + 8] over the chunk's `rows` rows k = first, ...: thread t owns 8 outputs
template <int K>
__device__ __forceinline__ void proj_step(const uint4* chunk, int first, int rows, const float* hl, float* a) {
  constexpr int NV = K / 8;
  if (threadIdx.x >= NV) return;
  #pragma unroll 4
  for (int k = 0; k < rows; ++k) {
    const uint4 w = chunk[k * NV + threadIdx.x]; const half2* wh = reinterpret_cast<const half2*>(&w); const float hk = hl[first + k];
    #pragma unroll
    for (int e = 0; e < 4; ++e) { const float2 f = __half22float2(wh[e]); a[2 * e] += hk * f.x; a[2 * e + 1] += hk * f.y; }
  } }
// p[0 : 8] += a, by two vector float atomics (red: no value back)
__device__ __forceinline__ void red_add8(float* p, const float* a) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(p), "f"(a[0]), "f"(a[1]), "f"(a[2]), "f"(a[3]) : "memory");
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(p + 4), "f"(a[4]), "f"(a[5]), "f"(a[6]), "f"(a[7]) : "memory"); }
// add_partial: acc[8 t : 8 t + 8] += a, then a = 0
template <int K>
__device__ __forceinline__ void add_partial(float* acc, float* a) {
  if (threadIdx.x >= K / 8) return;
  red_add8(acc + 8 * threadIdx.x, a);
  for (int e = 0; e < 8; ++e) a[e] = 0.f; }

// 7. the MLP with no barrier inside it (split-K c_proj): block b computes h for its c_fc rows [r1, r1 + n1) and keeps
// it in shared memory, then multiplies it by the same rows of c_proj's transpose W2T [F, C] -- HF Conv1D's own layout,
// [in, out], in which the block's share is contiguous -- into a partial y of all C outputs, which it adds into a float
// accumulator (red.global.add.v4.f32). Both matrices' rows flow through one TMA ring, as in mlp_stream; x comes in by
// TMA first. The last block to finish (a counter) writes y = r + the sum and zeroes the accumulator for the next call.
// Each thread owns 8 outputs (C / 8 of the threads, at most NTH) and adds every c_proj row of a chunk into them:
// no reduction across threads, no grid barrier between the two matrices.
template <int NTH, int C, int F>
__global__ void __launch_bounds__(NTH, 1) mlp_splitk(const half* __restrict__ w1, const half* x, const half* __restrict__ w2t,
    const half* __restrict__ r, half* __restrict__ y, float* yacc, unsigned* done) {
  static_assert(C / 8 <= NTH, "a thread's 8 outputs");
  extern __shared__ __align__(128) unsigned char sm[];
  uint4* ring = reinterpret_cast<uint4*>(sm);                           // [STAGES][CHUNK / 16]
  uint4* xs = ring + STAGES * (CHUNK / 16);                             // x, [C / 8]
  __shared__ uint64_t full[STAGES + 1]; __shared__ float red[NTH / 32]; __shared__ float hl[64]; __shared__ bool last;
  constexpr int R = CHUNK / (2 * C);                                    // rows a chunk, of either matrix
  const int G = gridDim.x, b = blockIdx.x;
  const int r1 = (long)b * F / G, n1 = (long)(b + 1) * F / G - r1;     // this block's rows of W1 and of W2T
  const int nc1 = (n1 + R - 1) / R, nc = 2 * nc1;                       // chunks: W1's, then W2T's
  auto issue = [&](int c) {                                             // thread 0: chunk c into its stage
    const int cc = c < nc1 ? c : c - nc1;
    tma_rows(ring + (c % STAGES) * (CHUNK / 16), (c < nc1 ? w1 : w2t) + (size_t)(r1 + cc * R) * C, min(R, n1 - cc * R) * C * 2,
             &full[c % STAGES]); };
  if (threadIdx.x == 0) {
    for (int s = 0; s <= STAGES; ++s) bar_init(&full[s]);
    tma_rows(xs, x, C * 2, &full[STAGES]);                              // x first: it would queue behind the weights
    for (int c = 0; c < min(STAGES, nc); ++c) issue(c);
  }
  __syncthreads();
  bar_wait(&full[STAGES], 0);
  float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};               // y[8 t : 8 t + 8], this block's share
  for (int c = 0; c < nc; ++c) {
    const uint4* chunk = ring + (c % STAGES) * (CHUNK / 16);
    bar_wait(&full[c % STAGES], (c / STAGES) & 1);
    if (c < nc1) fc_step<NTH, C, R>(chunk, xs, c * R, n1, hl, red);
    else proj_step<C>(chunk, (c - nc1) * R, min(R, n1 - (c - nc1) * R), hl, a);
    __syncthreads();                                                    // the stage is read (and hl written): refill it
    if (threadIdx.x == 0 && c + STAGES < nc) { asm volatile("fence.proxy.async.shared::cta;"); issue(c + STAGES); }
  }
  add_partial<C>(yacc, a);
  __threadfence();                                                      // this block's adds before its count
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(done, 1u) % G == G - 1;       // the counter only grows: per call, mod G
  __syncthreads();
  if (last) {                                                           // every block's adds are in: y = r + sum, reset
    __threadfence();
    for (int i = threadIdx.x; i < C; i += NTH) { y[i] = __hadd(r[i], __float2half(__ldcg(yacc + i))); yacc[i] = 0.f; }
  }
}

// LL: a tagged 8-byte value stored, and awaited until its tag is `tag` (spinning for seconds traps instead)
__device__ __forceinline__ void ll_store(unsigned long long* p, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" :: "l"(p), "l"(v) : "memory"); }
__device__ __forceinline__ unsigned long long ll_wait(const unsigned long long* p, unsigned long long tag) {
  unsigned long long v; long spins = 0;
  do { asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
       if (++spins > (1L << 26)) __trap(); } while ((v & 0xffffffff00000000ull) != tag);
  return v; }

// 8. every layer's MLP in one launch, the ring running on across layers: x <- x + W2 gelu(W1 x), L times (each
// layer's input the last one's output, as in the model). Per layer, as mlp_splitk: block b's rows of W1 and of W2T,
// its partial y added into yacc[l % 3]; then a grid-wide barrier (SYNC false: none, for timing -- wrong results), after
// which every block adds the whole sum into its own copy of x in shared memory. The next layer's W1 chunks are already
// streaming in while the blocks wait there. Three accumulators: block b zeroes its share of yacc[(l + 2) % 3] (read
// after barrier l - 1 by every block, which all did before barrier l; added into again only after barrier l + 1).
// The ring: S stages of CB bytes (less in flight queues less ahead of the barrier's own round trips); PF > 0: each
// chunk issued also prefetches (cp.async.bulk.prefetch.L2) the chunk PF further on into L2, so that HBM keeps streaming
// while a full ring waits at the barrier. FENCE_ALL: every thread fences its adds before the barrier; false: thread 0
// alone, after the block's barrier (as cooperative groups' grid sync). ADDS false: no adds into yacc (wrong results:
// what the barrier costs without the float atomics before it). ACQREL: thread 0's fence is fence.acq_rel.gpu (with the
// relaxed atomic after it, a release pattern) instead of __threadfence's fence.sc.gpu.
// ST: the thread that fences and arrives (not FENCE_ALL): 0, the one that also issues the ring's copies, or another
// (does the fence wait for the copies its own thread has in flight?). Thread 0 stamps the timeline either way.
// LL (with SYNC): no float atomics, no fence, no counter -- the sum goes round as tagged 8-byte values (as NCCL's LL
// protocol: a value and its layer's tag in one single-copy-atomic store, so a reader that sees the tag sees the
// value): each block stores its 8 partials a thread, tagged, into ll1 [G][C]; block b sums its slice of the outputs
// over the G producers (16 threads an output, spinning on each value until its tag is this layer's) and stores the
// sums, tagged, into ll2 [C]; every block reads all of ll2 the same way into x. The tags only grow (a per-block
// count kept after ll2 carries them across calls), so nothing is zeroed and no buffer is reused too early: a block
// writes layer l + 1's values only after reading every sum of layer l, which needed every slice read.
// KF > 0 (with ST != 0): at most KF chunks in flight, out of S stages. The fence before a barrier waited ~4 us under the
// stream's load, longer the more of the ring's bytes were in flight (4.2-4.4 us with 205 KB a block, 2.8 with 102 KB):
// queueing, by Little's law, behind the 27 MB the 132 rings keep requested? So the ring's depth (what the blocks can
// run ahead while they wait) is split from its bytes in flight (what the barrier's own round trips queue behind):
// thread 0 keeps KF chunks in flight whenever a stage is free -- while it waits for a chunk, and through the barrier,
// which thread ST fences, arrives at and waits for alone, telling thread 0 by a flag in shared memory. Measured
// (2026-12-04): the fence as long with 2 chunks in flight as with 4; the hypothesis does not hold.
// CL > 1 (launched in clusters of CL blocks): the block's partial sums first reduced inside its cluster through
// distributed shared memory (each block writes its partial into its own shared memory, a cluster barrier, then block
// rank r of the cluster adds the CL partials of outputs [r C / CL, (r + 1) C / CL) read from the others' shared
// memory, and only those into yacc: CL times fewer float atomics). Does an exchange between SMs that does not go
// through L2 keep its latency while the same SMs stream (docs/persistent_decode.md, its last section)?
template <int NTH, int C, int F, bool SYNC, int S, int CB, int PF, bool FENCE_ALL, bool ADDS = true, bool ACQREL = false,
          bool LL = false, int ST = 0, int KF = 0, int CL = 1>
__global__ void __launch_bounds__(NTH, 1) mlp_layers(const long long* w1s, const long long* w2ts, half* xio, float* yacc,
                                                      unsigned* arrived, int L, unsigned long long* tl, unsigned long long* ll) {
  static_assert(C / 8 <= NTH, "a thread's 8 outputs");
  __shared__ unsigned base;                                             // LL: the tag before this call's first layer
  if (LL && threadIdx.x == 0) base = (unsigned)ll[(size_t)gridDim.x * C + C + blockIdx.x];
  extern __shared__ __align__(128) unsigned char sm[];
  uint4* ring = reinterpret_cast<uint4*>(sm);                           // [S][CB / 16]
  half* xs = reinterpret_cast<half*>(ring + S * (CB / 16));     // x, [C]: this block's copy
  float* csum = reinterpret_cast<float*>(xs + C);                       // CL: this block's partial y, [C]
  static_assert(CL == 1 || (C % (8 * CL) == 0 && !LL && KF == 0), "CL: whole vectors of 8 a block");
  __shared__ uint64_t full[S + 1]; __shared__ float red[NTH / 32]; __shared__ float hl[64];
  constexpr int R = CB / (2 * C);                                       // rows a chunk, of either matrix
  const int G = gridDim.x, b = blockIdx.x;
  const int r1 = (long)b * F / G, n1 = (long)(b + 1) * F / G - r1;
  const int nc1 = (n1 + R - 1) / R, per = 2 * nc1, nc = L * per;        // chunks a layer: W1's, then W2T's
  auto src = [&](int g, unsigned* bytes) {                              // chunk g of the block's stream: its rows
    const int l = g / per, c = g % per, cc = c < nc1 ? c : c - nc1;
    *bytes = min(R, n1 - cc * R) * C * 2;
    return reinterpret_cast<const half*>(c < nc1 ? w1s[l] : w2ts[l]) + (size_t)(r1 + cc * R) * C; };
  auto issue = [&](int g) {                                             // thread 0: chunk g into its stage
    unsigned bytes; const half* w = src(g, &bytes); tma_rows(ring + (g % S) * (CB / 16), w, bytes, &full[g % S]); };
  auto prefetch = [&](int g) {                                          // thread 0: chunk g into L2
    unsigned bytes; const half* w = src(g, &bytes);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(w), "r"(bytes) : "memory"); };
  static_assert(KF == 0 || (KF <= S && ST != 0 && !LL && !FENCE_ALL), "a capped ring: thread 0 keeps it going alone");
  int next = 0, landed = 0;                                             // KF: thread 0's chunks issued, and seen landed
  auto pump = [&](int cons) {                                           // KF: chunks < cons are consumed, their stages free
    while (landed < next && bar_test(&full[landed % S], (landed / S) & 1)) ++landed;
    bool fenced = false;
    while (next < nc && next < cons + S && next - landed < KF) {
      if (!fenced) { asm volatile("fence.proxy.async.shared::cta;"); fenced = true; }
      issue(next++); } };
  __shared__ volatile int passed;                                       // KF: thread ST has passed the grid barrier
  if (threadIdx.x == 0) {
    passed = 0;
    for (int s = 0; s <= S; ++s) bar_init(&full[s]);
    tma_rows(xs, xio, C * 2, &full[S]);
    for (next = 0; next < min(KF ? KF : S, nc); ++next) issue(next);
    if (PF) for (int g = S; g < min(S + PF, nc); ++g) prefetch(g);
  }
  __syncthreads();
  bar_wait(&full[S], 0);
  float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int g = 0; g < nc; ++g) {
    const int l = g / per, c = g % per;
    const uint4* chunk = ring + (g % S) * (CB / 16);
    // KF: warp 0 polls (mbarrier.test_wait) while its lane 0 keeps the ring going. Not lane 0 alone: its warp-mates'
    // try_wait may suspend the warp, stalling lane 0's loop too (lane 0 alone: ~0.8 us more a chunk, 2026-12-04)
    if (KF && threadIdx.x < 32) while (!bar_test(&full[g % S], (g / S) & 1)) { if (threadIdx.x == 0) pump(g); }
    else bar_wait(&full[g % S], (g / S) & 1);
    if (c < nc1) fc_step<NTH, C, R>(chunk, reinterpret_cast<const uint4*>(xs), c * R, n1, hl, red);
    else proj_step<C>(chunk, (c - nc1) * R, min(R, n1 - (c - nc1) * R), hl, a);
    __syncthreads();                                                    // the stage is read: refill it
    if (KF && threadIdx.x == 0) pump(g + 1);
    else if (threadIdx.x == 0 && g + S < nc) {
      asm volatile("fence.proxy.async.shared::cta;"); issue(g + S);
      if (PF && g + S + PF < nc) prefetch(g + S + PF);
    }
    if (c == per - 1) {                                                 // the layer's last chunk: y, then the next x
      // tl (null: none): thread 0's clock64 at the layer's end, once its adds are fenced, past the barrier, and once x
      // is updated; %globaltimer past the barrier -- 5 slots a layer and block
      // (KF: thread ST's clock, the thread that fences and waits)
      // (slot 5, CL: once the cluster's exchange and the block's adds are issued)
      unsigned long long* tb = tl && threadIdx.x == (KF ? ST : 0) ? tl + ((size_t)l * G + b) * 6 : nullptr;
      if (tb) tb[0] = clock64();
      if (SYNC && LL) {
        unsigned long long* ll1 = ll;                                  // [G][C]: producer p's partial of output j
        unsigned long long* ll2 = ll + (size_t)G * C;                  // [C]: the sums
        const unsigned long long tag = (unsigned long long)(base + l + 1) << 32;
        if (threadIdx.x < C / 8)
          for (int e = 0; e < 8; ++e) { ll_store(ll1 + (size_t)b * C + 8 * threadIdx.x + e, tag | __float_as_uint(a[e])); a[e] = 0.f; }
        if (tb) tb[1] = clock64();
        const int s0 = (long)b * C / G, ns = (long)(b + 1) * C / G - s0, jj = threadIdx.x / 16, lane = threadIdx.x % 16;
        float sum = 0.f;
        if (jj < ns) for (int p = lane; p < G; p += 16) sum += __uint_as_float((unsigned)ll_wait(ll1 + (size_t)p * C + s0 + jj, tag));
        for (int o = 8; o; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
        if (lane == 0 && jj < ns) ll_store(ll2 + s0 + jj, tag | __float_as_uint(sum));
        if (tb) { tb[2] = clock64(); tb[4] = gtime(); }
        for (int i = threadIdx.x; i < C; i += NTH) xs[i] = __hadd(xs[i], __float2half(__uint_as_float((unsigned)ll_wait(ll2 + i, tag))));
        __syncthreads();                                                // x complete before the next c_fc step
        if (tb) tb[3] = clock64();
        continue;
      }
      float* acc = yacc + (l % 3) * C;
      if (CL > 1) {                                                     // the cluster's sum, then its adds
        namespace cg = cooperative_groups;
        cg::cluster_group cluster = cg::this_cluster();
        if (threadIdx.x < C / 8)
          for (int e = 0; e < 8; ++e) { csum[8 * threadIdx.x + e] = a[e]; a[e] = 0.f; }
        cluster.sync();                                                 // every partial of the cluster written
        const int r = cluster.block_rank(), v = threadIdx.x;           // vector v of this block's C / CL outputs
        if (v < C / (8 * CL)) {
          const int o = r * (C / CL) + 8 * v;
          float sum[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
          for (int q = 0; q < CL; ++q) {                                // the cluster's CL partials, 2 x 16 bytes each
            const float4* p = reinterpret_cast<const float4*>(cluster.map_shared_rank(csum, q) + o);
            const float4 u = p[0], w = p[1];
            sum[0] += u.x; sum[1] += u.y; sum[2] += u.z; sum[3] += u.w; sum[4] += w.x; sum[5] += w.y; sum[6] += w.z; sum[7] += w.w; }
          red_add8(acc + o, sum);
        }
        // csum is written again only at the next layer's end, after the grid barrier, which no block of the
        // cluster passes before its reads here are done
        if (tb) tb[5] = clock64();
      } else if (ADDS) add_partial<C>(acc, a);
      else for (int e = 0; e < 8; ++e) a[e] = 0.f;
      if (SYNC) {
        if (FENCE_ALL) __threadfence();
        __syncthreads();
        if (threadIdx.x == ST && !FENCE_ALL) { if (ACQREL) asm volatile("fence.acq_rel.gpu;" ::: "memory"); else __threadfence(); }
        if (tb) tb[1] = clock64();
        if (threadIdx.x == ST) { grid_arrive_wait(arrived); if (KF) passed = 1; }
        if (KF && threadIdx.x < 32) while (!passed) { if (threadIdx.x == 0) pump(g + 1); }   // the ring kept going
        __syncthreads();
        if (KF && threadIdx.x == ST) passed = 0;                       // read again only past later block barriers
        if (tb) { tb[2] = clock64(); tb[4] = gtime(); }
      }
      for (int i = threadIdx.x; i < C; i += NTH) xs[i] = __hadd(xs[i], __float2half(__ldcg(acc + i)));
      float* old = yacc + ((l + 2) % 3) * C;
      for (int i = (long)b * C / G + threadIdx.x; i < (long)(b + 1) * C / G; i += NTH) old[i] = 0.f;
      __syncthreads();                                                  // x complete before the next c_fc step
      if (tb) tb[3] = clock64();
    }
  }
  if (b == 0) for (int i = threadIdx.x; i < C; i += NTH) xio[i] = xs[i];
  if (LL && threadIdx.x == 0) ll[(size_t)G * C + C + b] = base + L;    // this call's tags, used
  if (CL > 1) cooperative_groups::this_cluster().sync();               // no block leaves while others may read it
}

// the same ring filled by cp.async instead of TMA: each thread copies, 16 bytes at a time, exactly the vectors of a
// chunk it will itself multiply, so a stage needs no block-wide barrier before it is read or refilled -- only the
// thread's own cp.async.wait_group (STAGES - 1 newer groups may still be in flight)
__device__ __forceinline__ void stream_chunk(uint4* stage, const half* w, int rows, int K, bool copy,
                                             const uint4* vec, float* acc) {     // copy, or multiply: the same vectors
  const int R = CHUNK / (2 * K), TPR = NT / R, rr = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  if (rr >= rows) return;
  const uint4* src = reinterpret_cast<const uint4*>(w + (size_t)rr * K);
  for (int v = lane; v < K / 8; v += TPR) {
    if (copy) cp_async16(stage + rr * (K / 8) + v, src + v); else *acc += dot8(stage[rr * (K / 8) + v], vec[v]); } }
__global__ void __launch_bounds__(NT, 1) mlp_stream_cp(const half* __restrict__ w1, const half* x, half* h,
    const half* __restrict__ w2, const half* __restrict__ r, half* __restrict__ y, int C, int F, unsigned* arrived) {
  extern __shared__ __align__(128) unsigned char sm[];
  uint4* ring = reinterpret_cast<uint4*>(sm); uint4* xs = ring + STAGES * (CHUNK / 16); uint4* hs = xs + C / 8;
  __shared__ float red[2][NT / 32];                                     // by chunk parity: no barrier to reuse it
  const int G = gridDim.x, b = blockIdx.x, R1 = CHUNK / (2 * C), R2 = CHUNK / (2 * F);
  const int r1 = (long)b * F / G, n1 = (long)(b + 1) * F / G - r1, r2 = (long)b * C / G, n2 = (long)(b + 1) * C / G - r2;
  const int nc1 = (n1 + R1 - 1) / R1, nc = nc1 + (n2 + R2 - 1) / R2;
  auto chunk = [&](int c, bool copy, float* acc) {                      // chunk c: copy it in, or multiply it
    uint4* stage = ring + (c % STAGES) * (CHUNK / 16);
    if (c < nc1) stream_chunk(stage, w1 + (size_t)(r1 + c * R1) * C, min(R1, n1 - c * R1), C, copy, xs, acc);
    else if (c < nc) stream_chunk(stage, w2 + (size_t)(r2 + (c - nc1) * R2) * F, min(R2, n2 - (c - nc1) * R2), F, copy, hs, acc); };
  for (int c = 0; c < STAGES - 1; ++c) { chunk(c, true, nullptr); asm volatile("cp.async.commit_group;" ::: "memory"); }
  for (int v = threadIdx.x; v < C / 8; v += NT) xs[v] = __ldcg(reinterpret_cast<const uint4*>(x) + v);
  __syncthreads();
  for (int c = 0; c < nc; ++c) {
    chunk(c + STAGES - 1, true, nullptr);                               // into the stage chunk c - 1 left
    asm volatile("cp.async.commit_group;" ::: "memory");
    if (c == nc1) {                                                     // c_fc done here: wait for everyone's h
      __syncthreads();
      if (threadIdx.x == 0) { __threadfence(); grid_arrive_wait(arrived); }
      __syncthreads();
      for (int v = threadIdx.x; v < F / 8; v += NT) hs[v] = __ldcg(reinterpret_cast<const uint4*>(h) + v);
      __syncthreads();
    }
    asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 1) : "memory");
    const bool fc = c < nc1;
    const int R = fc ? R1 : R2, TPR = NT / R, row = (fc ? c : c - nc1) * R + threadIdx.x / TPR;
    float acc = 0.f;
    chunk(c, false, &acc);
    acc = row_reduce(acc, red[c & 1], TPR);
    if (threadIdx.x % TPR == 0 && row < (fc ? n1 : n2)) {
      if (fc) h[r1 + row] = __float2half(gelu(acc)); else store(y, r, r2 + row, acc, 1);
    }
  }
  asm volatile("cp.async.wait_group 0;" ::: "memory");
}

// 6. the ring alone: how fast one block (of 1024 threads) an SM streams bytes through S chunks of CB bytes of shared
// memory, filled by TMA. Each block reads its contiguous share of the buffer. SYNC false: thread 0 alone waits for
// a chunk and refills its stage (the copy engine's rate); true: every thread waits, reads a word of it, and the block
// synchronises before the refill (the step mlp_stream takes a chunk, without its arithmetic).
template <int S, int CB, bool SYNC>
__global__ void __launch_bounds__(1024, 1) ring_read(const char* __restrict__ p, long n, float* out) {
  extern __shared__ __align__(128) unsigned char sm[];
  __shared__ uint64_t full[S];
  const long per = (n / gridDim.x) & ~15L, begin = blockIdx.x * per;
  const int nc = (int)((per + CB - 1) / CB);
  auto issue = [&](int c) { tma_rows(sm + (c % S) * CB, p + begin + (long)c * CB, (unsigned)min((long)CB, per - (long)c * CB), &full[c % S]); };
  if (threadIdx.x == 0) { for (int s = 0; s < S; ++s) bar_init(&full[s]); for (int c = 0; c < min(S, nc); ++c) issue(c); }
  __syncthreads();
  float acc = 0.f;
  for (int c = 0; c < nc; ++c) {
    if (SYNC || threadIdx.x == 0) bar_wait(&full[c % S], (c / S) & 1);
    if (SYNC) { acc += reinterpret_cast<const float*>(sm + (c % S) * CB)[threadIdx.x]; __syncthreads(); }
    if (threadIdx.x == 0 && c + S < nc) { asm volatile("fence.proxy.async.shared::cta;"); issue(c + S); }
  }
  if (acc == 1.2345f) out[0] = acc; }
'''
LAUNCHERS = r'''
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#define STREAM at::cuda::getCurrentCUDAStream()
#define IN(t) reinterpret_cast<const half*>(t.data_ptr())
#define OUT(t) reinterpret_cast<half*>(t.data_ptr())
template <typename F> void allow_smem(F f, int bytes) { cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes); }
void stream_read(torch::Tensor b, torch::Tensor out) {        // 8 blocks of 256 an SM
  int sms = 0; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, b.get_device());
  read_sum<<<sms * 8, 256, 0, STREAM>>>(reinterpret_cast<const uint4*>(b.data_ptr()), b.numel() * 2 / 16, out.data_ptr<float>()); }
// mode 0: y = gelu(W x), 8 rows a block; mode 1: y = r + W x, 2 rows a block (rows 4x longer)
void gemv(torch::Tensor w, torch::Tensor x, torch::Tensor r, torch::Tensor y, int64_t mode, bool tma) {
  int N = w.size(0), K = w.size(1);
  if (mode == 0 && !tma) gemv_reg<8, 0><<<N / 8, 256, 0, STREAM>>>(IN(w), IN(x), nullptr, OUT(y), K);
  if (mode == 1 && !tma) gemv_reg<2, 1><<<N / 2, 256, 0, STREAM>>>(IN(w), IN(x), IN(r), OUT(y), K);
  if (mode == 0 && tma) { allow_smem(gemv_tma<8, 0>, 16 * K); gemv_tma<8, 0><<<N / 8, 256, 16 * K, STREAM>>>(IN(w), IN(x), nullptr, OUT(y), K); }
  if (mode == 1 && tma) { allow_smem(gemv_tma<2, 1>, 4 * K); gemv_tma<2, 1><<<N / 2, 256, 4 * K, STREAM>>>(IN(w), IN(x), IN(r), OUT(y), K); } }
void prefetch(torch::Tensor w) { prefetch_l2<<<528, 256, 0, STREAM>>>(reinterpret_cast<const char*>(w.data_ptr()), w.numel() * 2); }
void wait_ns(int64_t ns) { idle<<<1, 32, 0, STREAM>>>(ns); }
void mlp(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y, torch::Tensor arrived) {
  int F = w1.size(0), C = w1.size(1); allow_smem(mlp_persistent, 16 * C);
  mlp_persistent<<<F / 8, 256, 16 * C, STREAM>>>(IN(w1), IN(x), OUT(h), IN(w2), IN(r), OUT(y), C, F, reinterpret_cast<unsigned*>(arrived.data_ptr())); }
int64_t mlp_blocks_resident(int64_t C) { int n = 0; allow_smem(mlp_persistent, 16 * C);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, mlp_persistent, 256, 16 * C); return n; }
// 4. launched with cudaLaunchKernelEx; pdl: the programmatic dependent launch attribute (kept by stream capture)
template <typename... P, typename... A> void launch(void (*k)(P...), int grid, int block, bool pdl, A... args) {
  cudaLaunchConfig_t cfg = {}; cfg.gridDim = dim3(grid); cfg.blockDim = dim3(block); cfg.stream = STREAM;
  cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1; cfg.attrs = at; cfg.numAttrs = pdl ? 1 : 0;
  cudaLaunchKernelEx(&cfg, k, args...); }
void gemv_early(torch::Tensor w, torch::Tensor x, torch::Tensor r, torch::Tensor y, int64_t mode) {
  int N = w.size(0), K = w.size(1);
  if (mode == 0) launch(gemv_pdl<8, 0>, N / 8, 256, true, IN(w), IN(x), (const half*)nullptr, OUT(y), K);
  else launch(gemv_pdl<2, 1>, N / 2, 256, true, IN(w), IN(x), IN(r), OUT(y), K); }
void mlp_reg(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y,
             torch::Tensor arrived, bool pre) {
  int F = w1.size(0), C = w1.size(1);
  launch(pre ? mlp_persistent_reg<true> : mlp_persistent_reg<false>, F / 8, 128, false, IN(w1), IN(x), OUT(h), IN(w2), IN(r),
         OUT(y), C, F, reinterpret_cast<unsigned*>(arrived.data_ptr())); }
// gpt2-xl's shapes only (the caller checks); threads: 1024, 512 or 256 a block; timeline: an address or 0
template <int NTH> void stream_mlp(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r,
                                   torch::Tensor y, torch::Tensor arrived, int blocks, int flags, bool math, int64_t timeline) {
  const int bytes = STAGES * CHUNK + 2 * (1600 + 6400);
  auto k = math ? mlp_stream<true, NTH, 1600, 6400> : mlp_stream<false, NTH, 1600, 6400>; allow_smem(k, bytes);
  k<<<blocks, NTH, bytes, STREAM>>>(IN(w1), IN(x), OUT(h), IN(w2), IN(r), OUT(y), reinterpret_cast<unsigned*>(arrived.data_ptr()),
                                    flags, reinterpret_cast<unsigned long long*>(timeline)); }
void mlp_streamed(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y,
                  torch::Tensor arrived, int64_t blocks, int64_t flags, bool math, int64_t threads, int64_t timeline) {
  if (threads == 1024) stream_mlp<1024>(w1, x, h, w2, r, y, arrived, blocks, flags, math, timeline);
  if (threads == 512) stream_mlp<512>(w1, x, h, w2, r, y, arrived, blocks, flags, math, timeline);
  if (threads == 256) stream_mlp<256>(w1, x, h, w2, r, y, arrived, blocks, flags, math, timeline); }
void mlp_split(torch::Tensor w1, torch::Tensor x, torch::Tensor w2t, torch::Tensor r, torch::Tensor y, torch::Tensor yacc,
               torch::Tensor done, int64_t blocks) {                  // gpt2-xl's shapes only (the caller checks)
  auto k = mlp_splitk<256, 1600, 6400>; const int bytes = STAGES * CHUNK + 2 * 1600; allow_smem(k, bytes);
  k<<<blocks, 256, bytes, STREAM>>>(IN(w1), IN(x), IN(w2t), IN(r), OUT(y), yacc.data_ptr<float>(),
                                    reinterpret_cast<unsigned*>(done.data_ptr())); }
// w1s, w2ts: int64 tensors of the layers' weight addresses; x: in x_0, out x_L; yacc: float [3, C], zeros
template <bool SYNC, int S, int CB, int PF, bool FA, bool ADDS = true, bool AR = false, bool LLX = false, int ST = 0, int KF = 0,
          int CL = 1>
int64_t all_layers(torch::Tensor w1s, torch::Tensor w2ts, torch::Tensor x,
    torch::Tensor yacc, torch::Tensor arrived, int blocks, int64_t tl, torch::Tensor ll) {
  auto k = mlp_layers<256, 1600, 6400, SYNC, S, CB, PF, FA, ADDS, AR, LLX, ST, KF, CL>;
  const int bytes = S * CB + 2 * 1600 + (CL > 1 ? 4 * 1600 : 0); allow_smem(k, bytes);
  // in clusters of CL (1: none); every cluster must be resident at once, as every block (the grid barrier)
  cudaLaunchConfig_t cfg = {}; cudaLaunchAttribute attr[1];
  cfg.gridDim = dim3(blocks); cfg.blockDim = dim3(256); cfg.dynamicSmemBytes = bytes; cfg.stream = STREAM;
  attr[0].id = cudaLaunchAttributeClusterDimension; attr[0].val.clusterDim.x = CL; attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1; cfg.attrs = attr; cfg.numAttrs = CL > 1;
  if (CL > 1) { int n = 0; cudaOccupancyMaxActiveClusters(&n, k, &cfg);            // (fewer blocks if they do not all fit)
                blocks = min(blocks / CL, n) * CL; cfg.gridDim = dim3(blocks); TORCH_CHECK(blocks > 0, "no cluster fits"); }
  TORCH_CHECK(cudaLaunchKernelEx(&cfg, k, reinterpret_cast<const long long*>(w1s.data_ptr()),
                                 reinterpret_cast<const long long*>(w2ts.data_ptr()), OUT(x), yacc.data_ptr<float>(),
                                 reinterpret_cast<unsigned*>(arrived.data_ptr()), (int)w1s.size(0),
                                 reinterpret_cast<unsigned long long*>(tl), reinterpret_cast<unsigned long long*>(ll.data_ptr()))
              == cudaSuccess, "mlp_layers: launch failed");
  return blocks; }
template <bool SYNC> int64_t all_layers_v(torch::Tensor w1s, torch::Tensor w2ts, torch::Tensor x, torch::Tensor yacc,
                                       torch::Tensor arrived, int blocks, int v, int64_t tl, torch::Tensor ll) {
  auto f = v == 0 ? all_layers<SYNC, 4, 51200, 0, true> : v == 1 ? all_layers<SYNC, 4, 51200, 0, false>
         : v == 2 ? all_layers<SYNC, 4, 51200, 4, false> : v == 3 ? all_layers<SYNC, 4, 51200, 8, false>
         : v == 4 ? all_layers<SYNC, 4, 25600, 8, false> : v == 5 ? all_layers<SYNC, 4, 25600, 16, false>
         : v == 6 ? all_layers<SYNC, 4, 51200, 0, false, false> : v == 7 ? all_layers<SYNC, 4, 51200, 0, false, true, true>
         : v == 8 ? all_layers<SYNC, 4, 51200, 0, false, true, false, true>
         : v == 9 ? all_layers<SYNC, 4, 51200, 0, false, true, false, false, 32>
         : v == 10 ? all_layers<SYNC, 4, 51200, 0, false, true, false, false, 32, 4>
         : v == 11 ? all_layers<SYNC, 4, 51200, 0, false, true, false, false, 32, 3>
         : v == 12 ? all_layers<SYNC, 4, 51200, 0, false, true, false, false, 32, 2>
         : v == 13 ? all_layers<SYNC, 8, 25600, 0, false, true, false, false, 32, 6>
         : v == 14 ? all_layers<SYNC, 8, 25600, 0, false, true, false, false, 32, 4>
         : v == 15 ? all_layers<SYNC, 8, 25600, 0, false, true, false, false, 32, 2>
         : v == 16 ? all_layers<SYNC, 4, 51200, 0, false, true, false, false, 0, 0, 4>
         : all_layers<SYNC, 4, 51200, 0, false, true, false, false, 0, 0, 2>;
  return f(w1s, w2ts, x, yacc, arrived, blocks, tl, ll); }
// w1s, w2ts: int64 tensors of the layers' weight addresses; x: in x_0, out x_L; yacc: float [3, C], zeros; variant
// (ring, L2 prefetch distance in chunks, who fences): 0: 4 x 51.2 KB, 0, all; 1: 4 x 51.2 KB, 0, thread 0; 2: 4 x 51.2 KB,
// 4, thread 0; 3: 4 x 51.2 KB, 8, thread 0; 4: 4 x 25.6 KB, 8, thread 0; 5: 4 x 25.6 KB, 16, thread 0; 6: as 1 without
// the adds into yacc (wrong results); 7: as 1, its fence fence.acq_rel.gpu; 8: the sum exchanged as tagged values
// (LL; ll: int64 [G * C + C + G], zeros, kept between calls); 9: as 1, thread 32 fences and arrives; 10-15: as 9, at
// most KF chunks in flight, thread 0 keeping them so through the barrier -- 4 x 51.2 KB with KF 4, 3, 2, and
// 8 x 25.6 KB with KF 6, 4, 2; 16, 17: as 1, the sum reduced in clusters of 4 / 2 through distributed shared memory
// first (returns the blocks launched: for clusters, as many as fit at once, at most `blocks`). timeline: an
// address or 0. gpt2-xl's shapes only (the caller checks)
int64_t mlp_all_layers(torch::Tensor w1s, torch::Tensor w2ts, torch::Tensor x, torch::Tensor yacc, torch::Tensor arrived,
                    int64_t blocks, bool sync, int64_t variant, int64_t timeline, torch::Tensor ll) {
  return (sync ? all_layers_v<true> : all_layers_v<false>)(w1s, w2ts, x, yacc, arrived, blocks, variant, timeline, ll); }
template <int S, int CB, bool SYNC> void ring(torch::Tensor b, torch::Tensor out, int blocks) {
  allow_smem(ring_read<S, CB, SYNC>, S * CB);
  ring_read<S, CB, SYNC><<<blocks, 1024, S * CB, STREAM>>>(reinterpret_cast<const char*>(b.data_ptr()), b.numel() * 2, out.data_ptr<float>()); }
// variant v: (stages, chunk bytes, synchronised); blocks a launch
void ring_stream(torch::Tensor b, torch::Tensor out, int64_t v, int64_t blocks) {
  switch (v) { case 0: ring<4, 51200, false>(b, out, blocks); break; case 1: ring<16, 12800, false>(b, out, blocks); break;
               case 2: ring<4, 51200, true>(b, out, blocks); break; case 3: ring<16, 12800, true>(b, out, blocks); break;
               case 4: ring<4, 25600, false>(b, out, blocks); break; case 5: ring<8, 12800, false>(b, out, blocks); break; } }
void mlp_streamed_cp(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y,
                     torch::Tensor arrived, int64_t blocks) {
  int F = w1.size(0), C = w1.size(1), bytes = STAGES * CHUNK + 2 * (C + F); allow_smem(mlp_stream_cp, bytes);
  mlp_stream_cp<<<blocks, NT, bytes, STREAM>>>(IN(w1), IN(x), OUT(h), IN(w2), IN(r), OUT(y), C, F, reinterpret_cast<unsigned*>(arrived.data_ptr())); }
int64_t mlp_stream_blocks_resident(int64_t C, int64_t F) { int n = 0, bytes = STAGES * CHUNK + 2 * (C + F);
  auto k = mlp_stream<true, 1024, 1600, 6400>; allow_smem(k, bytes); cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, NT, bytes); return n; }
int64_t mlp_reg_blocks_resident() { int a = 0, b = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&a, mlp_persistent_reg<true>, 128, 0);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, mlp_persistent_reg<false>, 128, 0); return a < b ? a : b; }
'''
CPP = """void stream_read(torch::Tensor b, torch::Tensor out);
void gemv(torch::Tensor w, torch::Tensor x, torch::Tensor r, torch::Tensor y, int64_t mode, bool tma);
void prefetch(torch::Tensor w); void wait_ns(int64_t ns);
void mlp(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y, torch::Tensor arrived);
int64_t mlp_blocks_resident(int64_t C);
void gemv_early(torch::Tensor w, torch::Tensor x, torch::Tensor r, torch::Tensor y, int64_t mode);
void mlp_reg(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y,
             torch::Tensor arrived, bool pre);
int64_t mlp_reg_blocks_resident();
void mlp_streamed(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y,
                  torch::Tensor arrived, int64_t blocks, int64_t flags, bool math, int64_t threads, int64_t timeline);
int64_t mlp_stream_blocks_resident(int64_t C, int64_t F);
void mlp_streamed_cp(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y,
                     torch::Tensor arrived, int64_t blocks);
void ring_stream(torch::Tensor b, torch::Tensor out, int64_t v, int64_t blocks);
void mlp_split(torch::Tensor w1, torch::Tensor x, torch::Tensor w2t, torch::Tensor r, torch::Tensor y, torch::Tensor yacc,
               torch::Tensor done, int64_t blocks);
int64_t mlp_all_layers(torch::Tensor w1s, torch::Tensor w2ts, torch::Tensor x, torch::Tensor yacc, torch::Tensor arrived,
                    int64_t blocks, bool sync, int64_t variant, int64_t timeline, torch::Tensor ll);"""
FUNCTIONS = ["stream_read", "gemv", "prefetch", "wait_ns", "mlp", "mlp_blocks_resident", "gemv_early", "mlp_reg",
             "mlp_reg_blocks_resident", "mlp_streamed", "mlp_stream_blocks_resident",
             "mlp_streamed_cp", "ring_stream", "mlp_split", "mlp_all_layers"]
LAYERS = 48          # gpt2-xl
BARRIER, RPRE, RING_ONLY, NOCOPY = 1, 2, 4, 8     # mlp_stream's flags (its comment)
TLS = 24             # mlp_stream's timeline slots a block


def kernel_us(launch, reps: int = 4) -> dict[str, float]:
    """Median CUPTI duration (us) per kernel name of `launch()`, run once to warm up, then reps times."""
    launch()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            launch()
        torch.cuda.synchronize()
    times = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            name = e.name.split("<")[0].split("(")[0].removeprefix("void ")
            times.setdefault(name, []).append(getattr(e, "device_time", None) or e.cuda_time)
    return {k: statistics.median(v) for k, v in times.items()}


def graph_us(launch, replays: int = 20) -> float:
    """Median time (us) of one replay of a CUDA graph capturing `launch()`."""
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        launch()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        launch()
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def events_us(fn, warmup: int = 5, repeats: int = 5, reps: int = 20) -> float:
    """Median time (us) of one call of fn(), launched reps times between two CUDA events, after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / reps)
    return statistics.median(times)


def option(name: str, default=None, cast=str):
    """--name=VALUE from the command line, cast; default where it is not given."""
    return next((cast(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith(f"--{name}=")), default)


def build_extension(script: str, name: str, cpp: str, cuda_sources: str, functions: list):
    """The raw CUDA kernels and their launchers built by torch for this GPU (sm_XXa: TMA, clusters, PDL), or a
    one-line exit where there is none."""
    if not torch.cuda.is_available():
        raise SystemExit(f"{script}: no CUDA GPU here (run it on the GPU machine)")
    arch = "".join(map(str, torch.cuda.get_device_capability()))
    return load_inline(name, cpp, cuda_sources=cuda_sources, functions=functions,
                       extra_cuda_cflags=["-O3", f"-arch=sm_{arch}a"])


def main():
    out_dir = option("out")
    mlp_only = "--mlp-only" in sys.argv[1:]                           # sections 3 and 4 alone
    reads_only = "--reads" in sys.argv[1:]                            # sections 1 and 2 alone
    timeline_only = "--timeline" in sys.argv[1:]                      # section 5 alone
    layers_only = "--layers" in sys.argv[1:]                          # section 3's one-launch rows and its baseline
    which = option("variants", None, lambda v: {int(x) for x in v.split(",")})  # --layers: these variants alone
    ext = build_extension("bench_weight_stream", "tinygpt2_weight_stream", CPP, KERNELS + LAUNCHERS, FUNCTIONS)
    cfg = PRESETS["gpt2-xl"]
    torch.manual_seed(0)
    lines = [f"{torch.cuda.get_device_name()}; gpt2-xl fp16 shapes; kernel times from CUPTI, medians\n"]
    if timeline_only:
        timeline_section(ext, cfg, lines)       # 5
    elif layers_only:
        mlp_section(ext, cfg, lines, layers_only=True, which=which)
    else:
        if not mlp_only:
            read_sections(ext, cfg, lines)      # 1 and 2
        if not reads_only:
            mlp_section(ext, cfg, lines)        # 3
            ring_section(ext, cfg, lines)       # 4
    report(lines, out_dir, "bench_weight_stream.md")


def report(lines, out_dir, name):
    """Print the Markdown lines, and write them to out_dir/name too if out_dir is given."""
    text = "\n".join(lines)
    print(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text + "\n")


def read_sections(ext, cfg, lines):
    # --- 1. streaming reads, cold: one kernel per matrix ---
    C, F = cfg.n_embd, cfg.n_inner
    bw = copy_bandwidth()
    sink = torch.zeros(1, device="cuda")
    matrices = {"c_attn": 3 * C * C, "attn.c_proj": C * C, "mlp.c_fc": C * F, "mlp.c_proj": F * C,
                "wte (lm_head)": cfg.vocab_size * C, "1 GiB": 1 << 29}              # elements, fp16
    read_us = {}
    lines += ["| one read kernel (cold) | MB | us | TB/s |", "|---|---|---|---|"]
    for name, n in matrices.items():
        bufs = [torch.empty(n, device="cuda", dtype=torch.half) for _ in range(max(1, (1 << 30) // (2 * n)))]
        read_us[name] = kernel_us(lambda: [ext.stream_read(b, sink) for b in bufs])["read_sum"]
        lines.append(f"| {name} | {2 * n / 1e6:.2f} | {read_us[name]:.2f} | {2 * n / read_us[name] / 1e6:.2f} |")
        del bufs
    context = 128 + 256 // 2                                          # as `tinygpt2 bench`'s roofline
    kv_bytes = 2 * cfg.n_layer * C * context * 2
    step = cfg.n_layer * sum(read_us[k] for k in ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")) \
        + read_us["wte (lm_head)"] + kv_bytes / (2 * (1 << 29) / read_us["1 GiB"])
    roofline = bw / decode_bytes_per_token(cfg, "float16", context)
    lines += ["", f"A decode step of such reads, one kernel per matrix (+ the KV cache at the 1 GiB rate): {step:.0f} us, "
              f"{1e6 / step:.0f} tok/s = {100e6 / step / roofline:.0f}% of the roofline ({roofline:.0f} tok/s at this "
              f"run's copy bandwidth, {bw / 1e12:.2f} TB/s read + write)", ""]

    # --- 2. one GEMV: cold, L2-warm, L2-prefetched, TMA ---
    for (N, K, mode, what) in ((F, C, 0, "mlp.c_fc + gelu"), (3 * C, C, 0, "c_attn"), (C, F, 1, "mlp.c_proj + residual")):
        ws = [torch.randn(N, K, device="cuda", dtype=torch.half) * 0.02 for _ in range(LAYERS)]
        x = torch.randn(K, device="cuda", dtype=torch.half)
        r = torch.randn(N, device="cuda", dtype=torch.half)
        y = torch.empty(N, device="cuda", dtype=torch.half)
        ref = (ws[1].float() @ x.float())
        ref = torch.nn.functional.gelu(ref, approximate="tanh") if mode == 0 else r.float() + ref
        for tma in (False, True):                                      # each kernel checked before it is timed
            ext.gemv(ws[1], x, r, y, mode, tma)
            torch.cuda.synchronize()
            assert torch.allclose(y.float(), ref, rtol=1e-2, atol=2e-2), (what, tma)
        cases = {"cold": lambda i: ext.gemv(ws[i], x, r, y, mode, False),
                 "W in L2 (the same W again)": lambda i: ext.gemv(ws[0], x, r, y, mode, False),
                 "W prefetched into L2, then 6 us idle": lambda i: (ext.prefetch(ws[i]), ext.wait_ns(6000),
                                                                    ext.gemv(ws[i], x, r, y, mode, False)),
                 "cold, W by TMA into shared memory": lambda i: ext.gemv(ws[i], x, r, y, mode, True)}
        lines += [f"| GEMV {what}, W [{N}, {K}] ({2 * N * K / 1e6:.2f} MB) | us | TB/s |", "|---|---|---|"]
        for name, f in cases.items():
            us = kernel_us(lambda: [f(i) for i in range(LAYERS)])
            us = us["gemv_tma" if "TMA" in name else "gemv_reg"]
            lines.append(f"| {name} | {us:.2f} | {2 * N * K / us / 1e6:.2f} |")
        lines.append("")
        del ws


def mlp_tensors(C, F):
    """LAYERS layers of random MLP weights, W1 [F, C] and W2 [C, F] fp16, then x and the residual r [C], and
    the outputs h [F] and y [C] (empty)."""
    w1 = [torch.randn(F, C, device="cuda", dtype=torch.half) * 0.02 for _ in range(LAYERS)]
    w2 = [torch.randn(C, F, device="cuda", dtype=torch.half) * 0.02 for _ in range(LAYERS)]
    x, r = (torch.randn(C, device="cuda", dtype=torch.half) for _ in range(2))
    return w1, w2, x, r, torch.empty(F, device="cuda", dtype=torch.half), torch.empty(C, device="cuda", dtype=torch.half)


def mlp_section(ext, cfg, lines, layers_only=False, which=None):
    """Section 3; layers_only: the one-launch rows alone (those in `which`, every one if None) and their baseline."""
    # --- 3. the MLP x 48 in a CUDA graph: two kernels a layer, or one persistent ---
    C, F = cfg.n_embd, cfg.n_inner
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for resident in (ext.mlp_blocks_resident(C), ext.mlp_reg_blocks_resident()):
        assert resident * sms >= F // 8, f"a persistent kernel's {F // 8} blocks do not fit at once ({resident} an SM)"
    assert (C, F) == (1600, 6400), "mlp_persistent_reg's shared memory is sized for gpt2-xl"
    assert ext.mlp_stream_blocks_resident(C, F) >= 1
    assert C // sms < 32, "mlp_stream keeps a block's c_proj residuals in 32 halves of shared memory"
    w1, w2, x, r, h, y = mlp_tensors(C, F)
    ref_h = torch.nn.functional.gelu(w1[0].float() @ x.float(), approximate="tanh")
    ref_y = r.float() + w2[0].float() @ ref_h.half().float()
    arrived = torch.zeros(1, device="cuda", dtype=torch.int32)
    flat = [torch.empty(2 * C * F, device="cuda", dtype=torch.half) for _ in range(LAYERS)]   # a layer's MLP bytes
    sink = torch.zeros(1, device="cuda")
    w2t = [w.t().contiguous() for w in w2]                              # [F, C]: HF Conv1D's layout
    yacc, done = torch.zeros(C, device="cuda"), torch.zeros(1, device="cuda", dtype=torch.int32)
    assert F // sms < 64, "mlp_splitk keeps a block's h in 64 floats of shared memory"
    streamed = lambda i, flags, math=True, threads=1024: ext.mlp_streamed(w1[i], x, h, w2[i], r, y, arrived, sms, flags,
                                                                          math, threads, 0)
    variants = {"two kernels a layer": lambda i: (ext.gemv(w1[i], x, r, h, 0, False), ext.gemv(w2[i], h, r, y, 1, False)),
                "two kernels a layer, W by TMA": lambda i: (ext.gemv(w1[i], x, r, h, 0, True), ext.gemv(w2[i], h, r, y, 1, True)),
                "two kernels a layer, PDL (W's loads before the wait)": lambda i: (ext.gemv_early(w1[i], x, r, h, 0),
                                                                                   ext.gemv_early(w2[i], h, r, y, 1)),
                "one persistent kernel a layer (TMA, grid barrier)": lambda i: ext.mlp(w1[i], x, h, w2[i], r, y, arrived),
                "one persistent kernel a layer, W in registers, c_proj's loaded after the barrier":
                    lambda i: ext.mlp_reg(w1[i], x, h, w2[i], r, y, arrived, False),
                "one persistent kernel a layer, W in registers, c_proj's loaded before the barrier":
                    lambda i: ext.mlp_reg(w1[i], x, h, w2[i], r, y, arrived, True),
                f"one streaming kernel a layer ({sms} blocks of 1024, a ring of TMA chunks across both matrices)":
                    lambda i: streamed(i, BARRIER),
                "the same without its barrier (wrong results)": lambda i: streamed(i, 0),
                "the same without its barrier and its dot products (wrong results)": lambda i: streamed(i, 0, False),
                # from the bare ring towards the kernel, one step at a time
                "the same ring over the two matrices as the kernel splits them, nothing else (wrong results)":
                    lambda i: streamed(i, RING_ONLY, False),
                "+ the chunks' dot products, reductions and stores, residuals read at the start (wrong results)":
                    lambda i: streamed(i, RPRE | NOCOPY),
                "+ the copies of x and h into shared memory (wrong results)": lambda i: streamed(i, RPRE),
                "+ the grid barrier: the streaming kernel, its residuals read at the start":
                    lambda i: streamed(i, BARRIER | RPRE),
                # fewer threads: a chunk's step costs every warp its instructions (section 5)
                f"one streaming kernel a layer, {sms} blocks of 512": lambda i: streamed(i, BARRIER, threads=512),
                f"one streaming kernel a layer, {sms} blocks of 256": lambda i: streamed(i, BARRIER, threads=256),
                f"one streaming kernel a layer, {sms} blocks of 256, residuals read at the start":
                    lambda i: streamed(i, BARRIER | RPRE, threads=256),
                f"one kernel a layer, no barrier: c_proj split by the blocks' c_fc rows (W2 as [in, out], {sms} blocks "
                "of 256, float atomics, the last block writes y)": lambda i: ext.mlp_split(w1[i], x, w2t[i], r, y, yacc, done, sms),
                "the ring alone (section 4's kernel, 4 x 51.2 KB) reading the same bytes, no arithmetic":
                    lambda i: ext.ring_stream(flat[i], sink, 0, sms),
                f"one streaming kernel a layer ({sms} blocks, the ring filled by cp.async, a thread its own vectors)":
                    lambda i: ext.mlp_streamed_cp(w1[i], x, h, w2[i], r, y, arrived, sms)}
    if layers_only:
        variants = {"two kernels a layer": variants["two kernels a layer"]}
    lines += [f"| MLP x {LAYERS} layers in a CUDA graph ({4 * C * F / 1e6:.2f} MB a layer) | us a layer | TB/s |",
              "|---|---|---|"]
    for name, f in variants.items():
        arrived.zero_()                 # a persistent kernel's counter starts at a multiple of its grid
        h.zero_(); y.zero_()
        f(0)
        torch.cuda.synchronize()
        writes_h = "no barrier" not in name                            # the split kernel keeps h in shared memory
        assert "wrong results" in name or "ring alone" in name or (
            not writes_h or torch.allclose(h.float(), ref_h, rtol=1e-2, atol=2e-3)) and torch.allclose(
            y.float(), ref_y, rtol=1e-2, atol=2e-2), name
        us = graph_us(lambda: [f(i) for i in range(LAYERS)]) / LAYERS
        lines.append(f"| {name} | {us:.2f} | {4 * C * F / us / 1e6:.2f} |")

    # every layer in one launch (mlp_layers), each layer's input the last one's output: checked on 8 layers against
    # torch (48 of these random layers overflow fp16), timed on 48 from a smaller x; the graph also copies x in and
    # zeroes the accumulators (a copy and a memset for all 48 layers)
    w1s, w2ts = (torch.tensor([w.data_ptr() for w in ws], dtype=torch.int64, device="cuda") for ws in (w1, w2t))
    acc3 = torch.zeros(3, C, device="cuda")
    ll = torch.zeros(sms * C + C + sms, device="cuda", dtype=torch.int64)    # the LL variant's tagged values, kept
    x0 = torch.randn(C, device="cuda", dtype=torch.half)
    xio = x0.clone()
    arrived.zero_()
    ref = x0.clone()
    for i in range(8):
        hr = torch.nn.functional.gelu(w1[i].float() @ ref.float(), approximate="tanh").half()
        ref = (ref.float() + (w2[i].float() @ hr.float()).half().float()).half()
    small = x0 * 1e-3
    barrier_notes = []
    for ring, what in enumerate(["4 x 51.2 KB", "4 x 51.2 KB, thread 0 fences", "4 x 51.2 KB, thread 0 fences, L2 prefetch 4 ahead",
                                 "4 x 51.2 KB, thread 0 fences, L2 prefetch 8 ahead",
                                 "4 x 25.6 KB, thread 0 fences, L2 prefetch 8 ahead",
                                 "4 x 25.6 KB, thread 0 fences, L2 prefetch 16 ahead",
                                 "4 x 51.2 KB, thread 0 fences, no float atomics (wrong results)",
                                 "4 x 51.2 KB, thread 0 fences with fence.acq_rel.gpu",
                                 "4 x 51.2 KB, the sum exchanged as tagged 8-byte values (no atomics, fence or counter)",
                                 "4 x 51.2 KB, thread 32 fences and arrives (thread 0 issues the copies)",
                                 *(f"{ring}, at most {kf} in flight, thread 32 fences and arrives (thread 0 keeps the "
                                   "ring going through the barrier)" for ring, kf in
                                   (("4 x 51.2 KB", 4), ("4 x 51.2 KB", 3), ("4 x 51.2 KB", 2), ("8 x 25.6 KB", 6),
                                    ("8 x 25.6 KB", 4), ("8 x 25.6 KB", 2))),
                                 *(f"4 x 51.2 KB, thread 0 fences, the sum reduced in clusters of {cl} through distributed "
                                   "shared memory first" for cl in (4, 2))]):
        if which is not None and ring not in which:
            continue
        xio.copy_(x0); acc3.zero_(); arrived.zero_()
        used = ext.mlp_all_layers(w1s[:8], w2ts[:8], xio, acc3, arrived, sms, True, ring, 0, ll)
        if used != sms:                                                # clusters: as many as fit at once
            what += f", {used} blocks"
        err = ((xio.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        assert err < 1e-2 or "wrong results" in what, f"mlp_layers, ring {what}, 8 layers: relative error {err:.2e}"
        for sync, name in ((True, f"every layer in one launch ({sms} blocks of 256, a ring of {what}), the ring running "
                                  "on across layers: as the split kernel, a grid barrier a layer"),
                           (False, "the same without its barriers (wrong results)")):
            arrived.zero_()
            us = graph_us(lambda: (xio.copy_(small), acc3.zero_(),
                                   ext.mlp_all_layers(w1s, w2ts, xio, acc3, arrived, sms, sync, ring, 0, ll))) / LAYERS
            lines.append(f"| {name} | {us:.2f} | {4 * C * F / us / 1e6:.2f} |")
        # where a layer's barrier goes: thread 0's timeline in one more call (medians over layers and blocks)
        tl = torch.zeros(LAYERS, sms, 6, device="cuda", dtype=torch.int64)
        xio.copy_(small); acc3.zero_(); arrived.zero_()
        ext.mlp_all_layers(w1s, w2ts, xio, acc3, arrived, sms, True, ring, tl.data_ptr(), ll)
        t = tl[:, :used].cpu().double()
        d = lambda i, j: (t[:, :, j] - t[:, :, i]).median().item() / 1.97e3      # us, at the SM clock section 5 measured
        past = t[:, :, 4]
        barrier_notes.append(f"| {what} | {d(0, 1):.2f} | {d(1, 2):.2f} | {d(2, 3):.2f} | "
                             f"{(past.max(1).values - past.min(1).values).median().item() / 1e3:.2f} | "
                             + (f"{d(0, 5):.2f} |" if "clusters" in what else "|"))
    lines += ["", "| mlp_layers' barrier, thread 0's clock (us, medians): ring | adds fenced (LL: partials stored) | "
              "barrier passed (LL: its slice summed) | x updated | the blocks' passing spread over (globaltimer) | "
              "of the first column, the cluster's exchange and adds |", "|---|---|---|---|---|---|"] + barrier_notes


def timeline_section(ext, cfg, lines):
    # --- 5. where the streaming kernel's time goes: a timeline of each block (its thread 0) in the graph ---
    C, F = cfg.n_embd, cfg.n_inner
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    w1, w2, x, r, h, y = mlp_tensors(C, F)
    arrived = torch.zeros(1, device="cuda", dtype=torch.int32)
    tl = torch.zeros(LAYERS, sms, TLS, device="cuda", dtype=torch.int64)
    variants = {"ring only": (RING_ONLY, False, 1024), "+ steps": (RPRE | NOCOPY, True, 1024),
                "+ copies": (RPRE, True, 1024), "+ barrier": (BARRIER | RPRE, True, 1024), "kernel": (BARRIER, True, 1024),
                "kernel, 512 threads": (BARRIER, True, 512), "kernel, 256 threads": (BARRIER, True, 256),
                "+ steps, 256 threads": (RPRE | NOCOPY, True, 256)}
    # a block's chunks: c_fc's (16 rows each), then c_proj's (4 rows each), as mlp_stream splits the rows
    nc1 = [-(-((b + 1) * F // sms - b * F // sms) // 16) for b in range(sms)]
    nc = [nc1[b] + -(-((b + 1) * C // sms - b * C // sms) // 4) for b in range(sms)]
    cols, spans = {}, {}
    for name, (flags, math, threads) in variants.items():
        arrived.zero_()
        us = {}
        for traced in (0, 1):                    # the graph's time without the timeline, then with it
            tl.zero_()
            launch = lambda: [ext.mlp_streamed(w1[i], x, h, w2[i], r, y, arrived, sms, flags, math, threads,
                                               tl[i].data_ptr() if traced else 0) for i in range(LAYERS)]
            us[traced] = graph_us(launch) / LAYERS
        t = tl.cpu().numpy().astype("float64")
        per_ns = statistics.median(((t[:, :, 3] - t[:, :, 2]) / (t[:, :, 1] - t[:, :, 0])).ravel())   # clock64 a ns
        at = lambda slot: (t[:, :, slot] - t[:, :, 2]) / per_ns / 1e3          # us since the block's start
        med = lambda v: statistics.median(v) if len(v) else float("nan")
        rows = {}
        for k in range(4):                       # the k-th chunk of c_fc, then of c_proj: arrived / done
            for part, first in (("c_fc", lambda b: 0), ("c_proj", lambda b: nc1[b])):
                sel = [(b, first(b) + k) for b in range(sms) if first(b) + k < min(8, nc[b])
                       and (part == "c_proj" or k < nc1[b])]
                rows[f"{part} chunk {k}"] = (med([v for b, c in sel for v in at(5 + 2 * c)[:, b]]),
                                             med([v for b, c in sel for v in at(6 + 2 * c)[:, b]]))
        rows["past the grid barrier"] = (med(at(4).ravel()) if not flags & RING_ONLY else float("nan"),) * 2   # or its place
        rows["block's end"] = (med(at(3).ravel()),) * 2
        cols[name] = rows
        g0, g1 = t[:, :, 0], t[:, :, 1]
        spans[name] = (us[0], us[1], statistics.median(g1.max(1) - g0.min(1)) / 1e3,
                       statistics.median(g0.max(1) - g0.min(1)) / 1e3, statistics.median(g1.max(1) - g1.min(1)) / 1e3,
                       statistics.median(g0[1:].min(1) - g1[:-1].max(1)) / 1e3, per_ns)
    lines += ["", f"| streaming MLP x {LAYERS} in a CUDA graph, thread 0's timeline (medians, us since the block's start: "
              "arrived / done) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in next(iter(cols.values())):
        lines.append(f"| {row} | " + " | ".join(
            f"{c[row][0]:.2f}" if row in ("block's end", "past the grid barrier") else f"{c[row][0]:.2f} / {c[row][1]:.2f}"
            for c in cols.values()) + " |")
    for i, what in enumerate(["graph, us a layer, without the timeline", "graph, us a layer, with it",
                              "a layer's span: first block's start to last block's end (globaltimer)",
                              "blocks' starts spread over", "blocks' ends spread over",
                              "from a layer's last block's end to the next one's first start",
                              "clock64 ticks a ns (the SM clock, GHz)"]):
        lines.append(f"| {what} | " + " | ".join(f"{v[i]:.2f}" for v in spans.values()) + " |")


def ring_section(ext, cfg, lines):
    # --- 4. streaming through a ring of shared memory, no arithmetic ---
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n = 4 * cfg.n_embd * cfg.n_inner             # fp16 elements: 81.92 MB, two layers of MLP weights
    bufs = [torch.empty(n, device="cuda", dtype=torch.half) for _ in range(LAYERS)]
    sink = torch.zeros(1, device="cuda")
    lines += ["", f"| {2 * n / 1e6:.2f} MB read through a ring of shared memory (TMA), cold | us | TB/s |", "|---|---|---|"]
    us = kernel_us(lambda: [ext.stream_read(b, sink) for b in bufs])["read_sum"]
    lines.append(f"| registers: read_sum, {sms * 8} blocks of 256 | {us:.2f} | {2 * n / us / 1e6:.2f} |")
    for v, what in enumerate(["4 x 51.2 KB, thread 0 waits", "16 x 12.8 KB, thread 0 waits",
                              "4 x 51.2 KB, every thread waits, a block barrier a chunk",
                              "16 x 12.8 KB, every thread waits, a block barrier a chunk",
                              "4 x 25.6 KB, thread 0 waits", "8 x 12.8 KB, thread 0 waits"]):
        for per_sm in (1, 2) if v >= 4 else (1,):
            us = kernel_us(lambda: [ext.ring_stream(b, sink, v, per_sm * sms) for b in bufs])["ring_read"]
            lines.append(f"| {what}; {per_sm} block{'s' * (per_sm > 1)} of 1024 an SM | {us:.2f} | {2 * n / us / 1e6:.2f} |")


if __name__ == "__main__":
    main()
