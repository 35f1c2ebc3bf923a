"""On the GPU machine: how fast can one kernel per weight matrix stream gpt2-xl's decode weights at all?

    PYTHONPATH=. python3 scripts/bench_weight_stream.py [--out=DIR]     (torch + nvcc; no TVM)
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
  3. the MLP (gelu(c_fc) then c_proj + residual) x 48 layers in one CUDA graph: two kernels a layer, against
     one persistent kernel a layer (every block resident, a grid-wide barrier between the two linears, its
     c_proj rows copied in by TMA before it waits at the barrier).

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
#define KO 7                     // vector loads of W a thread (gpt2-xl: 200 or 800 vectors a row / 32 or 128 lanes)

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {              // 8 halves . 8 halves, in float32
  const half2* x = reinterpret_cast<const half2*>(&a); const half2* y = reinterpret_cast<const half2*>(&b); float s = 0.f;
  #pragma unroll
  for (int e = 0; e < 4; ++e) { float2 p = __half22float2(x[e]), q = __half22float2(y[e]); s += p.x * q.x + p.y * q.y; }
  return s; }
__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v))); }
// a row's partial sums, TPR = 256 / R threads a row: warp shuffles, then shared memory across the row's warps
__device__ __forceinline__ float row_reduce(float acc, float* red, int TPR) {
  for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
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
    unsigned old = atomicAdd(arrived, 1u), target = (old / gridDim.x + 1) * gridDim.x, now;   // a counter that only grows
    do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(now) : "l"(arrived)); } while ((int)(now - target) < 0);
  }
  __syncthreads(); bar_wait(&bar, 1);
  acc = row_reduce(smem_dot(ws, h, F, 2, true), red, 128);
  if (threadIdx.x % 128 == 0) store(y, r, blockIdx.x * 2 + threadIdx.x / 128, acc, 1); }
'''
LAUNCHERS = r'''
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#define STREAM at::cuda::getCurrentCUDAStream()
#define IN(t) reinterpret_cast<const half*>(t.data_ptr())
#define OUT(t) reinterpret_cast<half*>(t.data_ptr())
template <typename F> void allow_smem(F f, int bytes) { cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes); }
void stream_read(torch::Tensor b, torch::Tensor out) {
  read_sum<<<132 * 8, 256, 0, STREAM>>>(reinterpret_cast<const uint4*>(b.data_ptr()), b.numel() * 2 / 16, out.data_ptr<float>()); }
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
'''
CPP = """void stream_read(torch::Tensor b, torch::Tensor out);
void gemv(torch::Tensor w, torch::Tensor x, torch::Tensor r, torch::Tensor y, int64_t mode, bool tma);
void prefetch(torch::Tensor w); void wait_ns(int64_t ns);
void mlp(torch::Tensor w1, torch::Tensor x, torch::Tensor h, torch::Tensor w2, torch::Tensor r, torch::Tensor y, torch::Tensor arrived);
int64_t mlp_blocks_resident(int64_t C);"""
FUNCTIONS = ["stream_read", "gemv", "prefetch", "wait_ns", "mlp", "mlp_blocks_resident"]
LAYERS = 48          # gpt2-xl


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


def main():
    out_dir = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--out=")), None)
    ext = load_inline("tinygpt2_weight_stream", CPP, cuda_sources=KERNELS + LAUNCHERS, functions=FUNCTIONS,
                      extra_cuda_cflags=["-O3", f"-arch=sm_{''.join(map(str, torch.cuda.get_device_capability()))}a"])
    cfg = PRESETS["gpt2-xl"]
    C, F = cfg.n_embd, cfg.n_inner
    torch.manual_seed(0)
    lines = [f"{torch.cuda.get_device_name()}; gpt2-xl fp16 shapes; kernel times from CUPTI, medians\n"]

    # --- 1. streaming reads, cold: one kernel per matrix ---
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

    # --- 3. the MLP x 48 in a CUDA graph: two kernels a layer, or one persistent ---
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    resident = ext.mlp_blocks_resident(C)
    assert resident * sms >= F // 8, f"the persistent kernel's {F // 8} blocks do not fit at once ({resident} an SM)"
    w1 = [torch.randn(F, C, device="cuda", dtype=torch.half) * 0.02 for _ in range(LAYERS)]
    w2 = [torch.randn(C, F, device="cuda", dtype=torch.half) * 0.02 for _ in range(LAYERS)]
    x, r = (torch.randn(C, device="cuda", dtype=torch.half) for _ in range(2))
    h, y = torch.empty(F, device="cuda", dtype=torch.half), torch.empty(C, device="cuda", dtype=torch.half)
    arrived = torch.zeros(1, device="cuda", dtype=torch.int32)
    ref_h = torch.nn.functional.gelu(w1[0].float() @ x.float(), approximate="tanh")
    ref_y = r.float() + w2[0].float() @ ref_h.half().float()
    variants = {"two kernels a layer": lambda i: (ext.gemv(w1[i], x, r, h, 0, False), ext.gemv(w2[i], h, r, y, 1, False)),
                "two kernels a layer, W by TMA": lambda i: (ext.gemv(w1[i], x, r, h, 0, True), ext.gemv(w2[i], h, r, y, 1, True)),
                "one persistent kernel a layer (TMA, grid barrier)": lambda i: ext.mlp(w1[i], x, h, w2[i], r, y, arrived)}
    lines += [f"| MLP x {LAYERS} layers in a CUDA graph ({4 * C * F / 1e6:.2f} MB a layer) | us a layer | TB/s |",
              "|---|---|---|"]
    for name, f in variants.items():
        h.zero_(); y.zero_()
        f(0)
        torch.cuda.synchronize()
        assert torch.allclose(h.float(), ref_h, rtol=1e-2, atol=2e-3) and torch.allclose(y.float(), ref_y, rtol=1e-2, atol=2e-2), name
        us = graph_us(lambda: [f(i) for i in range(LAYERS)]) / LAYERS
        lines.append(f"| {name} | {us:.2f} | {4 * C * F / us / 1e6:.2f} |")
    text = "\n".join(lines)
    print(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bench_weight_stream.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
