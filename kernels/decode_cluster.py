"""Decode's attention as CUDA thread-block clusters, 4 blocks per head (one token), in two kernels:
make_decode_cluster (ln_1 + c_attn + the attention, rule entry `decode-cluster`, in no preset) and
make_attention_cluster (the attention alone after ln_linear_qkv, `attention-cluster`, in preset `fused`; at the
end of this docstring). First the former:

    q, k, v = rstd * (W' @ x - mu * s) + b'       (ln_1 folded into c_attn: ln_linear.py's fold_layernorm)
    k_cache[h, pos] = k[h],  v_cache[h, pos] = v[h]
    out[0, h*D + d] = sum_{j <= pos} softmax_j(q[h] . k_j / sqrt(D)) v_j[d]

    x [1, C], W' [3C, C], b' [3C], s [3C] (float32), k_cache, v_cache [H, n_ctx, D] (in place), pos [1] int32
      ->  out [1, C]                                    fp16 only, D = 64; accumulated in float32

The chain ln_linear_qkv -> decode_attention (chunks, merge) of `fused-decode` crosses SMs twice through L2
and two kernel boundaries; on an H100 it costs gpt2-xl 13.5 us a layer, 6.27 of them after qkv's end
(docs/results/README.md). Here the head's own blocks compute its q, k and v and attend at once, exchanging
values through distributed shared memory (DSMEM), which never leaves the cluster's SMs. Block b is rank
r = b % 4 of head h = b // 4's cluster (launched as clusters of 4 by the binding to clusterCtaIdx.x):

  1. thread 0 copies the block's 48 rows of W' (head rows r, r + 4, ..., 188 + r of its 192 q, k, v rows) into
     shared memory by TMA, a bulk copy a row, one mbarrier per 16 rows; every thread copies its share of the
     cached K and V rows of the block's keys (a quarter of pos + 1) into shared memory. Neither is written by
     any kernel of the step, so both are issued before the PDL wait.
  2. wait (PDL); x into shared memory, its mean and variance (block reductions).
  3. a warp a row: W' . x from shared memory, summed over the warp, the layernorm's epilogue and bias,
     rounded to fp16; lanes 0-3 store the value into q/k/v of every block of the cluster (mapa + st.shared::
     cluster). Cluster barrier.
  4. attention over the block's keys, a key a thread: s = q . k / 8, the block's max m and sum l of exp(s - m),
     o = sum exp(s - m) v in 8 groups of 64 threads; (m, l, o) stored into rank 0 through DSMEM; the block
     holding key pos appends the new k, v to the cache. Cluster barrier.
  5. rank 0 merges the 4 parts: out = sum_r e^(m_r - M) o_r / sum_r e^(m_r - M) l_r.

Measured first as raw CUDA (scripts/bench_head_cluster.py, H100): 12.46 us a layer against 13.5 for the three
kernels; the attention after the stream ~2.7 us, but 100 blocks on 100 of 132 SMs stream c_attn ~1.6 us
slower than a GEMV over every SM. In the model (rule entry `decode-cluster`, H100, gpt2-xl fp16, CUDA graph,
docs/results/trace_decode_h100_decode_cluster.md) it is correct (logits 1.38e-3 / 1.52e-3 against
transformers) and **no faster than `fused`**: 1667.8 us a step against 1666.8-1667.2. Where it lets the
attention's c_proj launch decides that: at once (kept), the kernel takes 13.86 us and c_proj 1.98 after it
(c_proj's blocks, on the 32 SMs the clusters leave, load its weights meanwhile and slow the stream); as its
blocks exit, 12.54 and 3.39 (1677.0 us a step); once W is read, 14.05 and 1.95 (1680.0). The bias and row
sums of a warp's rows loaded before the wait took it from 14.43 to 13.86 us (1700.9 -> 1667.8 us a step).
Limits: head_dim 64; fp16 (48 rows of W' in fp32 would overflow shared memory); H * 4 blocks of 512 threads,
one an SM; shared memory 48 C + 4 n_ctx halves and ~5 KB, which fits an sm_90 block (227 KB) up to C = 1600
at n_ctx = 1024.

make_attention_cluster keeps that kernel's attention and drops its c_attn: ln_linear_qkv computes q, k and v as in
`fused`, and the cluster kernel (256 threads a block, a key a thread, n_ctx up to 1024) reads the head's from
qkv after the PDL wait. Before the wait each block's thread 0 copies the block's cached K rows, contiguous in the
cache, by one TMA bulk copy and its V rows by another (no registers held, every byte in flight at once; the
register copy of decode_cluster, not measured here, goes through 33 registers a thread). It replaces decode_attention's two kernels (chunks of 64 keys,
a merge reading their partial results through L2) by one, and ln_linear_qkv lets it launch at once, so that its
blocks are resident and their copies run while qkv streams. On an H100 (gpt2-xl fp16, in the CUDA graph;
docs/results/trace_decode_h100_attention_cluster.md) the attention takes 3.46 us a layer after qkv against
4.80 + 1.44, qkv 8.10 against 7.23 (the rows' 1.6 MB share HBM with its weights), the step 1572.4 us against
1667.6-1667.9; launched at qkv's exit instead, 5.57 us and 1632.8. On an H200 gpt2-xl 1292.2 against 1404.0,
gpt2 188.9 against 208.5.

After its wait, with HBM idle until c_fc (the attention and c_proj wait on latencies, c_proj's weights are in),
the kernel also brings the first quarter of the layer's c_fc weights into L2, a bulk prefetch a block, so that
c_fc finds them there. The grid completes only once they have landed, which delays c_proj and c_fc behind it:
a trade, measured by how much is prefetched (gpt2-xl, H100, us a layer against none, PREFETCH_FRACTION below):
a quarter -0.86 (c_fc 8.83 -> 7.42, the kernel 3.49 -> 3.71, c_proj 2.11 -> 2.37), all of it +1.64. With a
quarter in every layer, gpt2-xl's step 1571.0 -> 1514.0 us, gpt2's 211.2 -> 207.3
(docs/results/trace_decode_h100_prefetch_fc.md).

Its step 5 hands rank 0 the parts without a second cluster barrier: a cluster barrier's release is, on sm_90, a
MEMBAR.ALL.GPU in every thread (SASS, nvcc 13.0), a wait for the thread's stores to reach the whole GPU, on the
critical path. Instead each block stores its part into rank 0 by st.async, every store counted (complete_tx) on
an mbarrier of rank 0, which rank 0 alone waits on; the other blocks exit (MERGE_BY_ASYNC_STORES below: gpt2-xl's
attention 4.06 -> 3.30 us a layer on an H100, the step 1457 -> 1428 us).
"""

import math

import numpy as np

from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import T

from ._dtypes import ACC, F32_MIN
from ._pdl import flags as pdl_flags

CLUSTER = 4                                  # blocks a head
THREADS = 512                                # decode_cluster: 16 warps a block, 3 of W' rows a warp
D_HEAD = 64


def _check(dtype: str, head_dim: int, name: str):
    if dtype != "float16" or head_dim != D_HEAD:
        raise RuleError(f"{name}: float16 and head_dim {D_HEAD} only (got {dtype}, {head_dim})")


class _HeadAttention:
    """What both kernels share: a head's attention split over the CL blocks of its cluster (steps 1's K and V
    rows, 4 and 5 of the module docstring), as hygienic macros over the caller's buffers. big holds the block's
    cached K rows at k_off and V rows after them (halves); the head's q, k, v are in qkv (float32, shared)."""

    def __init__(self, n_head: int, head_dim: int, n_ctx: int, dtype: str, threads: int, k_off: int):
        H, D, P, CL, NTH = n_head, head_dim, n_ctx, CLUSTER, threads
        NW = NTH // 32
        KB = -(-P // CL)                          # keys a block at most
        NG = NTH // D                             # groups of 64 threads in p . v
        assert KB <= NTH, "a key a thread"
        K_OFF, V_OFF = k_off, k_off + KB * D
        scale = T.float32(1.0 / math.sqrt(D))
        lowest = T.float32(F32_MIN)
        self.KB, self.NG, self.NW, self.big = KB, NG, NW, k_off + 2 * KB * D   # big: halves

        @T.macro(hygienic=False)
        def warp_sum(v, i):                       # v[i] summed over the warp (every lane gets it)
            for k in T.unroll(5):
                v[i] = v[i] + T.tvm_warp_shuffle_xor(T.uint32(0xFFFFFFFF), v[i], 16 >> k, 32, 32)

        @T.macro(hygienic=False)
        def warp_max(v, i):
            for k in T.unroll(5):
                v[i] = T.max(v[i], T.tvm_warp_shuffle_xor(T.uint32(0xFFFFFFFF), v[i], 16 >> k, 32, 32))

        @T.macro                                  # hygienic: warp_sum and warp_max resolve here, not in the caller
        def block_reduce(v, nv, is_max, t, red):  # v[0:nv] combined (max or sum) over the block, into every thread's v
            for i in T.unroll(nv):                # a warp's by shuffles, then the NW warps' through shared memory
                if is_max:
                    warp_max(v, i)
                else:
                    warp_sum(v, i)
            T.tvm_storage_sync("shared")          # red's last values read by every warp before they are overwritten
            if t % 32 == 0:
                for i in T.unroll(nv):
                    red[(t // 32) * nv + i] = v[i]
            T.tvm_storage_sync("shared")
            for i in T.unroll(nv):
                v[i] = red[i]
                for k in T.unroll(NW - 1):
                    if is_max:
                        v[i] = T.max(v[i], red[(k + 1) * nv + i])
                    else:
                        v[i] = v[i] + red[(k + 1) * nv + i]

        @T.macro
        def dsmem_store(addr, dst, rank, value):  # dst: a shared float32 element, as block `rank` of the cluster has it
            T.ptx.mapa.shared__cluster.u32(addr[0], T.cuda.cvta_generic_to_shared(T.address_of(dst)),
                                           T.Cast("uint32", rank))
            T.ptx.st.shared__cluster.f32(addr[0], value)

        @T.macro
        def async_store(addr, dst, mbar, value):  # dst, mbar: rank 0's, as this block has them; addr: 2 registers
            T.ptx.mapa.shared__cluster.u32(addr[0], T.cuda.cvta_generic_to_shared(T.address_of(dst)), T.uint32(0))
            T.ptx.mapa.shared__cluster.u32(addr[1], T.cuda.cvta_generic_to_shared(T.address_of(mbar[0])),
                                           T.uint32(0))
            T.ptx.st_async.shared__cluster.mbarrier__complete_tx__bytes.f32(addr[0], value, addr[1])

        @T.macro
        def cluster_sync():                       # every thread: arrive (release), wait (acquire)
            T.ptx.barrier.cluster.arrive.release.aligned()
            T.ptx.barrier.cluster.wait.acquire.aligned()

        @T.macro
        def arrive_and_wait(t, first, wait_pdl, launch=True):  # first: the activation read first
            """Arrive at the cluster barrier (this block started, its DSMEM targets zeroed); with PDL (wait_pdl, a
            Python bool), let the next kernel (the attention's c_proj) launch at once (launch; else it launches as
            this grid completes), then wait for the kernels before this one. The activation read coherently
            (_pdl.read_coherently: an asm statement takes its address)."""
            T.ptx.barrier.cluster.arrive.release.aligned()
            if wait_pdl:
                if t == 0:
                    T.ptx.prefetch.global_.L2(first)
                if launch:
                    T.ptx.griddepcontrol.launch_dependents()
                T.ptx.griddepcontrol.wait()

        @T.macro
        def load_kv(t, h, j0, nk, pos, big, k_cache, v_cache):
            """The cached K and V rows of the block's keys [j0, j0 + nk), j < pos, into shared memory (every
            thread a 16-byte vector of each at a time). No kernel of the step writes them: callable before the wait."""
            for i in range(-(-(KB * 8) // NTH)):
                if t + i * NTH < nk * 8 and j0 + (t + i * NTH) // 8 < pos[0]:
                    for e in T.vectorized(8):
                        big[K_OFF + (t + i * NTH) * 8 + e] = k_cache[h, j0 + (t + i * NTH) // 8,
                                                                     ((t + i * NTH) % 8) * 8 + e]
                    for e in T.vectorized(8):
                        big[V_OFF + (t + i * NTH) * 8 + e] = v_cache[h, j0 + (t + i * NTH) // 8,
                                                                     ((t + i * NTH) % 8) * 8 + e]

        @T.macro
        def copy_kv(t, h, j0, nk, pos, big, bar, k_cache, v_cache):
            """The same rows by TMA: thread 0 copies the block's cached K rows j0 .. min(j0 + nk, pos) - 1, contiguous
            in the cache, in one bulk copy, and their V rows in another, both counted by the mbarrier bar (a phase
            of their bytes); no registers held, every byte in flight at once. Wait with wait_copies."""
            if t == 0:
                T.ptx.mbarrier.init.shared.b64(T.address_of(bar[0]), T.uint32(1))
                T.ptx.fence.proxy.async_.shared__cta()
                T.ptx.mbarrier.arrive.expect_tx.shared.b64(
                    T.address_of(bar[0]), T.Cast("uint32", T.max(0, T.min(j0 + nk, pos[0]) - j0) * D * 2 * 2))
                if T.min(j0 + nk, pos[0]) > j0:
                    T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                        T.address_of(big[K_OFF]), T.address_of(k_cache[h, j0, 0]),
                        T.Cast("uint32", (T.min(j0 + nk, pos[0]) - j0) * D * 2), T.address_of(bar[0]))
                    T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                        T.address_of(big[V_OFF]), T.address_of(v_cache[h, j0, 0]),
                        T.Cast("uint32", (T.min(j0 + nk, pos[0]) - j0) * D * 2), T.address_of(bar[0]))

        @T.macro
        def wait_copies(bar, ready):              # every thread: until the mbarrier's first phase completes
            ready[0] = T.uint32(0)
            while ready[0] == T.uint32(0):
                T.ptx.mbarrier.try_wait.parity.shared.b64(ready[0], T.address_of(bar[0]), T.uint32(0))

        @T.macro
        def merge(t, po, pml, acc, stat):        # the CL parts' (m, l, o[t]) into acc = (sum e^(m_r - M) o_r, ... l_r)
            stat[3] = lowest
            for c in T.unroll(CL):
                stat[3] = T.max(stat[3], pml[c * 2])
            acc[0] = T.float32(0)
            acc[1] = T.float32(0)
            for c in T.unroll(CL):
                acc[0] = acc[0] + po[c * D + t] * T.exp(pml[c * 2] - stat[3])
                acc[1] = acc[1] + pml[c * 2 + 1] * T.exp(pml[c * 2] - stat[3])

        @T.macro
        def attend(t, r, h, n, j0, nk, pos, big, qkv, p, part, po, pml, red, acc, stat, wv, addr,
                   k_cache, v_cache, out, everywhere=False, by_async_stores=False, mbar=None):
            """4. attention over the block's keys, 5. rank 0 merges (the module docstring). Starts with the head's
            q, k, v in qkv, visible to every thread, and every block of the cluster started. everywhere (a Python
            bool): every block gets every part and merges them itself, into out = its shared o [D] (float32, the
            value rounded to dtype as the kernel's output would be), instead of rank 0 into out[0, h*D:(h+1)*D].
            by_async_stores (a Python bool, not with everywhere): the parts go to rank 0 by st.async, each store
            counted on rank 0's mbarrier mbar (initialized with one arrival, visible to the cluster), and rank 0
            waits on it alone: no second cluster barrier (see MERGE_BY_ASYNC_STORES); addr holds two registers."""
            # 4. key j0 + t, its row in shared memory (j < pos) or the new one
            acc[0] = lowest
            if t < nk:
                acc[1] = T.float32(0)
                for i in T.unroll(D // 8):                     # vector (i + t) % 8: the rows, 128 bytes
                    for e in T.vectorized(8):                  # apart, share no bank in a phase
                        wv[e] = big[K_OFF + t * D + ((i + t) % 8) * 8 + e]
                    for e in T.unroll(8):
                        acc[1] = acc[1] + qkv[((i + t) % 8) * 8 + e] * T.if_then_else(
                            j0 + t < pos[0], T.Cast(ACC, wv[e]), qkv[D + ((i + t) % 8) * 8 + e])
                acc[0] = acc[1] * scale
            stat[2] = acc[0]
            block_reduce(acc, 1, True, t, red)
            stat[3] = acc[0]                                    # m
            acc[0] = T.if_then_else(t < nk, T.exp(stat[2] - stat[3]), T.float32(0))
            if t < KB:
                p[t] = acc[0]
            block_reduce(acc, 1, False, t, red)
            stat[2] = acc[0]                                    # l
            acc[1] = T.float32(0)                               # group t // D: keys t // D, + NG, ...
            for jj in T.serial((nk - t // D + NG - 1) // NG):
                acc[1] = acc[1] + p[t // D + jj * NG] * T.if_then_else(
                    j0 + t // D + jj * NG < pos[0],
                    T.Cast(ACC, big[V_OFF + (t // D + jj * NG) * D + t % D]),
                    qkv[2 * D + t % D])
            part[t] = acc[1]
            T.tvm_storage_sync("shared")
            if t < D:
                acc[1] = T.float32(0)
                for g in T.unroll(NG):
                    acc[1] = acc[1] + part[g * D + t]
                if by_async_stores:                            # into rank 0, counted on its mbarrier
                    async_store(addr, po[r * D + t], mbar, acc[1])
                    if t == 0:
                        async_store(addr, pml[r * 2], mbar, stat[3])
                        async_store(addr, pml[r * 2 + 1], mbar, stat[2])
                else:
                    for c in T.unroll(CL if everywhere else 1):    # into rank 0, or (everywhere) every rank
                        dsmem_store(addr, po[r * D + t], c, acc[1])
                        if t == 0:
                            dsmem_store(addr, pml[r * 2], c, stat[3])
                            dsmem_store(addr, pml[r * 2 + 1], c, stat[2])
                if nk > 0 and j0 + nk == n:                     # the block holding key pos appends it
                    k_cache[h, pos[0], t] = T.Cast(dtype, qkv[D + t])
                    v_cache[h, pos[0], t] = T.Cast(dtype, qkv[2 * D + t])
            # 5. rank 0 merges (everywhere: every rank, for itself)
            if not by_async_stores:
                cluster_sync()
            if everywhere:
                if t < D:
                    merge(t, po, pml, acc, stat)
                    out[t] = T.Cast(ACC, T.Cast(dtype, acc[0] / acc[1]))
            else:
                if r == 0 and t < D:
                    if by_async_stores:                         # once every part's bytes have landed
                        if t == 0:
                            T.ptx.mbarrier.arrive.expect_tx.shared.b64(T.address_of(mbar[0]),
                                                                       T.uint32(CL * (D + 2) * 4))
                        addr[0] = T.uint32(0)                   # (addr: free here) the wait's flag
                        while addr[0] == T.uint32(0):           # acquire at the cluster's scope: the parts' bytes
                            T.ptx.mbarrier.try_wait.parity.acquire.cluster.shared.b64(addr[0],
                                                                                      T.address_of(mbar[0]),
                                                                                      T.uint32(0))
                    merge(t, po, pml, acc, stat)
                    out[0, h * D + t] = T.Cast(dtype, acc[0] / acc[1])

        self.warp_sum, self.block_reduce, self.dsmem_store, self.cluster_sync = (warp_sum, block_reduce,
                                                                                 dsmem_store, cluster_sync)
        self.load_kv, self.copy_kv, self.wait_copies, self.attend = load_kv, copy_kv, wait_copies, attend
        self.arrive_and_wait = arrive_and_wait


def make_decode_cluster(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float16", eps: float = 1e-5,
                        pdl: str | None = None):
    """The kernel in this module's docstring. pdl: one of kernels/_pdl.py's MODES (or None: an ordinary launch);
    in every mode it lets the next kernel (the attention's c_proj) launch at once, as decode_attention does."""
    _check(dtype, head_dim, "decode-cluster")
    H, D, C, P = n_head, head_dim, n_head * head_dim, n_ctx
    CL, NTH, NW = CLUSTER, THREADS, THREADS // 32
    NR = 3 * D // CL                          # rows of W' a block (48)
    RPW = -(-NR // NW)                        # rows a warp (3)
    NV = C // 8                               # 16-byte vectors a row
    NL = -(-NV // 32)                         # ... a lane
    XI = -(-C // NTH)                         # elements of x a thread
    assert C % 8 == 0 and NR % NW == 0
    ha = _HeadAttention(H, D, P, dtype, NTH, NR * C)   # the dynamic shared buffer: W' rows, then K and V rows
    KB, NG, BIG = ha.KB, ha.NG, ha.big
    inv_c, eps_ = T.float32(1.0 / C), T.float32(eps)
    wait_pdl = pdl_flags(pdl)[0]

    def c_attn_row(r, h, rr):                 # c_attn's row of block row rr: head h's row r + CL * rr of its q, k, v
        return ((r + CL * rr) // D) * C + h * D + (r + CL * rr) % D

    @T.prim_func(s_tir=True)
    def decode_cluster(x: T.Buffer((1, C), dtype), w: T.Buffer((3 * C, C), dtype), b: T.Buffer((3 * C,), dtype),
                       w_sum: T.Buffer((3 * C,), ACC), k_cache: T.Buffer((H, P, D), dtype),
                       v_cache: T.Buffer((H, P, D), dtype), pos: T.Buffer((1,), "int32"),
                       out: T.Buffer((1, C), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for r in T.thread_binding(CL, thread="clusterCtaIdx.x"):          # launched as clusters of CL blocks
            for bx in T.thread_binding(H * CL, thread="blockIdx.x"):
                for t in T.thread_binding(NTH, thread="threadIdx.x"):
                    with T.sblock("decode_cluster"):
                        T.reads(x[0, 0:C], w[0:3 * C, 0:C], b[0:3 * C], w_sum[0:3 * C], k_cache[0:H, 0:P, 0:D],
                                v_cache[0:H, 0:P, 0:D], pos[0])
                        T.writes(k_cache[0:H, 0:P, 0:D], v_cache[0:H, 0:P, 0:D], out[0, 0:C])
                        big = T.sblock_alloc_buffer((BIG,), dtype, scope="shared.dyn")
                        xs = T.sblock_alloc_buffer((C,), dtype, scope="shared")
                        qkv = T.sblock_alloc_buffer((3 * D,), ACC, scope="shared")   # the head's q, k, v
                        red = T.sblock_alloc_buffer((2 * NW,), ACC, scope="shared")
                        p = T.sblock_alloc_buffer((KB,), ACC, scope="shared")
                        part = T.sblock_alloc_buffer((NG * D,), ACC, scope="shared")
                        po = T.sblock_alloc_buffer((CL * D,), ACC, scope="shared")    # rank 0: each part's o
                        pml = T.sblock_alloc_buffer((CL * 2,), ACC, scope="shared")   # ... and (m, l)
                        bar = T.sblock_alloc_buffer((RPW,), "uint64", scope="shared")
                        ready = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                        addr = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                        acc = T.sblock_alloc_buffer((2,), ACC, scope="local")
                        stat = T.sblock_alloc_buffer((4,), ACC, scope="local")       # mean, rstd, m, l
                        bs = T.sblock_alloc_buffer((RPW * 2,), ACC, scope="local")   # b', s of the warp's rows
                        wv = T.sblock_alloc_buffer((8,), dtype, scope="local")
                        xv = T.sblock_alloc_buffer((8,), dtype, scope="local")
                        h = bx // CL
                        nrows = (3 * D - r + CL - 1) // CL                   # head rows r, r + CL, ... < 3D
                        n = pos[0] + 1                                      # keys, the new one included
                        per = (n + CL - 1) // CL
                        j0 = r * per                                        # the block's keys [j0, j0 + nk)
                        nk = T.max(0, T.min(n, j0 + per) - j0)
                        # what other blocks of the cluster store into (DSMEM), zeroed first: TVM sees no other write
                        # of them, and without one its storage planner would let them share memory with buffers
                        # this block still uses while the stores arrive (it did: po with p and part)
                        if t < 3 * D:
                            qkv[t] = T.float32(0)
                        if t < CL * D:
                            po[t] = T.float32(0)
                        if t < CL * 2:
                            pml[t] = T.float32(0)
                        # 1. W' rows by TMA (thread 0), the cached keys' K and V rows (every thread)
                        if t == 0:
                            for i in range(RPW):
                                T.ptx.mbarrier.init.shared.b64(T.address_of(bar[i]), T.uint32(1))
                            T.ptx.fence.proxy.async_.shared__cta()
                            for i in range(RPW):
                                T.ptx.mbarrier.arrive.expect_tx.shared.b64(
                                    T.address_of(bar[i]), T.Cast("uint32", T.max(0, T.min(NW, nrows - NW * i)) * C * 2))
                                for rr in range(NW * i, T.min(NW * i + NW, nrows)):
                                    T.ptx.cp.async_.bulk.shared__cluster.global_.mbarrier__complete_tx__bytes(
                                        T.address_of(big[rr * C]),
                                        T.address_of(w[c_attn_row(r, h, rr), 0]),
                                        T.uint32(C * 2), T.address_of(bar[i]))
                        ha.load_kv(t, h, j0, nk, pos, big, k_cache, v_cache)
                        # the bias and row sum of the warp's rows, which the epilogue needs after the dot product:
                        # weights, so loaded before the wait, their latency passing under W's copies
                        for i in T.unroll(RPW):
                            bs[i * 2] = T.Cast(ACC, b[c_attn_row(r, h, T.min(t // 32 + NW * i, nrows - 1))])
                            bs[i * 2 + 1] = w_sum[c_attn_row(r, h, T.min(t // 32 + NW * i, nrows - 1))]
                        ha.arrive_and_wait(t, T.address_of(x[0, 0]), wait_pdl)
                        # 2. x, its mean and rstd
                        acc[0] = T.float32(0)
                        acc[1] = T.float32(0)
                        for i in T.unroll(XI):
                            if t + i * NTH < C:
                                xs[t + i * NTH] = x[0, t + i * NTH]
                                acc[0] = acc[0] + T.Cast(ACC, x[0, t + i * NTH])
                                acc[1] = acc[1] + T.Cast(ACC, x[0, t + i * NTH]) * T.Cast(ACC, x[0, t + i * NTH])
                        ha.block_reduce(acc, 2, False, t, red)
                        stat[0] = acc[0] * inv_c
                        stat[1] = T.rsqrt(acc[1] * inv_c - stat[0] * stat[0] + eps_)
                        T.ptx.barrier.cluster.wait.aligned()                # every block of the cluster started
                        # 3. a warp a row: q, k, v into every block of the cluster
                        for i in T.unroll(RPW):
                            if t // 32 + NW * i < nrows:
                                ready[0] = T.uint32(0)
                                while ready[0] == T.uint32(0):
                                    T.ptx.mbarrier.try_wait.parity.shared.b64(ready[0], T.address_of(bar[i]),
                                                                              T.uint32(0))
                                acc[0] = T.float32(0)
                                for k in T.unroll(NL):
                                    if t % 32 + 32 * k < NV:
                                        for e in T.vectorized(8):
                                            wv[e] = big[(t // 32 + NW * i) * C + (t % 32 + 32 * k) * 8 + e]
                                        for e in T.vectorized(8):
                                            xv[e] = xs[(t % 32 + 32 * k) * 8 + e]
                                        for e in T.unroll(8):
                                            acc[0] = acc[0] + T.Cast(ACC, wv[e]) * T.Cast(ACC, xv[e])
                                ha.warp_sum(acc, 0)
                                if t % 32 < CL:                             # lane c: into rank c's q, k, v
                                    ha.dsmem_store(addr, qkv[r + CL * (t // 32 + NW * i)], t % 32, T.Cast(ACC, T.Cast(
                                        dtype, stat[1] * (acc[0] - stat[0] * bs[i * 2 + 1]) + bs[i * 2])))
                        ha.cluster_sync()
                        ha.attend(t, r, h, n, j0, nk, pos, big, qkv, p, part, po, pml, red, acc, stat, wv, addr,
                                  k_cache, v_cache, out)

    return decode_cluster


ATTENTION_THREADS = 256                      # attention_cluster: a key a thread, n_ctx up to CLUSTER * 256
ATTENTION_MAX_CTX = CLUSTER * ATTENTION_THREADS
# attention_cluster prefetches this fraction of c_fc's rows into L2 (1/4: 5.12 MB for gpt2-xl). gpt2-xl on an
# H100, us a layer against none, two loans (docs/results/trace_decode_h100_prefetch_fc.md): 1/8 -0.51,
# 3/16 -0.80, 1/4 -0.86 / -0.87, 3/8 -0.67, 1/2 -0.23, all +1.64
PREFETCH_FRACTION = 4
# how attention_cluster's blocks hand rank 0 their parts. False: stores into its shared memory, then a cluster
# barrier (arrive.release / wait.acquire) -- on sm_90 the release is a MEMBAR.ALL.GPU in every thread of the
# cluster (SASS, nvcc 13.0), which waits for the thread's stores so far (the cache append's among them) to reach
# the whole GPU, on the critical path after the attention. True: each store an st.async counted on an mbarrier
# of rank 0 (complete_tx), which rank 0 alone waits on with acquire at the cluster's scope; the other blocks
# exit once their stores are issued. No MEMBAR in the kernel after the PDL wait. Measured (H100, gpt2-xl fp16, one
# loan; docs/results/attention_async_merge_h100.md): the attention 4.06 -> 3.30 us a layer after qkv, its c_proj
# 1.92 -> 2.02, the step in the CUDA graph 1457.8 / 1455.9 -> 1428.3 us; decode 683 / 683 -> 698 / 698 tok/s,
# alternating. Kept
MERGE_BY_ASYNC_STORES = True
# (Tried with it, and removed: the cluster barrier every block passes first arrived at relaxed -- its release is the
# kernel's last MEMBAR.ALL.GPU, before the PDL wait -- with the DSMEM targets not zeroed. On the H100 (thirtieth
# session) it was wrong, greedy tokens 12/40 at gpt2-xl's widths, and slower: the attention 3.39 -> 4.26 us a layer,
# the step 1430.2 -> 1442.3 us; docs/results/head_kernel_h100.md.)


def make_attention_cluster(n_head: int, head_dim: int, n_ctx: int, n_inner: int, dtype: str = "float16",
                           pdl: str | None = None):
    """Decode's attention alone (after ln_linear_qkv), as steps 1 (K and V rows only), 4 and 5 of this module's
    docstring: a cluster of 4 blocks per head, the parts merged through DSMEM in rank 0 (stored there by st.async
    on its mbarrier, MERGE_BY_ASYNC_STORES) -- one kernel where decode_attention has two (chunks, merge), and no
    partial results through L2.

        qkv [1, 3C], k_cache, v_cache [H, n_ctx, D] (in place), pos [1] int32, w_fc [n_inner, C]  ->  out [1, C]

    w_fc is the layer's c_fc weights (ln_2 folded in, as ln_linear_fc_gelu takes them), only prefetched: once
    its wait is over, each block has the first quarter of their rows brought into L2 (PREFETCH_FRACTION).
    pdl as make_decode_cluster's (it lets the attention's c_proj launch at once)."""
    _check(dtype, head_dim, "attention-cluster")
    H, D, C, P, F = n_head, head_dim, n_head * head_dim, n_ctx, n_inner
    CL, NTH = CLUSTER, ATTENTION_THREADS
    if P > ATTENTION_MAX_CTX:
        raise RuleError(f"attention-cluster: a key a thread, so n_ctx up to {ATTENTION_MAX_CTX} (got {P})")
    ha = _HeadAttention(H, D, P, dtype, NTH, 0)          # the dynamic shared buffer: K rows, then V rows
    KB, NG, NW, BIG = ha.KB, ha.NG, ha.NW, ha.big
    wait_pdl = pdl_flags(pdl)[0]
    PF_ROWS = F // PREFETCH_FRACTION // (H * CL)         # c_fc's rows a block prefetches (gpt2 to xl: 16)
    PF_THREAD = NTH - 32                                 # the last warp's first thread: it loads no q, k, v
    MERGE_ASYNC = MERGE_BY_ASYNC_STORES

    @T.prim_func(s_tir=True)
    def attention_cluster(qkv_in: T.Buffer((1, 3 * C), dtype), k_cache: T.Buffer((H, P, D), dtype),
                          v_cache: T.Buffer((H, P, D), dtype), pos: T.Buffer((1,), "int32"),
                          w_fc: T.Buffer((F, C), dtype), out: T.Buffer((1, C), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for r in T.thread_binding(CL, thread="clusterCtaIdx.x"):          # launched as clusters of CL blocks
            for bx in T.thread_binding(H * CL, thread="blockIdx.x"):
                for t in T.thread_binding(NTH, thread="threadIdx.x"):
                    with T.sblock("attention_cluster"):
                        T.reads(qkv_in[0, 0:3 * C], k_cache[0:H, 0:P, 0:D], v_cache[0:H, 0:P, 0:D], pos[0],
                                w_fc[0:F, 0:C])
                        T.writes(k_cache[0:H, 0:P, 0:D], v_cache[0:H, 0:P, 0:D], out[0, 0:C])
                        big = T.sblock_alloc_buffer((BIG,), dtype, scope="shared.dyn")
                        qkv = T.sblock_alloc_buffer((3 * D,), ACC, scope="shared")   # the head's q, k, v
                        red = T.sblock_alloc_buffer((NW,), ACC, scope="shared")
                        p = T.sblock_alloc_buffer((KB,), ACC, scope="shared")
                        part = T.sblock_alloc_buffer((NG * D,), ACC, scope="shared")
                        po = T.sblock_alloc_buffer((CL * D,), ACC, scope="shared")    # rank 0: each part's o
                        pml = T.sblock_alloc_buffer((CL * 2,), ACC, scope="shared")   # ... and (m, l)
                        bar = T.sblock_alloc_buffer((1,), "uint64", scope="shared")
                        mbar = T.sblock_alloc_buffer((1,), "uint64", scope="shared")  # rank 0's: the parts
                        ready = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                        addr = T.sblock_alloc_buffer((2,), "uint32", scope="local")
                        acc = T.sblock_alloc_buffer((2,), ACC, scope="local")
                        stat = T.sblock_alloc_buffer((4,), ACC, scope="local")       # -, -, m, l
                        wv = T.sblock_alloc_buffer((8,), dtype, scope="local")
                        h = bx // CL
                        n = pos[0] + 1                                      # keys, the new one included
                        per = (n + CL - 1) // CL
                        j0 = r * per                                        # the block's keys [j0, j0 + nk)
                        nk = T.max(0, T.min(n, j0 + per) - j0)
                        if t < CL * D:                                      # DSMEM targets, zeroed first
                            po[t] = T.float32(0)
                        if t < CL * 2:
                            pml[t] = T.float32(0)
                        ha.copy_kv(t, h, j0, nk, pos, big, bar, k_cache, v_cache)
                        if MERGE_ASYNC and t == 0:                          # one arrival: rank 0's own, with its
                            T.ptx.mbarrier.init.shared.b64(T.address_of(mbar[0]), T.uint32(1))   # expect_tx
                            T.ptx.fence.mbarrier_init.release.cluster()     # seen by the cluster's st.async
                        T.tvm_storage_sync("shared")                        # the mbarriers initialized for all
                        ha.arrive_and_wait(t, T.address_of(qkv_in[0, 0]), wait_pdl, True)
                        if t < 3 * D:                                       # the head's q, k, v
                            qkv[t] = T.Cast(ACC, qkv_in[0, (t // D) * C + h * D + t % D])
                        # c_fc's next: while the rest of this kernel and c_proj wait on latencies, HBM would idle;
                        # the block's PF_ROWS rows of c_fc's first quarter into L2, one bulk prefetch (after the
                        # wait: before it, these bytes would share HBM with qkv's). The grid completes only once
                        # they have landed, so more rows delay c_proj and c_fc after it (docstring above)
                        if PF_ROWS > 0 and t == PF_THREAD:
                            T.ptx.cp.async_.bulk.prefetch.L2.global_(T.address_of(w_fc[bx * PF_ROWS, 0]),
                                                                     T.uint32(PF_ROWS * C * 2))
                        ha.wait_copies(bar, ready)                          # the K and V rows landed
                        T.tvm_storage_sync("shared")
                        T.ptx.barrier.cluster.wait.aligned()                # every block of the cluster started
                        ha.attend(t, r, h, n, j0, nk, pos, big, qkv, p, part, po, pml, red, acc, stat, wv, addr,
                                  k_cache, v_cache, out, False, MERGE_ASYNC, mbar)

    return attention_cluster


# whether attention_proj_cluster lets the kernel after it (c_fc, with its weights loaded before its wait) launch at
# once, as attention_cluster does its c_proj, or as it completes (c_fc's weight stream then leaves the attention's
# latencies alone: launched early, the next kernels' streams slowed it before, docs/rules.md's pdl-decode). Early
# is faster (H100, gpt2-xl's step 1522.9 against 1552.6 us; docs/results/attention_proj_preload_h100.md)
PROJ_LAUNCH_EARLY = True


def make_attention_proj_cluster(n_head: int, head_dim: int, n_ctx: int, n_inner: int, dtype: str = "float16",
                                pdl: str | None = None):
    """make_attention_cluster with the attention's c_proj in it, split over the heads (rule entry `attention-proj`,
    an experiment in no preset): the residual stream x is updated in place,

        x[0, j] += sum_h ( b[j] if h == 0 ) + sum_d o_h[d] * W[j, h*D + d]       (o_h: the head's attention, fp16)

        qkv [1, 3C], k_cache, v_cache [H, n_ctx, D] (in place), pos [1] int32, w_fc [n_inner, C], W [C, C], b [C],
        x [1, C] (in place: the residual stream that ln_linear_qkv read)

    Every block of a head's cluster gets every block's part (DSMEM) and merges them itself, so that each has o_h
    without another cluster barrier; rank r then computes rows r * C/4 .. (r + 1) * C/4 - 1 of W's head-h columns
    times o_h (a pair of rows a thread, 64 products each; their W loaded into registers before the PDL wait, 128
    bytes a row, so that the weights stream while qkv does) and adds each pair into x by one atomic of two halves
    (red.global.add.noftz.f16x2; head 0 adds the bias too). Why: the attention's c_proj as its own kernel costs
    gpt2-xl ~2.05 us a layer after the attention (H100; 1.72 for its bytes) -- a kernel boundary on the step's
    critical path (the wait's release, x read back from L2, a block-wide reduction, the store), where here the
    products start as soon as the merge. The sum's order is the atomics' (25 heads for gpt2-xl, each rounded to fp16
    as added): not bit-reproducible from run to run, within fp16's tolerance. Correct on an H100 (its numpy check,
    tests/test_cuda_compile.py; logits at gpt2-xl's widths 2.7e-3 from transformers) but slower: 7.68 us from qkv's
    end against 4.16 + 2.02 for attention_cluster and the c_proj kernel, gpt2-xl's step 1472.1 -> 1524.1 us
    (docs/results/attention_proj_preload_h100.md). Its 4 blocks a head do 1600 rows' products after the merge where
    the c_proj kernel spreads them over every SM."""
    _check(dtype, head_dim, "attention-proj")
    H, D, C, P, F = n_head, head_dim, n_head * head_dim, n_ctx, n_inner
    CL, NTH = CLUSTER, ATTENTION_THREADS
    if P > ATTENTION_MAX_CTX:
        raise RuleError(f"attention-proj: a key a thread, so n_ctx up to {ATTENTION_MAX_CTX} (got {P})")
    if C % (2 * CL):
        raise RuleError(f"attention-proj: {C} rows of c_proj do not split into pairs over {CL} blocks")
    ha = _HeadAttention(H, D, P, dtype, NTH, 0)
    KB, NG, NW, BIG = ha.KB, ha.NG, ha.NW, ha.big
    wait_pdl = pdl_flags(pdl)[0]
    PF_ROWS = F // PREFETCH_FRACTION // (H * CL)
    PF_THREAD = NTH - 32
    RB = C // CL                                         # c_proj rows a block
    RT = -(-RB // (2 * NTH))                             # ... pairs of them a thread at most
    DV = D // 8                                          # 16-byte vectors a row's head-h columns

    def pair(r, t, i):                        # the first c_proj row of thread t's i-th pair of rows in rank r's block
        return r * RB + 2 * (t + i * NTH)

    @T.prim_func(s_tir=True)
    def attention_proj_cluster(qkv_in: T.Buffer((1, 3 * C), dtype), k_cache: T.Buffer((H, P, D), dtype),
                               v_cache: T.Buffer((H, P, D), dtype), pos: T.Buffer((1,), "int32"),
                               w_fc: T.Buffer((F, C), dtype), w: T.Buffer((C, C), dtype), b: T.Buffer((C,), dtype),
                               x: T.Buffer((1, C), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for r in T.thread_binding(CL, thread="clusterCtaIdx.x"):          # launched as clusters of CL blocks
            for bx in T.thread_binding(H * CL, thread="blockIdx.x"):
                for t in T.thread_binding(NTH, thread="threadIdx.x"):
                    with T.sblock("attention_proj_cluster"):
                        T.reads(qkv_in[0, 0:3 * C], k_cache[0:H, 0:P, 0:D], v_cache[0:H, 0:P, 0:D], pos[0],
                                w_fc[0:F, 0:C], w[0:C, 0:C], b[0:C], x[0, 0:C])
                        T.writes(k_cache[0:H, 0:P, 0:D], v_cache[0:H, 0:P, 0:D], x[0, 0:C])
                        big = T.sblock_alloc_buffer((BIG,), dtype, scope="shared.dyn")
                        qkv = T.sblock_alloc_buffer((3 * D,), ACC, scope="shared")
                        red = T.sblock_alloc_buffer((NW,), ACC, scope="shared")
                        p = T.sblock_alloc_buffer((KB,), ACC, scope="shared")
                        part = T.sblock_alloc_buffer((NG * D,), ACC, scope="shared")
                        po = T.sblock_alloc_buffer((CL * D,), ACC, scope="shared")    # every part's o
                        pml = T.sblock_alloc_buffer((CL * 2,), ACC, scope="shared")   # ... and (m, l)
                        o = T.sblock_alloc_buffer((D,), ACC, scope="shared")          # the head's, merged
                        bar = T.sblock_alloc_buffer((1,), "uint64", scope="shared")
                        ready = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                        addr = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                        acc = T.sblock_alloc_buffer((2,), ACC, scope="local")
                        stat = T.sblock_alloc_buffer((4,), ACC, scope="local")
                        wv = T.sblock_alloc_buffer((8,), dtype, scope="local")
                        wr = T.sblock_alloc_buffer((2 * RT * D,), dtype, scope="local")  # the thread's rows of W
                        bias = T.sblock_alloc_buffer((2 * RT,), ACC, scope="local")
                        dot = T.sblock_alloc_buffer((2,), ACC, scope="local")
                        h = bx // CL
                        n = pos[0] + 1
                        per = (n + CL - 1) // CL
                        j0 = r * per
                        nk = T.max(0, T.min(n, j0 + per) - j0)
                        if t < CL * D:
                            po[t] = T.float32(0)
                        if t < CL * 2:
                            pml[t] = T.float32(0)
                        ha.copy_kv(t, h, j0, nk, pos, big, bar, k_cache, v_cache)
                        # c_proj's rows pair(r, t, i) and the next (a pair: one f16x2 atomic, below),
                        # head h's 64 columns (one 128-byte line each), and head 0's bias: weights, written by no
                        # kernel of the step, so loaded before the wait (the L2 prefetch of each line keeps ptxas
                        # from moving the loads after it, as in ln_linear)
                        for i in T.unroll(RT):
                            if pair(0, t, i) < RB:
                                for q in T.unroll(2):
                                    T.ptx.prefetch.global_.L2(T.address_of(w[pair(r, t, i) + q, h * D]))
                                    for v in T.unroll(DV):
                                        for e in T.vectorized(8):
                                            wr[(2 * i + q) * D + v * 8 + e] = w[pair(r, t, i) + q, h * D + v * 8 + e]
                                    bias[2 * i + q] = T.if_then_else(
                                        h == 0, T.Cast(ACC, b[pair(r, t, i) + q]), T.float32(0))
                        T.tvm_storage_sync("shared")
                        ha.arrive_and_wait(t, T.address_of(qkv_in[0, 0]), wait_pdl, PROJ_LAUNCH_EARLY)
                        if t < 3 * D:
                            qkv[t] = T.Cast(ACC, qkv_in[0, (t // D) * C + h * D + t % D])
                        if PF_ROWS > 0 and t == PF_THREAD:   # c_fc's first quarter into L2, as attention_cluster
                            T.ptx.cp.async_.bulk.prefetch.L2.global_(T.address_of(w_fc[bx * PF_ROWS, 0]),
                                                                     T.uint32(PF_ROWS * C * 2))
                        ha.wait_copies(bar, ready)
                        T.tvm_storage_sync("shared")
                        T.ptx.barrier.cluster.wait.aligned()
                        ha.attend(t, r, h, n, j0, nk, pos, big, qkv, p, part, po, pml, red, acc, stat, wv, addr,
                                  k_cache, v_cache, o, True)
                        T.tvm_storage_sync("shared")                        # o, merged by threads 0-63
                        for i in T.unroll(RT):
                            if pair(0, t, i) < RB:
                                for q in T.unroll(2):
                                    dot[q] = bias[2 * i + q]
                                    for d in T.unroll(D):
                                        dot[q] = dot[q] + o[d] * T.Cast(ACC, wr[(2 * i + q) * D + d])
                                # the pair's two halves, low one first, added by one red.global.add.noftz.f16x2
                                # (a single f16 add is no instruction of sm_90: ptxas makes it a compare-and-swap
                                # loop)
                                T.ptx.red.global_.add.noftz.f16x2(
                                    T.address_of(x[0, pair(r, t, i)]),
                                    T.Cast("uint32", T.reinterpret("uint16", T.Cast(dtype, dot[0])))
                                    | (T.Cast("uint32", T.reinterpret("uint16", T.Cast(dtype, dot[1])))
                                       << T.uint32(16)))

    return attention_proj_cluster


def attention_proj_ref(qkv, k_cache, v_cache, pos, w, b, x):
    """Returns (x + fp16(attention) @ W.T + b, k_cache, v_cache): decode_attention_ref, then the attention's c_proj
    with the residual (linear_residual_ref) -- the two kernels make_attention_proj_cluster replaces."""
    from .attention import decode_attention_ref
    from .linear import linear_residual_ref

    a, k_cache, v_cache = decode_attention_ref(qkv, k_cache, v_cache, pos)
    return linear_residual_ref(a, w, b, x), k_cache, v_cache


def decode_cluster_ref(x, w, b, w_sum, k_cache, v_cache, pos, eps=1e-5):
    """Returns (out [1, C], k_cache, v_cache): the folded ln_1 + c_attn (rstd * (W' @ x - mu * s) + b', rounded to
    x's dtype, as make_ln_linear_decode computes it), then decode_attention_ref -- the two kernels it replaces."""
    from .attention import decode_attention_ref

    xf = x.astype(np.float32)
    mu = xf.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xf * xf).mean(axis=-1, keepdims=True) - mu * mu + eps)
    qkv = (rstd * (xf @ w.astype(np.float32).T - mu * w_sum) + b.astype(np.float32)).astype(x.dtype)
    return decode_attention_ref(qkv, k_cache, v_cache, pos)
