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
    table       int64 [M, 3]: the step's weight matrices in the order the chain reads them, (device address of
                what to prefetch, the matrix's bytes, bytes to prefetch); the matrix's bytes a multiple of 1 KiB
                (the marks count whole KiB).
    base        uint32: progress's value as the step begins (the executor keeps it: + the step's KiB a step).

    make_side_prefetch's grid, BLOCKS blocks of one working thread. For each matrix m with bytes to prefetch, each
    thread waits until the kernel before m has started (progress - base >= m's start in KiB), then issues its
    share of `cp.async.bulk.prefetch.L2`s of CHUNK bytes over table[m, 2] bytes from table[m, 0] on (round robin across
    the blocks) -- unless m's own kernel has started as well (the chain reads m already: skipped). The policy,
    which bytes of which matrices (PREFETCH, prefetch_plan), is the executor's table: data.

Measured first in raw CUDA on a gpt2-xl layer's skeleton, 48 layers in a CUDA graph (scripts/bench_side_prefetch.py,
H100, docs/results/bench_side_prefetch_h100.md, rows in turn, 4 rounds): 37.0 us a layer alone, 35.4 with the
model's in-chain prefetch (the attention prefetching c_proj's W and a quarter of c_fc's), **31.9 with this
prefetcher** at 12 blocks and 10 MB ahead (8 blocks or 24 ahead: slower; 1-4 blocks: slower than none -- too
few TMA units issuing, the lines arrive late and compete). A prefetcher that only polled cost nothing there.
In the model (the rule entry `side-prefetch`, in no preset), on an H100, the first version -- 10 MB ahead of the
newest mark, matrices already started not skipped -- was correct and slower: gpt2-xl decoded at 600 tok/s against
`fused`'s 651 (docs/results/side_prefetch_h100.md). A trace (the next session) showed why: each of its launches
ran 7-11 ms against a step's 1.6. Twelve TMA units prefetch ~0.4 TB/s, the chain reads ~2: the prefetcher fell
behind in the first layer and went on prefetching what the chain had read, into the steps after, its launches
queued one behind the other on its stream. (And the 625 tok/s measured with the prefetcher only polling was the
last launch's polls, until POLL_LIMIT, that the benchmark's final synchronization waited for: in the trace a
polling prefetcher cost the steps 0.25%.) Skipping started matrices, then this policy table: nine policies traced
(docs/results/trace_side_prefetch_h100.md, gpt2-xl's step, `fused` 1514-1517 us in the same loans). Prefetching
while a linear streams trades time between kernels: the next qkv's first 4 MiB during the MLP's c_proj take 0.89
us off qkv and put 1.08 on the c_proj (1526 us); 10 MB ahead of every mark, 1600. Only the attention's window has
HBM to spare, and attention_cluster's quarter of c_fc takes most of it: c_fc's second quarter from here, the
default below, 1511.5 us (12 blocks; 24: 1525, 48: 1733, the attention's clusters twice as long).

A poll that finds no progress for POLL_LIMIT reads gives up (the block exits): a step that never marks (a
mismatched base, an aborted step) costs the prefetcher's stream at most that, never the chain.
"""

from tinygpt2.tvm_shim import T, s_tir, tirx, walk

BLOCKS = 12                 # blocks issuing prefetches (one thread each; 24 or 48 slow the attention's clusters)
CHUNK = 32768               # bytes a bulk prefetch
MIB = 1 << 20
# the policy: for each kind of decode's weight matrices, which of its bytes to prefetch while the kernel before it
# runs, (from, bytes): `bytes` bytes from the fraction `from` of the matrix on. c_fc's first quarter is
# attention_cluster's (kernels/decode_cluster.py); the next part is this prefetcher's, while the attention's c_proj
# runs (H100, gpt2-xl, the best of the policies traced: see the module docstring)
PREFETCH = {"ln_1.c_attn": (0, 0), "attn.c_proj": (0, 0), "ln_2.c_fc": (1 / 4, 5 * MIB), "mlp.c_proj": (0, 0)}
POLL_LIMIT = 1 << 16        # reads of progress that find it unchanged before a block gives up (~10-20 ms, H100)
WARP = 32


def make_side_prefetch(n_mats: int, blocks: int = BLOCKS, chunk: int = CHUNK):
    """The prefetcher: table [n_mats, 3] int64 (address, bytes, bytes to prefetch from the address on), progress
    [1] uint32, base (uint32 scalar). Grid `blocks`, 32 threads (thread 0 works: one TMA unit an SM issues the
    block's chunks)."""
    M, B, CH = T.int64(n_mats), T.int64(blocks), T.int64(chunk)
    KIB = T.int64(1024)

    @T.prim_func(s_tir=True)
    def side_prefetch(table: T.Buffer((M, T.int64(3)), "int64"), progress: T.Buffer((T.int64(1),), "uint32"),
                      base: T.uint32):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding(B, thread="blockIdx.x"):
            for tx in T.thread_binding(T.int64(WARP), thread="threadIdx.x"):
                with T.sblock("side_prefetch"):
                    T.reads()
                    T.writes()
                    before = T.alloc_buffer((1,), "int64", scope="local")    # bytes of the step before matrix m
                    g = T.alloc_buffer((1,), "int64", scope="local")         # chunks issued before matrix m
                    now = T.alloc_buffer((1,), "uint32", scope="local")      # progress as last read
                    last = T.alloc_buffer((1,), "uint32", scope="local")     # ... and as read the poll before
                    polls = T.alloc_buffer((1,), "int32", scope="local")     # polls since progress last moved
                    if tx == T.int64(0):
                        before[0] = T.int64(0)
                        g[0] = T.int64(0)
                        polls[0] = 0
                        T.ptx.ld.relaxed.gpu.global_.u32(now[0], T.address_of(progress[0]))
                        for m in T.serial(M):
                            if table[m, 2] > T.int64(0):
                                # wait for the kernel before matrix m to start (progress reaches m's start) ...
                                while (T.Cast("int32", now[0] - base) < T.Cast("int32", before[0] // KIB)
                                       and polls[0] < POLL_LIMIT):
                                    last[0] = now[0]
                                    T.ptx.ld.relaxed.gpu.global_.u32(now[0], T.address_of(progress[0]))
                                    polls[0] = T.if_then_else(now[0] == last[0], polls[0] + 1, 0)
                                # ... then, unless m's own kernel has started too (the chain reads it already), this
                                # block's chunks of the table[m, 2] bytes: first, first + B, ... (the step's g-th
                                # prefetched chunk is block g % B's)
                                first = (bx + B - g[0] % B) % B                      # this block's first chunk
                                if polls[0] < POLL_LIMIT and T.Cast("int32", now[0] - base) < T.Cast(
                                        "int32", (before[0] + table[m, 1]) // KIB):
                                    for i in T.serial(T.max((table[m, 2] + CH - T.int64(1)) // CH - first + B
                                                            - T.int64(1), T.int64(0)) // B):
                                        off = (first + i * B) * CH
                                        T.ptx.cp.async_.bulk.prefetch.L2.global_(
                                            T.reinterpret("handle", table[m, 0] + off),
                                            T.Cast("uint32", T.min(CH, table[m, 2] - off)))
                                g[0] = g[0] + (table[m, 2] + CH - T.int64(1)) // CH
                            before[0] = before[0] + table[m, 1]

    return side_prefetch


def prefetch_plan(names: list[str], sizes: list[int], policy: dict | None = None) -> list[tuple[int, int]]:
    """(offset, bytes) of each matrix (named h.{i}.{kind}.weight, in read order) to prefetch, by the policy's
    (from, bytes) for its kind (PREFETCH): whole KiB, inside the matrix."""
    out = []
    for name, size in zip(names, sizes):
        start, nbytes = (PREFETCH if policy is None else policy)[name.split(".", 2)[2].rsplit(".", 1)[0]]
        offset = int(size * start) // 1024 * 1024
        out.append((offset, min(nbytes, size - offset) // 1024 * 1024))
    return out


def chunks_issued(sizes: list[int], prefetch: list[int], progress_kib: int, blocks: int = BLOCKS,
                  chunk: int = CHUNK) -> list[tuple[int, int, int]]:
    """make_side_prefetch's rule in Python, for the tests: a prefetcher that sees progress - base = progress_kib
    from its start issues these chunks (matrix, byte offset, block): those of each matrix m whose kernel before it
    has started and its own not, the first prefetch[m] bytes of what it prefetches of m (chunk offsets from
    there), in the order each block issues them."""
    out, before, g = [], 0, 0
    for m, (nbytes, pf) in enumerate(zip(sizes, prefetch)):
        if before // 1024 <= progress_kib < (before + nbytes) // 1024:
            out += [(m, c * chunk, (g + c) % blocks) for c in range(-(-pf // chunk))]
        g += -(-pf // chunk)
        before += nbytes
    return out


def with_progress_mark(func: tirx.PrimFunc, kib: int, n_outputs: int = 1) -> tirx.PrimFunc:
    """func (a hand-scheduled decode kernel: blockIdx.x, threadIdx.y/x loops under its root block) with one more input,
    progress [1] uint32, after its others (before its n_outputs outputs: call_tir's order), to which block 0's
    thread (0, 0) adds kib as the kernel starts, before anything else it does -- one relaxed atomic a kernel, that
    orders nothing (make_side_prefetch only reads how far the chain has got). The kernel's own code is untouched:
    the mark is a statement put first in its blockIdx.x loop, its thread loops and atomic taken from a template
    kernel of the same thread shape, its predicate (block 0, thread (0, 0)) made on the kernel's own block variable."""
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
