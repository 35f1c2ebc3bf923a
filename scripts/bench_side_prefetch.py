"""On the GPU machine: does a prefetcher on a second stream, off the decode step's chain, buy what the in-chain
prefetches could not?

    PYTHONPATH=. python3 scripts/bench_side_prefetch.py [--out=DIR] [--pipe-only]         (torch + nvcc)
    bash scripts/gpu_session.sh side-prefetch                            (the same, after the device install)

Issue 6's aim 2 (gpt2-xl fp16 decode at 75% of the roofline) is missed at 70% on the H100 because of one kernel per
weight matrix: each costs ~1.7 us more than its bytes (docs/results/README.md, "What 75% asks of gpt2-xl"), and
between qkv and c_fc HBM idles ~6 us a layer while the attention and its c_proj wait on latencies. Prefetching the
next weights into L2 from inside the chain was measured many ways, and pays little: a grid completes only once its
prefetches have landed, so every byte a kernel prefetches delays the kernels behind it (the best kept: a quarter of
c_fc from the attention, -0.86 us a layer). A GEMV whose W is already in L2 is ~1.7 us faster than cold
(bench_weight_stream_h100.md: c_fc 9.12 -> 7.29 us).

So this script puts the prefetcher *beside* the chain, where no kernel waits for it: a small kernel on a second
stream, launched with each step, that follows the step's progress and keeps HBM busy ahead of it. Each kernel of the
chain writes its index into a progress word as it starts; the prefetcher (G blocks, one thread each issuing
`cp.async.bulk.prefetch.L2` of 32 KB chunks of the step's weights, laid out in the order they are read) lets
itself run ahead to a frontier that depends on the kernel running now (the policies below), and exits once the last
kernel has started and nothing more is allowed.

The chain is a gpt2-xl layer's skeleton, 48 layers in one CUDA graph, every kernel launched with PDL (the model's
"exit" mode: the next kernel's blocks start as this one's exit), each linear y = r + W x:

    qkv     GEMV W [4800, 1600], 600 blocks of 256 (kernels/ln_linear.py's schedule: a warp a row, W in registers)
    attend  a stand-in for the attention: 100 blocks that wait, read q, spin ATTEND_NS and write a [1600] output
            (no HBM traffic: the real attention's K and V rows are a few percent of the layer's bytes)
    c_proj  GEMV W [1600, 1600]
    c_fc    GEMV W [6400, 1600]
    proj2   GEMV W [1600, 6400] (the MLP's c_proj), 800 blocks of 256

Rows, us a layer (CUDA events around a replay, medians of 15), measured in turn, round after round (drift between
rows measured one block each once faked a bystander's cost): the chain alone; the chain with the model's in-chain
prefetch (the stand-in prefetching c_proj's W and a quarter of c_fc's, as attention_cluster does); the side
prefetcher present but never allowed to run ahead (its cost as a bystander); the side prefetcher at the best
settings of the first runs (docs/results/bench_side_prefetch_h100.md), with and without the in-chain prefetch; and
the chain launched without PDL, alone and with the prefetcher. The GEMVs are checked against torch first (one layer,
alone). Then in the model (`side-prefetch`), the bystander cost the decode graph 4% (side_prefetch_h100.md).

One more row, not a prefetcher (twenty-fourth session): the chain with its four GEMVs as persistent grids that fill
half of each SM (sp_gemv_pipe: 2 blocks of 128 an SM, a block's groups of rows one after the other, the next
group's W loaded while this one's is multiplied), each with its first group's W loaded before it lets the next
kernel launch and before its PDL wait -- so that the next kernel's blocks are resident, their first loads in
flight, while this one still runs: the model's linears overlap the kernel before them by 0.2-0.3 us only, and pay
their start on the step's critical path (docs/results/README.md, the twenty-fourth session). Beside it, the same
grids with every load after the wait (the persistent structure alone), and with 4 blocks an SM (a whole SM: no room
for the next kernel). --pipe-only runs these beside the chain's two baselines alone. Timed in the twenty-fifth session
(docs/results/pipe_decode_h100.md): half an SM streams too slowly (37.4 us a layer against the stand-in's 35.3), a
whole SM's is faster (33.8); so were the model's own pipelined linears (`pipe-decode`, in `fused` since the
twenty-sixth session) at 4 blocks an SM, for gpt2-xl's qkv and MLP c_proj alone. Both copy the next group's W into
this group's registers at each trip's end (`wa[i] = wb[i]`), which waits for the loads just issued: one group in
flight, not two; in the model, loops without the copy measured slower (docs/results/pipe_decode_h100.md).
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

C, F, LAYERS = 1600, 6400, 48                  # gpt2-xl
ATTEND_NS = 3500                               # the stand-in attention's spin: ~the model's 3.84 us (H100 trace)
CHUNK = 32768                                  # bytes a bulk prefetch
MB = 1 << 20
PIPE_ROWS = {C: 4, F: 1}                       # sp_gemv_pipe's rows a group, by row length (a warp, 4 warps a row)
# the persistent GEMVs' variants: (blocks of 128 an SM, W's first group loaded before the PDL wait)
PIPES = {"2 blocks an SM (half of it), W's first rows before the wait": (2, True),
         "2 blocks an SM, every load after the wait": (2, False),
         "4 blocks an SM (all of it), W's first rows before the wait": (4, True)}

# (name, rows N, columns K, rows a block R); "attend" has no weights
LAYER = (("qkv", 3 * C, C, 8), ("attend", 0, 0, 0), ("c_proj", C, C, 8), ("c_fc", F, C, 8), ("proj2", C, F, 2))

KERNELS = r'''
#include <cuda_fp16.h>
#include <cstdint>
#define KO 7                     // vector loads of W a thread: 200 or 800 vectors a row over 32 or 128 lanes

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {              // 8 halves . 8 halves, in float32
  const half2* x = reinterpret_cast<const half2*>(&a); const half2* y = reinterpret_cast<const half2*>(&b); float s = 0.f;
  #pragma unroll
  for (int e = 0; e < 4; ++e) { float2 p = __half22float2(x[e]), q = __half22float2(y[e]); s += p.x * q.x + p.y * q.y; }
  return s; }
// PDL: block until the kernels before this one have finished and their writes are visible
__device__ __forceinline__ void grid_dep_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
// kernel j of the step has started: the side prefetcher may move its frontier on (a relaxed store: it orders nothing)
__device__ __forceinline__ void mark(int* progress, int j) {
  if (blockIdx.x == 0 && threadIdx.x == 0) asm volatile("st.relaxed.gpu.global.s32 [%0], %1;" :: "l"(progress), "r"(j) : "memory"); }
// bytes of global memory into L2, issued by one thread (TMA); nothing waits for them but the grid's completion
__device__ __forceinline__ void prefetch_l2(const char* p, unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(p), "r"(bytes) : "memory"); }

// y = r + W x, W [N, K] fp16, R rows a block of 256 threads, TPR = 256 / R lanes a row, KO vectors of W a lane in
// registers. 32 registers a thread, so that 8 blocks fit an SM and every grid here is resident at once (the test checks).
// The loads of W are written after the wait; ptxas (nvcc 13) issues three before it (they are read-only) and the rest
// in the dot product -- as it schedules the model's kernels (kernels/_pdl.py). One epilogue for every linear (+ r): a
// gelu or a plain store made ptxas give the kernel 44-46 registers, and the epilogue's arithmetic is not what is timed.
template <int R>
__global__ void __launch_bounds__(256) sp_gemv(const half* __restrict__ w, const half* __restrict__ x, const half* __restrict__ r,
                                               half* __restrict__ y, int K, int* progress, int j) {
  mark(progress, j);
  __shared__ float red[8];
  const int TPR = 256 / R, row = blockIdx.x * R + threadIdx.x / TPR, lane = threadIdx.x % TPR, nv = K / 8;
  const uint4* wrow = reinterpret_cast<const uint4*>(w + (size_t)row * K);
  uint4 wr[KO];
  grid_dep_wait();
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) wr[i] = wrow[v]; }
  float acc = 0.f;
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) acc += dot8(wr[i], reinterpret_cast<const uint4*>(x)[v]); }
  for (int o = TPR < 32 ? TPR / 2 : 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
  if (TPR > 32) {                                       // across the row's warps
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
    __syncthreads();
    const int w0 = (threadIdx.x / TPR) * (TPR / 32); acc = 0.f;
    for (int i = 0; i < TPR / 32; ++i) acc += red[w0 + i]; }
  if (lane == 0) y[row] = __hadd(r[row], __float2half(acc)); }

// PDL: the next kernel of the stream may launch now (its blocks start wherever there is room left)
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// The same y = r + W x as a persistent grid that fills half of each SM (the launcher: 2 blocks of 128 threads an
// SM, at most 128 registers a thread), so that the next kernel's blocks can be resident while this one runs, with
// its own first loads of W in flight. R rows a group, TPR = 128 / R lanes a row; block b computes groups b, b + G,
// ... Each thread holds KO vectors of W for the group it computes and issues the next group's before computing
// it. The first group's loads come before the PDL wait -- pinned there by an empty asm that takes their values,
// else ptxas moves them after it -- and before the next kernel is let launch. x, which the kernel before writes, is
// read once after the wait with plain (coherent) loads: a thread's columns are the same in every group.
// a lane's KO vectors of one row of W (the row starting at element `at`)
template <int TPR>
__device__ __forceinline__ void load_row(uint4* dst, const half* __restrict__ w, size_t at, int lane, int nv) {
  const uint4* wrow = reinterpret_cast<const uint4*>(w + at);
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) dst[i] = wrow[v]; } }
// (PRE = false: the first group's loads after the wait, as the rest -- the persistent structure without the point)
template <int R, bool PRE>
__global__ void __launch_bounds__(128, 4) sp_gemv_pipe(const half* __restrict__ w, const half* x, const half* r,
                                                       half* y, int N, int K, int* progress, int j) {
  mark(progress, j);
  __shared__ float red[4];
  constexpr int TPR = 128 / R;
  const int sub = threadIdx.x / TPR, lane = threadIdx.x % TPR, nv = K / 8, groups = N / R;
  uint4 wa[KO], wb[KO], xr[KO];
  int g = blockIdx.x;
  if (PRE && g < groups) {
    load_row<TPR>(wa, w, (size_t)(g * R + sub) * K, lane, nv);
    #pragma unroll
    for (int i = 0; i < KO; ++i) asm volatile("" : "+r"(wa[i].x), "+r"(wa[i].y), "+r"(wa[i].z), "+r"(wa[i].w));
  }
  launch_dependents();
  grid_dep_wait();
  if (!PRE && g < groups) load_row<TPR>(wa, w, (size_t)(g * R + sub) * K, lane, nv);
  #pragma unroll
  for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) xr[i] = reinterpret_cast<const uint4*>(x)[v]; }
  for (; g < groups; g += gridDim.x) {                  // the same trip count for every thread of the block
    if (g + (int)gridDim.x < groups) load_row<TPR>(wb, w, (size_t)((g + gridDim.x) * R + sub) * K, lane, nv);
    float acc = 0.f;
    #pragma unroll
    for (int i = 0; i < KO; ++i) { int v = i * TPR + lane; if (v < nv) acc += dot8(wa[i], xr[i]); }
    for (int o = TPR < 32 ? TPR / 2 : 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
    if (TPR > 32) {                                     // across the row's warps
      if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
      __syncthreads();
      const int w0 = (threadIdx.x / TPR) * (TPR / 32); acc = 0.f;
      for (int i = 0; i < TPR / 32; ++i) acc += red[w0 + i];
      __syncthreads();                                  // red is written again by the next group
    }
    if (lane == 0) y[g * R + sub] = __hadd(r[g * R + sub], __float2half(acc));
    #pragma unroll
    for (int i = 0; i < KO; ++i) wa[i] = wb[i];
  }
}

// the attention's stand-in: 100 blocks of 64 threads wait, read q, spin `cycles`, write att[1600]. With pf_bytes, each
// block first prefetches its share of [pf, pf + pf_bytes) into L2 (the model's in-chain prefetch, after the wait).
__global__ void __launch_bounds__(64) sp_attend(const half* qkv, half* att, long long cycles, const char* pf, long long pf_bytes,
                                                int* progress, int j) {
  mark(progress, j);
  grid_dep_wait();
  if (pf_bytes && threadIdx.x == 0) {
    const long long share = (pf_bytes / gridDim.x + 15) / 16 * 16, a = blockIdx.x * share,
                    b = a + share < pf_bytes ? a + share : pf_bytes;
    for (long long o = a; o < b; o += 32768) prefetch_l2(pf + o, (unsigned)((b - o) < 32768 ? (b - o) : 32768));
  }
  const int i = blockIdx.x * 16 + threadIdx.x % 16;
  float v = __half2float(qkv[i]);
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) v = v * 0.999f + 0.001f;
  if (threadIdx.x < 16) att[i] = __float2half(v); }

// the side prefetcher: one thread a block; block b issues chunks b, b + G, ... of the step's weights w [total bytes],
// each once the frontier allows it: frontier = front[progress + 1] (front[0]: before the first kernel starts). It
// exits when its chunks are done, or when the last kernel (nk - 1) has started and the frontier stops short of them.
// A poll that spins for seconds traps (an error in Python) rather than hang the GPU.
__global__ void side_prefetch(const char* w, long long total, const long long* front, int nk, const int* progress,
                              long long chunk, int sleep_ns) {
  if (threadIdx.x) return;
  int seen = -2; long long frontier = -1, spins = 0;
  for (long long c = blockIdx.x; c * chunk < total; c += gridDim.x) {
    const long long a = c * chunk, b = a + chunk < total ? a + chunk : total;
    while (b > frontier) {
      int now; asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];" : "=r"(now) : "l"(progress) : "memory");
      if (now != seen) { seen = now; frontier = front[now + 1]; continue; }
      if (seen >= nk - 1) return;
      __nanosleep(sleep_ns);
      if (++spins > (1LL << 27)) __trap();
    }
    prefetch_l2(w + a, (unsigned)(b - a));
  } }
'''

LAUNCHERS = r'''
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#define STREAM at::cuda::getCurrentCUDAStream()
#define H(t) reinterpret_cast<half*>(t.data_ptr())
// launched with cudaLaunchKernelEx and the programmatic dependent launch attribute (kept by stream capture)
template <typename... P, typename... A> void launch_pdl(void (*k)(P...), int grid, int block, bool pdl, A... args) {
  cudaLaunchConfig_t cfg = {}; cfg.gridDim = dim3(grid); cfg.blockDim = dim3(block); cfg.stream = STREAM;
  cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1; cfg.attrs = at; cfg.numAttrs = pdl ? 1 : 0;
  cudaLaunchKernelEx(&cfg, k, args...); }
// w: a view of the flat weight buffer [N * K] fp16; R rows a block (8, or 2 for long rows)
void gemv(torch::Tensor w, int64_t N, int64_t K, int64_t R, torch::Tensor x, torch::Tensor r, torch::Tensor y,
          torch::Tensor progress, int64_t j, bool pdl) {
  TORCH_CHECK(R == 8 || R == 2, "no such instance");
  launch_pdl(R == 8 ? sp_gemv<8> : sp_gemv<2>, (int)(N / R), 256, pdl, (const half*)H(w), (const half*)H(x), (const half*)H(r), H(y),
             (int)K, progress.data_ptr<int>(), (int)j); }
// the persistent GEMV: per_sm blocks an SM (2: half of it); R rows a group (4, or 1 for long rows); pre: W's first
// group loaded before the wait
void gemv_pipe(torch::Tensor w, int64_t N, int64_t K, int64_t R, torch::Tensor x, torch::Tensor r, torch::Tensor y,
               torch::Tensor progress, int64_t j, bool pdl, int64_t per_sm, bool pre) {
  TORCH_CHECK(R == 4 || R == 1, "no such instance");
  int sms = 0; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device());
  auto k = R == 4 ? (pre ? sp_gemv_pipe<4, true> : sp_gemv_pipe<4, false>)
                  : (pre ? sp_gemv_pipe<1, true> : sp_gemv_pipe<1, false>);
  launch_pdl(k, (int)per_sm * sms, 128, pdl, (const half*)H(w), (const half*)H(x), (const half*)H(r), H(y), (int)N,
             (int)K, progress.data_ptr<int>(), (int)j); }
void attend(torch::Tensor qkv, torch::Tensor att, int64_t ns, torch::Tensor pf, int64_t pf_offset, int64_t pf_bytes,
            torch::Tensor progress, int64_t j, bool pdl) {
  int khz = 0; cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, qkv.get_device());
  launch_pdl(sp_attend, 100, 64, pdl, (const half*)H(qkv), H(att), (long long)ns * khz / 1000000,
             reinterpret_cast<const char*>(pf.data_ptr()) + pf_offset, (long long)pf_bytes, progress.data_ptr<int>(), (int)j); }
void side(torch::Tensor w, torch::Tensor front, torch::Tensor progress, int64_t blocks, int64_t chunk, int64_t sleep_ns) {
  side_prefetch<<<(int)blocks, 32, 0, STREAM>>>(reinterpret_cast<const char*>(w.data_ptr()), (long long)w.numel() * 2,
      reinterpret_cast<const long long*>(front.data_ptr<int64_t>()), (int)front.numel() - 1, progress.data_ptr<int>(),
      (long long)chunk, (int)sleep_ns); }
'''

CPP = """void gemv(torch::Tensor w, int64_t N, int64_t K, int64_t R, torch::Tensor x, torch::Tensor r, torch::Tensor y,
          torch::Tensor progress, int64_t j, bool pdl);
void attend(torch::Tensor qkv, torch::Tensor att, int64_t ns, torch::Tensor pf, int64_t pf_offset, int64_t pf_bytes,
            torch::Tensor progress, int64_t j, bool pdl);
void gemv_pipe(torch::Tensor w, int64_t N, int64_t K, int64_t R, torch::Tensor x, torch::Tensor r, torch::Tensor y,
               torch::Tensor progress, int64_t j, bool pdl, int64_t per_sm, bool pre);
void side(torch::Tensor w, torch::Tensor front, torch::Tensor progress, int64_t blocks, int64_t chunk, int64_t sleep_ns);"""
FUNCTIONS = ["gemv", "attend", "side", "gemv_pipe"]


def step_kernels(layers: int = LAYERS):
    """The step's kernels in order: (name, byte offset of its W in the flat buffer, bytes of W) -- the stand-in
    attention with no bytes, at the offset its successor's W starts."""
    out, offset = [], 0
    for _ in range(layers):
        for name, n, k, _r in LAYER:
            out.append((name, offset, 2 * n * k))
            offset += 2 * n * k
    return out


def frontiers(kernels, policy) -> list[int]:
    """front[0] (before the first kernel starts), then front[j + 1] for kernel j: how far into the weights (bytes)
    the side prefetcher may go while kernel j is the newest to have started. Policies:
        None        never ahead of nothing: the prefetcher only polls (its cost as a bystander)
        ("next", m) the end of the m-th weight matrix after kernel j's own (the stand-in's own: none, so its
                    next is c_proj's)
        ("bytes", b) b bytes past the end of kernel j's own W
    Never decreasing; the last kernel's is the end of the weights (so that nothing is left to issue)."""
    ends = [off + size for _name, off, size in kernels]
    weighted = [j for j, (_n, _o, size) in enumerate(kernels) if size]
    total = ends[-1]
    if policy is None:
        front = [0] * (len(kernels) + 1)
    else:
        kind, amount = policy
        front = []
        for j in range(-1, len(kernels)):
            own_end = 0 if j < 0 else ends[j]
            if kind == "bytes":
                front.append(min(total, own_end + amount))
            else:                                   # the m-th weighted kernel whose W starts at or after own_end
                later = [i for i in weighted if kernels[i][1] >= own_end]
                front.append(ends[later[amount - 1]] if len(later) >= amount else total)
    for j in range(1, len(front)):
        front[j] = max(front[j], front[j - 1])
    if policy is not None:
        front[-1] = total
    return front


def main():
    import torch
    from bench_weight_stream import build_extension, option, report

    from tinygpt2.bench import copy_bandwidth

    out_dir = option("out")
    ext = build_extension("bench_side_prefetch", "tinygpt2_side_prefetch", CPP, KERNELS + LAUNCHERS, FUNCTIONS)
    kernels = step_kernels()
    total = kernels[-1][1] + kernels[-1][2]
    torch.manual_seed(0)
    w = torch.empty(total // 2, device="cuda", dtype=torch.half)
    for i in range(0, w.numel(), 1 << 28):                              # random, small: no inf in the chain
        w[i:i + (1 << 28)].normal_(0, 0.02)
    xa, xb, att = (torch.randn(C, device="cuda", dtype=torch.half) for _ in range(3))
    qkv, h = torch.zeros(3 * C, device="cuda", dtype=torch.half), torch.zeros(F, device="cuda", dtype=torch.half)
    progress = torch.full((1,), -1, device="cuda", dtype=torch.int32)
    shape = {name: (n, k, r) for name, n, k, r in LAYER}
    view = lambda off, n, k: w[off // 2: off // 2 + n * k]

    # the GEMVs against torch, one layer's worth, alone (each launch its own stream order: PDL's wait is a no-op)
    for name, off, _size in kernels[:len(LAYER)]:
        if name == "attend":
            continue
        n, k, r = shape[name]
        x, res, y = torch.randn(k, device="cuda").half(), torch.randn(n, device="cuda").half(), torch.empty(n, device="cuda").half()
        ref = res.float() + view(off, n, k).view(n, k).float() @ x.float()
        ext.gemv(view(off, n, k), n, k, r, x, res, y, progress, 0, True)
        torch.cuda.synchronize()
        assert torch.allclose(y.float(), ref, rtol=1e-2, atol=2e-2), name
        for per_sm, pre in PIPES.values():
            y.zero_()
            ext.gemv_pipe(view(off, n, k), n, k, PIPE_ROWS[k], x, res, y, progress, 0, True, per_sm, pre)
            torch.cuda.synchronize()
            assert torch.allclose(y.float(), ref, rtol=1e-2, atol=2e-2), f"{name} (pipe {per_sm}, {pre})"

    def chain(in_chain_prefetch: bool, pdl: bool = True, pipe=None):
        for j, (name, off, _size) in enumerate(kernels):
            if name == "attend":                    # the model's: c_proj's W and a quarter of c_fc's, after the wait
                pf = 2 * C * C + 2 * F * C // 4 if in_chain_prefetch else 0
                ext.attend(qkv, att, ATTEND_NS, w, off, pf, progress, j, pdl)
                continue
            n, k, r = shape[name]
            # (x, r, y): qkv and c_fc add their own old output, so that every linear has the one epilogue
            x, res, y = {"qkv": (xa, qkv, qkv), "c_proj": (att, xa, xb), "c_fc": (xb, h, h), "proj2": (h, xb, xa)}[name]
            if pipe:                                # (blocks an SM, W's first group before the wait)
                ext.gemv_pipe(view(off, n, k), n, k, PIPE_ROWS[k], x, res, y, progress, j, pdl, *pipe)
            else:
                ext.gemv(view(off, n, k), n, k, r, x, res, y, progress, j, pdl)

    graphs = {}
    # keys: in-chain prefetch (True/False), "no pdl", or one of PIPES (the persistent GEMVs, with the in-chain prefetch)
    for pre, pdl in ((False, True), (True, True), ("no pdl", False), *((key, True) for key in PIPES)):
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            chain(pre is True or pre in PIPES, pdl, PIPES.get(pre))
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            chain(pre is True or pre in PIPES, pdl, PIPES.get(pre))
        graphs[pre] = g
    prefetch_stream = torch.cuda.Stream()

    def replay_us(pre: bool, front, blocks: int, sleep_ns: int, replays: int = 15) -> float:
        """Median us of one replay of the chain's graph, with the side prefetcher beside it (front) or not (None)."""
        times = []
        front_t = None if front is None else torch.tensor(front, device="cuda", dtype=torch.int64)
        for rep in range(3 + replays):
            progress.fill_(-1)
            ready = torch.cuda.Event()
            ready.record()
            if front_t is not None:
                prefetch_stream.wait_event(ready)
                with torch.cuda.stream(prefetch_stream):
                    ext.side(w, front_t, progress, blocks, CHUNK, sleep_ns)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graphs[pre].replay()
            b.record()
            torch.cuda.synchronize()
            if rep >= 3:
                times.append(a.elapsed_time(b) * 1e3)
        return statistics.median(times)

    bw = copy_bandwidth()
    layer_bytes = total / LAYERS
    rows = [("the chain alone", False, None, 0, 0),
            ("the model's in-chain prefetch (the stand-in: c_proj's W + a quarter of c_fc's)", True, None, 0, 0),
            ("+ side prefetcher, never ahead (a bystander), 1 block", False, frontiers(kernels, None), 1, 256),
            ("+ side prefetcher, 12 blocks, 10 MB past its own W", False, frontiers(kernels, ("bytes", 10 * MB)), 12, 256),
            ("+ side prefetcher, 16 blocks, 8 MB past its own W", False, frontiers(kernels, ("bytes", 8 * MB)), 16, 256),
            ("+ side prefetcher, 12 blocks, 10 MB, with the in-chain prefetch", True,
             frontiers(kernels, ("bytes", 10 * MB)), 12, 256),
            *((f"the chain of persistent GEMVs, {key}, in-chain prefetch", key, None, 0, 0) for key in PIPES),
            ("the chain without PDL, alone", "no pdl", None, 0, 0),
            ("the chain without PDL + side prefetcher, 12 blocks, 10 MB", "no pdl", frontiers(kernels, ("bytes", 10 * MB)),
             12, 256)]

    if "--pipe-only" in sys.argv[1:]:               # the persistent GEMVs against the chain's two baselines alone
        rows = [row for row in rows if row[3] == 0 and row[1] != "no pdl"]
    rounds = 4                                      # the rows in turn, round after round: drift hits them alike
    lines = [f"{torch.cuda.get_device_name()}; a gpt2-xl layer's skeleton x {LAYERS} in one CUDA graph (PDL), the "
             f"attention a {ATTEND_NS / 1000:.1f} us spin; {layer_bytes / 1e6:.1f} MB of weights a layer = "
             f"{layer_bytes / bw * 1e6:.2f} us at this run's copy bandwidth ({bw / 1e12:.2f} TB/s); each cell the "
             f"median of 15 replays; the rows measured in turn, {rounds} rounds\n",
             "| us a layer | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |",
             "|---|" + "---|" * rounds]
    us = {label: [] for label, *_ in rows}
    for _ in range(rounds):
        for label, pre, front, blocks, sleep_ns in rows:
            us[label].append(replay_us(pre, front, blocks, sleep_ns) / LAYERS)
    for label in us:
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in us[label]) + " |")
    report(lines, out_dir, "bench_side_prefetch.md")


if __name__ == "__main__":
    main()
