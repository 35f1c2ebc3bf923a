"""On the GPU machine: does a TVMScript kernel stream weights through a TMA ring as fast as the raw CUDA one?

    python3 scripts/bench_tvm_ring.py [--mb 81.92] [--stages 4] [--chunk 51200]     (after the device install)

docs/persistent_decode.md's design streams every weight matrix of a decode step through a ring of shared
memory that one thread a block refills by TMA (cp.async.bulk), the block waiting on an mbarrier a stage.
scripts/bench_weight_stream.py measured that ring in raw CUDA (its section 4: 81.92 MB at 3.6-3.9 TB/s, one
block of 1024 threads an SM, H200). This is the same ring written in TVMScript (`make_ring_read`, the T.ptx
spelling tests/test_cuda_compile.py checks) and built by TVM for sm_90a, so that a TVMScript persistent kernel
starts from a measured stream. Each thread adds up the fp16 values it reads of every chunk, so the kernel is
checked (against numpy, exactly: the values are small integers) before it is timed (TVM's time_evaluator,
medians, after a warm-up; a buffer larger than L2, so each pass reads HBM). Markdown on stdout.
"""

import argparse

import numpy as np

from tinygpt2.compile import build_cuda_kernel
from tinygpt2.tvm_shim import T, tvm


def make_ring_read(blocks: int, chunks: int, stages: int, chunk_bytes: int, threads: int):
    """x [blocks * chunks * CH] fp16 -> out [blocks, threads] fp32, CH = chunk_bytes / 2 elements a chunk.

    Block b reads its contiguous share x[b * chunks * CH : (b + 1) * chunks * CH], chunk c into stage c % stages
    of a ring in shared memory: thread 0 arms the stage's mbarrier with the chunk's byte count and issues one
    bulk copy (TMA) that completes on it; every thread waits for the barrier's phase c // stages, adds up its
    elements of the chunk (out[b, t] = sum over c, i of x[b, c, i * threads + t]), and once the whole block
    has (a block barrier) thread 0 refills the stage with chunk c + stages, after a proxy fence (the block's
    reads are generic-proxy accesses, the copy an async-proxy write)."""
    CH = chunk_bytes // 2
    assert chunk_bytes % 16 == 0 and CH % threads == 0, "a chunk: whole 16-byte units, whole rows of threads"

    @T.prim_func(s_tir=True)
    def ring_read(x: T.Buffer((blocks * chunks * CH,), "float16"), out: T.Buffer((blocks, threads), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for b in T.thread_binding(blocks, thread="blockIdx.x"):
            for t in T.thread_binding(threads, thread="threadIdx.x"):
                with T.sblock("ring"):
                    T.reads(x[b * chunks * CH:(b + 1) * chunks * CH])
                    T.writes(out[b, t])
                    buf = T.sblock_alloc_buffer((stages * CH,), "float16", scope="shared.dyn")  # > 48 KB
                    bar = T.sblock_alloc_buffer((stages,), "uint64", scope="shared")
                    ready = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                    acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    if t == 0:                                   # the barriers, then the first chunks in flight
                        for s in range(stages):
                            T.ptx.mbarrier.init.shared.b64(T.address_of(bar[s]), T.uint32(1))
                        for c in range(min(stages, chunks)):
                            T.ptx.mbarrier.arrive.expect_tx.shared.b64(T.address_of(bar[c]), T.uint32(chunk_bytes))
                            T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                                T.address_of(buf[c * CH]), T.address_of(x[(b * chunks + c) * CH]),
                                T.uint32(chunk_bytes), T.address_of(bar[c]))
                    T.tvm_storage_sync("shared")
                    acc[0] = T.float32(0)
                    for c in range(chunks):
                        ready[0] = T.uint32(0)
                        while ready[0] == T.uint32(0):
                            T.ptx.mbarrier.try_wait.parity.shared.b64(ready[0], T.address_of(bar[c % stages]),
                                                                      T.Cast("uint32", (c // stages) % 2))
                        for i in range(CH // threads):
                            acc[0] = acc[0] + T.Cast("float32", buf[(c % stages) * CH + i * threads + t])
                        T.tvm_storage_sync("shared")             # every thread has read the stage
                        if t == 0 and c + stages < chunks:
                            T.ptx.fence.proxy.async_.shared__cta()
                            T.ptx.mbarrier.arrive.expect_tx.shared.b64(T.address_of(bar[c % stages]),
                                                                       T.uint32(chunk_bytes))
                            T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                                T.address_of(buf[(c % stages) * CH]), T.address_of(x[(b * chunks + c + stages) * CH]),
                                T.uint32(chunk_bytes), T.address_of(bar[c % stages]))
                    out[b, t] = acc[0]

    return ring_read


def ring_read_ref(x: np.ndarray, blocks: int, threads: int) -> np.ndarray:
    """out[b, t]: the sum of block b's share of x over the elements thread t reads (every threads-th one)."""
    return x.astype(np.float64).reshape(blocks, -1, threads).sum(axis=1).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=81.92, help="bytes to read, MB (more than L2: each pass cold)")
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=51200, help="bytes a chunk")
    ap.add_argument("--threads", type=int, default=1024)
    a = ap.parse_args()
    dev = tvm.cuda(0)
    if not dev.exist:
        raise SystemExit("bench_tvm_ring: no CUDA GPU here (run it on the GPU machine)")
    blocks = dev.multi_processor_count
    chunks = max(1, round(a.mb * 1e6 / (blocks * a.chunk)))
    n = blocks * chunks * a.chunk // 2
    x = np.random.default_rng(0).integers(0, 4, n).astype("float16")      # sums stay exact in fp32
    lib = build_cuda_kernel(make_ring_read(blocks, chunks, a.stages, a.chunk, a.threads))
    xd = tvm.runtime.tensor(x, dev)
    out = tvm.runtime.tensor(np.zeros((blocks, a.threads), "float32"), dev)
    lib["main"](xd, out)
    assert np.array_equal(out.numpy(), ring_read_ref(x, blocks, a.threads)), "the TVMScript ring read wrong values"
    t = lib.mod.time_evaluator("main", dev, number=20, repeat=5, min_repeat_ms=0)(xd, out)
    us = float(np.median(t.results)) * 1e6
    print(f"| TVMScript TMA ring ({tvm.cuda(0).device_name}) | MB | blocks x threads | stages x chunk | us | TB/s |")
    print("|---|---|---|---|---|---|")
    print(f"| checked against numpy | {2 * n / 1e6:.2f} | {blocks} x {a.threads} | {a.stages} x {a.chunk / 1e3:.1f} KB "
          f"| {us:.2f} | {2 * n / us / 1e6:.2f} |")


if __name__ == "__main__":
    main()
