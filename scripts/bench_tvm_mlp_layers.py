"""On the GPU machine: every layer's MLP of gpt2-xl in one launch, written in TVMScript -- the raw CUDA
`mlp_layers` of scripts/bench_weight_stream.py (its fastest variant), built by TVM.

    python3 scripts/bench_tvm_mlp_layers.py [--layers 48]      (after the device install)

x <- x + W2 gelu(W1 x), L times, each layer's input the last one's output (the MLP of a decode step, without its
layernorm and biases). One block of 256 threads an SM, all resident for the whole launch:

  - block b owns rows [r1, r1 + n1) of every layer's W1 [F, C] and the same rows of W2T [F, C] (c_proj stored
    [in, out], HF Conv1D's own layout, in which those rows are contiguous). Thread 0 streams them, W1's then
    W2T's, layer after layer, through a ring of S stages of shared memory by TMA (cp.async.bulk into an
    mbarrier a stage); the ring runs on across layers, so the next layer's rows are coming in while the block
    waits at a layer's end;
  - a W1 chunk (R rows): h[row] = gelu(W1[row] . x), 16 threads a row, x from the block's copy in shared
    memory, h kept in shared memory (rounded to fp16 as a tensor would be);
  - a W2T chunk: thread t < C / 8 adds h[k] * W2T[k, 8t : 8t + 8] over the chunk's rows k into 8 registers:
    the block's partial c_proj of all C outputs, with no reduction across threads;
  - the layer's end: the partials added into yacc[l % 3] (float, red.global.add), then a grid-wide barrier
    (thread 0: an atom.release add, a loop of ld.acquire), then every block adds the sum into its copy of x,
    read through L2 (ld.global.cg: the block's L1 may hold the buffer from three layers ago) and zeroes its
    share of yacc[(l + 2) % 3] for later.

Checked against numpy (`mlp_layers_ref`: the same roundings) on 8 layers, then timed on `--layers` layers
(TVM's time_evaluator, median; 48 of these random layers overflow fp16, so the timed x starts small). Prints
Markdown: us a layer and the weights' rate, against the raw CUDA kernel's 14.7-14.9 us a layer (two kernels a
layer: 15.0-15.1; docs/results/bench_weight_stream_h200.md).

Measured (H200, 2026-12-04): first correct (relative error 7.6e-4 on 8 layers) but 25.26 us a layer (1.62 TB/s),
with 8 scalar float atomics a thread (red.global.add.f32) and the c_proj rows one at a time; then, as the raw CUDA
kernel does (two red.global.add.v4.f32 a thread; four rows' loads at once), correct (9.5e-4) and 14.20 us a layer
(2.88 TB/s, launches included) -- faster than the raw kernel's 14.7-14.9 and two kernels' 15.1-15.2 (CUPTI).
"""

import argparse

import numpy as np

from tinygpt2.compile import build_cuda_kernel
from tinygpt2.kernels.gelu import gelu_expr, gelu_ref
from tinygpt2.tvm_shim import T, tvm


def make_mlp_layers(L: int, C: int, F: int, G: int, stages: int = 4, chunk_bytes: int = 51200, threads: int = 256):
    """w1, w2t [L * F * C] fp16 (layer l's W1 [F, C] and W2.T [F, C] at l * F * C), x [C] fp16 (in: x_0, out:
    x_L), yacc [3 * C] fp32 (zeros), arrived [1] uint32 (a multiple of G) -> x. G blocks, all resident."""
    CH = chunk_bytes // 2                     # elements a stage
    R = CH // C                               # rows a chunk, of either matrix
    NV = C // 8                               # 16-byte vectors a row
    TPR = threads // R                        # threads a row of W1
    assert CH % C == 0 and C % 8 == 0 and NV <= threads and TPR <= 32 and 32 % TPR == 0
    assert F // G < 64, "a block's h lives in 64 floats of shared memory"
    S, NI = stages, -(-NV // TPR)             # NI: vectors of a W1 row a thread
    NSH = TPR.bit_length() - 1                # butterfly steps across a row's lanes
    XI = -(-C // threads)                     # elements of x a thread updates

    @T.macro(hygienic=False)
    def issue(g):                             # thread 0: chunk g of the block's stream into stage g % S
        T.ptx.mbarrier.arrive.expect_tx.shared.b64(
            T.address_of(bar[g % S]), T.Cast("uint32", T.min(R, n1 - ((g % per) % nc1) * R) * C * 2))
        if g % per < nc1:
            T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                T.address_of(ring[(g % S) * CH]), T.address_of(w1[((g // per) * F + r1 + (g % per) * R) * C]),
                T.Cast("uint32", T.min(R, n1 - (g % per) * R) * C * 2), T.address_of(bar[g % S]))
        else:
            T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                T.address_of(ring[(g % S) * CH]),
                T.address_of(w2t[((g // per) * F + r1 + (g % per - nc1) * R) * C]),
                T.Cast("uint32", T.min(R, n1 - (g % per - nc1) * R) * C * 2), T.address_of(bar[g % S]))

    @T.macro(hygienic=False)
    def wait(phase_bar, phase):               # every thread: until the barrier's phase `phase` completes
        ready[0] = T.uint32(0)
        while ready[0] == T.uint32(0):
            T.ptx.mbarrier.try_wait.parity.shared.b64(ready[0], T.address_of(phase_bar), T.Cast("uint32", phase))

    @T.prim_func(s_tir=True)
    def mlp_layers(w1: T.Buffer((L * F * C,), "float16"), w2t: T.Buffer((L * F * C,), "float16"),
                   x: T.Buffer((C,), "float16"), yacc: T.Buffer((3 * C,), "float32"),
                   arrived: T.Buffer((1,), "uint32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for b in T.thread_binding(G, thread="blockIdx.x"):
            for t in T.thread_binding(threads, thread="threadIdx.x"):
                with T.sblock("mlp"):
                    T.reads(w1[0:L * F * C], w2t[0:L * F * C], x[0:C], yacc[0:3 * C], arrived[0])
                    T.writes(x[0:C], yacc[0:3 * C], arrived[0])
                    ring = T.sblock_alloc_buffer((S * CH,), "float16", scope="shared.dyn")
                    xs = T.sblock_alloc_buffer((C,), "float16", scope="shared")
                    hl = T.sblock_alloc_buffer((64,), "float32", scope="shared")
                    bar = T.sblock_alloc_buffer((S + 1,), "uint64", scope="shared")
                    ready = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                    old = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                    now = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                    acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    part = T.sblock_alloc_buffer((8,), "float32", scope="local")    # y[8t : 8t + 8], this block's
                    wv = T.sblock_alloc_buffer((8,), "float16", scope="local")
                    xv = T.sblock_alloc_buffer((8,), "float16", scope="local")
                    sv = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    ys = T.sblock_alloc_buffer((XI,), "float32", scope="local")          # x's new values, a thread's
                    r1 = b * F // G
                    n1 = (b + 1) * F // G - r1                       # the block's rows
                    nc1 = (n1 + R - 1) // R                          # chunks a matrix
                    per = 2 * nc1                                    # chunks a layer
                    if t == 0:
                        for s in range(S + 1):
                            T.ptx.mbarrier.init.shared.b64(T.address_of(bar[s]), T.uint32(1))
                        T.ptx.fence.proxy.async_.shared__cta()
                        T.ptx.mbarrier.arrive.expect_tx.shared.b64(T.address_of(bar[S]), T.uint32(C * 2))
                        T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                            T.address_of(xs[0]), T.address_of(x[0]), T.uint32(C * 2), T.address_of(bar[S]))
                        for g in range(T.min(S, L * per)):
                            issue(g)
                    T.tvm_storage_sync("shared")
                    wait(bar[S], 0)
                    for e in range(8):
                        part[e] = T.float32(0)
                    for l in range(L):
                        for c in range(per):                         # chunk g = l * per + c of the block's stream
                            wait(bar[(l * per + c) % S], ((l * per + c) // S) % 2)
                            if c < nc1:                              # h = gelu(W1 x) for the chunk's rows
                                acc[0] = T.float32(0)
                                if c * R + t // TPR < n1:
                                    for i in T.unroll(NI):
                                        if t % TPR + i * TPR < NV:
                                            for e in T.vectorized(8):
                                                wv[e] = ring[((l * per + c) % S) * CH + (t // TPR) * C + (t % TPR + i * TPR) * 8 + e]
                                            for e in T.vectorized(8):
                                                xv[e] = xs[(t % TPR + i * TPR) * 8 + e]
                                            for e in T.unroll(8):
                                                acc[0] = acc[0] + T.Cast("float32", wv[e]) * T.Cast("float32", xv[e])
                                for k in T.unroll(NSH):              # the row's TPR lanes: a butterfly
                                    acc[0] = acc[0] + T.tvm_warp_shuffle_xor(
                                        T.uint32(0xFFFFFFFF), acc[0], (TPR // 2) >> k, 32, 32)
                                if t % TPR == 0 and c * R + t // TPR < n1:
                                    sv[0] = acc[0]
                                    hl[c * R + t // TPR] = T.Cast("float32", T.Cast("float16", gelu_expr(sv[0])))
                            elif t < NV:                             # part += h[k] W2T[k, 8t : 8t + 8]
                                for k0 in range((T.min(R, n1 - (c - nc1) * R) + 3) // 4):    # 4 rows' loads in flight
                                    for k1 in T.unroll(4):
                                        if k0 * 4 + k1 < T.min(R, n1 - (c - nc1) * R):
                                            for e in T.vectorized(8):
                                                wv[e] = ring[((l * per + c) % S) * CH + (k0 * 4 + k1) * C + t * 8 + e]
                                            for e in T.unroll(8):
                                                part[e] = part[e] + hl[(c - nc1) * R + k0 * 4 + k1] * T.Cast("float32", wv[e])
                            T.tvm_storage_sync("shared")             # the stage is read, h written: refill it
                            if t == 0 and l * per + c + S < L * per:
                                T.ptx.fence.proxy.async_.shared__cta()
                                issue(l * per + c + S)
                        # the layer's end: the block's partial into yacc[l % 3], then the grid-wide barrier
                        if t < NV:                                   # two vector float atomics (red: no value back)
                            for q in range(2):
                                T.ptx.red.global_.add.v4.f32(T.address_of(yacc[(l % 3) * C + t * 8 + q * 4]), part[q * 4],
                                                             part[q * 4 + 1], part[q * 4 + 2], part[q * 4 + 3])
                            for e in range(8):
                                part[e] = T.float32(0)
                        T.tvm_storage_sync("shared")
                        if t == 0:                                   # arrive (release), wait for the grid (acquire)
                            T.ptx.atom.release.gpu.global_.add.u32(old[0], T.address_of(arrived[0]), T.uint32(1))
                            T.ptx.ld.acquire.gpu.global_.u32(now[0], T.address_of(arrived[0]))
                            while T.Cast("int32", now[0] - (old[0] // G + T.uint32(1)) * G) < 0:
                                T.ptx.ld.acquire.gpu.global_.u32(now[0], T.address_of(arrived[0]))
                        T.tvm_storage_sync("shared")
                        # x += the sum (read through L2: this SM's L1 may hold yacc[l % 3] from three layers ago)
                        for i in T.unroll(XI):
                            if t + i * threads < C:
                                T.ptx.ld.global_.cg.f32(ys[i], T.address_of(yacc[(l % 3) * C + t + i * threads]))
                                ys[i] = T.Cast("float32", xs[t + i * threads] + T.Cast("float16", ys[i]))
                        T.tvm_storage_sync("shared")
                        for i in T.unroll(XI):
                            if t + i * threads < C:
                                xs[t + i * threads] = T.Cast("float16", ys[i])
                        for i in range((C // G + threads) // threads):   # zero this block's share of yacc[(l + 2) % 3]
                            if b * C // G + t + i * threads < (b + 1) * C // G:
                                yacc[((l + 2) % 3) * C + b * C // G + t + i * threads] = T.float32(0)
                        T.tvm_storage_sync("shared")
                    if b == 0:
                        for i in range(XI):
                            if t + i * threads < C:
                                x[t + i * threads] = xs[t + i * threads]

    return mlp_layers


def mlp_layers_ref(w1: np.ndarray, w2t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """w1, w2t [L, F, C] fp16, x [C] fp16: x <- x + fp16(W2 fp16(gelu(W1 x))) per layer, in float32 sums."""
    x = x.astype(np.float16)
    for a, bt in zip(w1, w2t):
        h = gelu_ref(a.astype(np.float32) @ x.astype(np.float32)).astype(np.float16)
        y = (h.astype(np.float32) @ bt.astype(np.float32)).astype(np.float16)
        x = (x.astype(np.float32) + y.astype(np.float32)).astype(np.float16)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=48)
    a = ap.parse_args()
    dev = tvm.cuda(0)
    if not dev.exist:
        raise SystemExit("bench_tvm_mlp_layers: no CUDA GPU here (run it on the GPU machine)")
    C, F, G = 1600, 6400, dev.multi_processor_count
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((a.layers, F, C), np.float32) * 0.02).astype(np.float16)
    w2t = (rng.standard_normal((a.layers, F, C), np.float32) * 0.02).astype(np.float16)
    x0 = rng.standard_normal(C, np.float32).astype(np.float16)
    rows = []
    for L in (8, a.layers):
        lib = build_cuda_kernel(make_mlp_layers(L, C, F, G))
        args = [tvm.runtime.tensor(w1[:L].reshape(-1), dev), tvm.runtime.tensor(w2t[:L].reshape(-1), dev),
                tvm.runtime.tensor(x0 if L == 8 else (x0 * np.float16(1e-3)), dev),
                tvm.runtime.tensor(np.zeros(3 * C, np.float32), dev), tvm.runtime.tensor(np.zeros(1, np.uint32), dev)]
        if L == 8:
            lib["main"](*args)
            ref = mlp_layers_ref(w1[:8], w2t[:8], x0).astype(np.float32)
            err = np.abs(args[2].numpy().astype(np.float32) - ref).max() / np.abs(ref).max()
            assert err < 1e-2, f"the TVMScript MLP, 8 layers: relative error {err:.2e}"
            rows.append(f"| checked against numpy, 8 layers: relative error {err:.1e} | | |")
            continue
        # the timed calls run back to back, each from the x the last one left (its values do not change the time;
        # they overflow after a few calls). Each call leaves the last layer's sum in yacc[(L - 1) % 3], which the
        # next call's layer 0 zeroes before its layer 2 adds into it -- only if L is a multiple of 3
        assert L % 3 == 0, "timed calls reuse yacc: L a multiple of 3 leaves it as the next call needs"
        t = lib.mod.time_evaluator("main", dev, number=10, repeat=5, min_repeat_ms=0)(*args)
        us = float(np.median(t.results)) * 1e6 / L
        rows.append(f"| every layer in one launch, {G} blocks of 256, a ring of 4 x 51.2 KB | {us:.2f} | "
                    f"{4 * C * F / us / 1e6:.2f} |")
    print(f"| TVMScript MLP x {a.layers} layers of gpt2-xl in one launch ({dev.device_name}) | us a layer | TB/s |")
    print("|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
