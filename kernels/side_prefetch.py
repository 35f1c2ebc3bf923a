"""Decode's weights prefetched into L2 by a kernel on a second stream, beside the step's chain (CUDA sm_90+).

A decode step reads every weight once, one kernel per matrix, and each kernel waits for the one before it. HBM
idles at every kernel boundary (~1.7 us a kernel on an H100) and while the attention, bound by latency, runs
(~6 us a gpt2-xl layer). Prefetches issued from inside the chain pay little, because a grid completes only once
its prefetches have landed: every byte one kernel prefetches delays the kernels after it. This prefetcher is
outside the chain -- launched on another stream, nothing waits for it -- and follows the chain's progress:

    progress    uint32 [1]: KiB of weights whose kernels have started, summed since the tensor was made (it
                wraps; only differences are read). Each weight-reading kernel of the step adds its own W's KiB
                as it starts (block 0, thread 0, one `red.relaxed.gpu.add`: with_progress_mark below), so
                after the mark progress - base = the cumulative end, in KiB, of that kernel's W in the step.
    table       int64 [M, 2]: the step's weight matrices in the order the chain reads them, (device address,
                bytes); bytes a multiple of 1 KiB (the marks count whole KiB).
    base        uint32: progress's value as the step begins (the executor keeps it: + the step's KiB a step).

    make_side_prefetch's grid, BLOCKS blocks of one working thread: chunk g of the step's weights (CHUNK bytes,
    in read order; a matrix's last chunk shorter) is block g % BLOCKS's. Its thread waits until
        int32(progress - base) + AHEAD_KIB >= the chunk's end in KiB
    then issues one `cp.async.bulk.prefetch.L2` of it. So the prefetch runs AHEAD_KIB past the end of the W of
    the newest kernel to have started, through the attention's window and every kernel boundary. The chunks of a
    matrix whose own kernel has started (progress - base >= the matrix's end) are skipped: the chain reads them
    already, and a prefetcher that issued them anyway falls behind the chain for good (see below).

Measured first in raw CUDA on a gpt2-xl layer's skeleton, 48 layers in a CUDA graph (scripts/bench_side_prefetch.py,
H100, docs/results/bench_side_prefetch_h100.md, rows in turn, 4 rounds): 37.0 us a layer alone, 35.4 with the
model's in-chain prefetch (the attention prefetching c_proj's W and a quarter of c_fc's), **31.9 with this
prefetcher** at 12 blocks and 10 MB ahead (8 blocks or 24 ahead: slower; 1-4 blocks: slower than none -- too
few TMA units issuing, the lines arrive late and compete). A prefetcher that only polled cost nothing there.
In the model (the rule entry `side-prefetch`, in no preset), on an H100, the first version, which did not skip
matrices already started, was correct and slower: gpt2-xl decoded at 600 tok/s against `fused`'s 651
(docs/results/side_prefetch_h100.md). A trace (the next session) showed why: each of its launches ran 7-11 ms
against a step's 1.6. Twelve TMA units prefetch ~0.4 TB/s, the chain reads ~2: the prefetcher fell behind in
the first layer and went on prefetching what the chain had read, into the steps after, its launches queued one
behind the other on its stream. (And the 625 tok/s measured with the prefetcher only polling was the last
launch's polls, until POLL_LIMIT, that the benchmark's final synchronization waited for: in the trace a polling
prefetcher cost the steps 0.25%.)

A poll that finds no progress for POLL_LIMIT reads gives up (the block exits): a step that never marks (a
mismatched base, an aborted step) costs the prefetcher's stream at most that, never the chain.
"""

from tinygpt2.tvm_shim import T, s_tir, tirx, walk

BLOCKS = 12                 # blocks issuing prefetches (one thread each): the H100 skeleton's best (8: slower)
CHUNK = 32768               # bytes a bulk prefetch
AHEAD_KIB = 10 * 1024       # how far past the newest started kernel's W the prefetch may run (KiB)
POLL_LIMIT = 1 << 16        # reads of progress a block makes before it gives up (~20-40 ms on an H100)
WARP = 32


def make_side_prefetch(n_mats: int, blocks: int = BLOCKS, chunk: int = CHUNK, ahead_kib: int = AHEAD_KIB):
    """The prefetcher: table [n_mats, 2] int64 (address, bytes), progress [1] uint32, base (uint32 scalar).
    Grid `blocks`, 32 threads (thread 0 works: one TMA unit an SM issues the block's chunks)."""
    M, B, CH = T.int64(n_mats), T.int64(blocks), T.int64(chunk)
    AHEAD = T.int32(ahead_kib)

    @T.prim_func(s_tir=True)
    def side_prefetch(table: T.Buffer((M, T.int64(2)), "int64"), progress: T.Buffer((T.int64(1),), "uint32"),
                      base: T.uint32):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding(B, thread="blockIdx.x"):
            for tx in T.thread_binding(T.int64(WARP), thread="threadIdx.x"):
                with T.sblock("side_prefetch"):
                    T.reads()
                    T.writes()
                    before = T.alloc_buffer((1,), "int64", scope="local")    # bytes of the step before matrix m
                    g = T.alloc_buffer((1,), "int64", scope="local")         # chunks of the step before matrix m
                    c = T.alloc_buffer((1,), "int64", scope="local")         # a chunk of matrix m
                    now = T.alloc_buffer((1,), "uint32", scope="local")      # progress as last read
                    polls = T.alloc_buffer((1,), "int32", scope="local")
                    if tx == T.int64(0):
                        before[0] = T.int64(0)
                        g[0] = T.int64(0)
                        polls[0] = 0
                        for m in T.serial(M):
                            # progress anew at each matrix: once matrix m's own kernel has started (its mark: the end
                            # of m, in KiB), the chain is reading it, and prefetching it would only add traffic --
                            # the prefetcher skips it, and so never falls behind the chain into later steps
                            T.ptx.ld.relaxed.gpu.global_.u32(now[0], T.address_of(progress[0]))
                            if T.Cast("int32", now[0] - base) < T.Cast("int32", (before[0] + table[m, 1]
                                                                               + T.int64(1023)) // T.int64(1024)):
                                # this block's chunks of m: c = c0, c0 + B, ... (chunk g[0] + c of the step is block
                                # (g[0] + c) % B's)
                                for i in T.serial(T.max((((table[m, 1] + CH - T.int64(1)) // CH)
                                                         - (bx + B - g[0] % B) % B + B - T.int64(1)) // B,
                                                        T.int64(0))):
                                    c[0] = (bx + B - g[0] % B) % B + i * B
                                    # wait until the chunk's end (KiB into the step) is within AHEAD of the newest mark
                                    while (T.Cast("int32", now[0] - base) + AHEAD
                                           < T.Cast("int32", (before[0] + T.min(c[0] * CH + CH, table[m, 1])
                                                              + T.int64(1023)) // T.int64(1024))
                                           and polls[0] < POLL_LIMIT):
                                        T.ptx.ld.relaxed.gpu.global_.u32(now[0], T.address_of(progress[0]))
                                        polls[0] = polls[0] + 1
                                    if polls[0] < POLL_LIMIT and T.Cast("int32", now[0] - base) < T.Cast(
                                            "int32", (before[0] + table[m, 1] + T.int64(1023)) // T.int64(1024)):
                                        T.ptx.cp.async_.bulk.prefetch.L2.global_(
                                            T.reinterpret("handle", table[m, 0] + c[0] * CH),
                                            T.Cast("uint32", T.min(CH, table[m, 1] - c[0] * CH)))
                            g[0] = g[0] + (table[m, 1] + CH - T.int64(1)) // CH
                            before[0] = before[0] + table[m, 1]

    return side_prefetch


def chunks_allowed(sizes: list[int], progress_kib: int, blocks: int = BLOCKS, chunk: int = CHUNK,
                   ahead_kib: int = AHEAD_KIB) -> list[tuple[int, int, int]]:
    """make_side_prefetch's rule in Python, for the tests: with progress - base = progress_kib, the chunks
    (matrix, byte offset, block) the prefetcher may issue now -- within AHEAD of the mark, of matrices whose
    kernels have not started -- in the order each block issues them."""
    out, before, g = [], 0, 0
    for m, nbytes in enumerate(sizes):
        started = progress_kib >= -(-(before + nbytes) // 1024)       # m's own kernel has marked: skipped
        for c in range(-(-nbytes // chunk)):
            end_kib = -(-(before + min(c * chunk + chunk, nbytes)) // 1024)
            if not started and progress_kib + ahead_kib >= end_kib:
                out.append((m, c * chunk, g % blocks))
            g += 1
        before += nbytes
    return out


def with_progress_mark(func: tirx.PrimFunc, kib: int, n_outputs: int = 1) -> tirx.PrimFunc:
    """func (a hand-scheduled decode kernel: blockIdx.x, threadIdx.y/x loops under its root block) with one more
    input, progress [1] uint32, after its others (before its n_outputs outputs: call_tir's order), to which block 0's thread (0, 0) adds kib as the kernel starts, before
    anything else it does -- one relaxed atomic a kernel, that orders nothing (make_side_prefetch only reads
    how far the chain has got). The kernel's own code is untouched: the mark is a statement put first in its
    blockIdx.x loop, its thread loops and atomic taken from a template kernel of the same thread shape, its
    predicate (block 0, thread (0, 0)) made on the kernel's own block variable."""
    root = func.body.block                                  # s_tir: the root block
    bx_loop = root.body
    assert isinstance(bx_loop, tirx.For) and bx_loop.thread_binding.thread_tag == "blockIdx.x", bx_loop
    extents = {}                                            # thread tag -> extent, of the first loop bound to it

    def on_for(loop):
        if loop.thread_binding is not None:
            extents.setdefault(loop.thread_binding.thread_tag, loop.extent)

    walk(bx_loop.body, tirx.For, on_for)
    TY, TX = extents.get("threadIdx.y", T.int64(1)), extents["threadIdx.x"]
    KIB = T.uint32(kib)

    @T.prim_func(s_tir=True)
    def template(progress: T.Buffer((T.int64(1),), "uint32")):
        for bx in T.thread_binding(T.int64(1), thread="blockIdx.x"):
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("progress_mark"):
                        T.reads()
                        T.writes()
                        T.ptx.red.relaxed.gpu.global_.add.u32(T.address_of(progress[0]), KIB)

    t_ty = template.body.block.body.body
    t_tx = t_ty.body
    zero = lambda v: tirx.EQ(v, tirx.const(0, "int64"))     # the factories' loop variables are int64
    realize = s_tir.SBlockRealize(t_tx.body.iter_values,
                                  tirx.all(zero(bx_loop.loop_var), zero(t_ty.loop_var), zero(t_tx.loop_var)),
                                  t_tx.body.block)
    rebuilt = lambda loop, body: tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding,
                                          loop.annotations)
    mark = rebuilt(t_ty, rebuilt(t_tx, realize))
    new_root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                            rebuilt(bx_loop, tirx.SeqStmt([mark, bx_loop.body])), root.init, root.alloc_buffers,
                            root.match_buffers, root.annotations)
    params = list(func.params)
    params.insert(len(params) - n_outputs, template.params[0])
    return tirx.PrimFunc(params, s_tir.SBlockRealize([], True, new_root), func.ret_type, func.attrs)
