"""Sampling on the device: temperature, top-k and top-p, the token drawn where the next decode step
reads it, so that a run of sampled steps needs nothing from the host (as argmax.py does for greedy).

What it draws from is runtime/sampling.py's distribution (Hugging Face's order: top-k, then top-p of
what top-k kept):

    x_v   = (logits[v] - max logits) / temperature                        (<= 0; the top token's is 0)
    top-k: keep x_v >= the k-th largest x (ties with it kept)            ->  Z_k = sum over kept e^{x_v}
    top-p: of those, keep v if the mass strictly above it is < top_p Z_k (probabilities in descending order;
           the smallest such prefix, a token tied with the last one kept too)
    p(v)  = e^{x_v} / (sum over kept e^{x_u}),  0 elsewhere

    logits [1, vocab] float32;  sampling [4] float32 = (temperature > 0, top_k (vocab: off), top_p (1: off),
    seed in [0, 2^24));  ids [1], pos [1], history [n_ctx + 1] int32 (updated in place as argmax's
    advance does)  ->  next [1] int32

One kernel of one block (`threads` threads; thread t owns logits t, t + threads, ..., their x kept in
registers; e^x is recomputed where needed, since beside x 1024 threads' registers would not hold it):

  scale    x of the thread's logits, after a block-wide max (and the first id holding it);
  top-k    the k-th largest x by bisection on its bit pattern: for x <= 0, key(x) = bits(-x) as int32
           grows as x falls, so "x >= the k-th largest" is "key <= K" for the least K with
           #{key <= K} >= k: 31 halvings of [0, bits(inf)], a block-wide count each, or fewer: a count of
           exactly k stops the search there (the same k keys as the least K's: see halving);
  top-p    rejection, exact in distribution: draw s from the candidates {key <= K} (at first top-k's
           set); s is kept iff the mass of the candidates strictly above it, mass(key < key(s)), is
           < top_p Z_k; if it is not, no token below it is either, so the candidates become key < key(s)
           and the next round draws again (a sample accepted from a set that holds every kept token,
           drawn in proportion to p, is a draw from p restricted to the kept tokens). Round r computes
           that mass while it draws the next sample, so each round is one pass. `rounds` rounds at
           most (32): after them the most probable token is taken. Simulated on flat, normal and Zipf
           vocabularies of 50257 with top_p 0.05..0.99: 1.0-4.1 rounds on average, 12 the most in 300
           draws each. Without top-p the first draw is kept.
  draw     the exponential race: v = argmax e^{x_v} / E_v over the candidates, E_v ~ Exp(1) independent
           (equivalent to Gumbel-max: argmax x_v - log E_v), E_v = -log(1 - u_v) from a hash of
           (seed, pos, round, v): u = (32 random bits + 1/2) / 2^32, so E >= 1.2e-10 and a token's noise is
           capped; the chance that the cap binds for any of 50257 tokens is ~6e-6 a draw.
  advance  thread 0 writes the token where the next step reads it: history[pos + 1], ids, pos + 1.

It differs from the host sampler in its random numbers (its own stream: same seed, other tokens) and
in float32 arithmetic: x + noise, and top-p's masses, to ~1e-6 relative, against float64 on the host.
On WebGPU rounds after the one that accepts skip their arithmetic but not their block-wide reductions:
a branch around a barrier is not allowed in WGSL, whose uniformity analysis does not see that `done` is the
same in every thread. On CUDA (skip=True) a branch the same in every thread may hold barriers, and
T.tvm_thread_invariant tells TVM's ThreadSync so: there, without top-k, the bisection is skipped, so are
its halvings after a count of exactly k (`found`), and the rounds after the first without top-p or once a
draw is kept (`done`; both registers each thread sets alike from block-wide results), and ptxas, nvcc 13.0
with TVM's flags, gives the 1024-thread kernel 64 registers and a 320-byte stack, against 32 and 832 without
the branches (found's branch, added later: 64 registers still, and with nvcc -O3 alone a 112-byte stack
against 216 before it). Each round's blocks
are written once (the macro one_round) and emitted once: emitted twice, for round 0 and for a loop over
the rest, the kernel drew wrong tokens on WebGPU.
"""

import numpy as np

from tinygpt2.tvm_shim import T, tirx

from ._dtypes import F32_MIN
from .argmax import block_argmax

ROUNDS = 32
KEY_INF = 0x7F800000          # bits of +inf: key of x = -inf, above every finite x's


@T.macro(hygienic=False)
def _pcg(h, x):
    """h[0] = PCG's output permutation of x, as a hash (Jarzynski & Olano 2020, "Hash Functions for GPU
    Rendering"): a bijection of uint32, state = x * 747796405 + 2891336453, then xorshifts by a
    state-dependent amount. Statements into a uint32 register h[0], not one expression: the state is used
    three times, and nested hashes written as expressions grow as 3^depth."""
    h[0] = x * T.uint32(747796405) + T.uint32(2891336453)
    h[0] = ((h[0] >> ((h[0] >> T.uint32(28)) + T.uint32(4))) ^ h[0]) * T.uint32(277803737)
    h[0] = (h[0] >> T.uint32(22)) ^ h[0]


@T.macro(hygienic=False)
def _block_sum(TH, t_val, out, i):
    """out[i] = the sum over the block's threads t of t_val[t]: a cross-thread reduction, which TVM lowers
    to warp shuffles + shared memory (as argmax.block_argmax's); `i` picks the element of out to write."""
    for tx in T.thread_binding(TH, thread="threadIdx.x"):
        with T.sblock("b_sum"):
            vi = T.axis.spatial(out.shape[0], i)
            vt = T.axis.reduce(TH, tx)
            with T.init():
                out[vi] = tirx.const(0, out.dtype)        # a literal: TVM's reducer matcher needs it
            out[vi] = out[vi] + t_val[vt]


def _key(x):
    """x <= 0 -> an int32 that grows as x falls: the bits of -x, its sign bit cleared, since a compiler may
    fold 0 - x into -x (llvmpipe does), and -(+0.0) is -0.0, whose bits are int32's lowest."""
    return T.bitwise_and(T.reinterpret("int32", T.float32(0) - x), T.int32(0x7FFFFFFF))


def make_sample_advance_gpu(n_vocab: int, n_ctx: int, threads: int = 1024, rounds: int = ROUNDS,
                            skip: bool = False):
    """See the module's docstring. threads: 1024 on CUDA, 256 on WebGPU (its limit). skip (CUDA): without
    top-k, the bisection's 31 block-wide counts are skipped, and its counts after one of exactly k, and the
    rounds after the first without top-p or once a draw is kept: branches around barriers that are the same
    in every thread (WGSL's uniformity analysis cannot be told so: see the module's docstring)."""
    V, P1, one = T.int64(n_vocab), T.int64(n_ctx + 1), T.int64(1)
    TH, E, R = T.int64(threads), T.int64(-(-n_vocab // threads)), T.int64(rounds)
    lowest, none = T.float32(F32_MIN), T.max_value("int32")
    key_inf = T.int32(KEY_INF)

    def key_at(xs, vt, e):                           # the thread's e-th logit's key; past the vocabulary, above all
        return T.if_then_else(e * TH + vt < V, _key(xs[vt, e]), none)

    @T.macro(hygienic=False)
    def halving(it):
        """One halving of [lo, hi] at its middle K, by #{key <= K} (a block-wide count). A count of exactly k
        ends the search at K: #{key <= K_least} >= k and K_least <= K give the same k keys, so the same
        tokens kept as the least K (the test's reference takes the least); lo = hi = K then, and a halving
        after it counts at K again and changes nothing."""
        for tx in T.thread_binding(TH, thread="threadIdx.x"):
            with T.sblock("count_part"):
                vt = T.axis.spatial(TH, tx)
                t_count[vt] = T.int32(0)
                for e in T.unroll(E):
                    t_count[vt] = t_count[vt] + T.Cast("int32", key_at(xs, vt, e) <= lo[vt] + (hi[vt] - lo[vt]) // 2)
        _block_sum(TH, t_count, b_count, it)
        for tx in T.thread_binding(TH, thread="threadIdx.x"):
            with T.sblock("halve"):
                vt = T.axis.spatial(TH, tx)
                vi = T.axis.spatial(T.int64(31), it)
                # (shared memory read into a register first: TVM's ThreadSync rejects it in an `if`)
                count = T.sblock_alloc_buffer((1,), "int32", scope="local")
                count[0] = b_count[vi] - T.min(T.Cast("int32", sampling[1]), T.Cast("int32", V))   # minus k
                if count[0] == 0:
                    hi[vt] = lo[vt] + (hi[vt] - lo[vt]) // 2
                    lo[vt] = hi[vt]
                    found[0] = 1
                elif count[0] > 0:
                    hi[vt] = lo[vt] + (hi[vt] - lo[vt]) // 2
                else:
                    lo[vt] = lo[vt] + (hi[vt] - lo[vt]) // 2 + 1

    @T.macro(hygienic=False)
    def one_round(r):
        """Round r of top-p's rejection: draw from the candidates, test the last round's draw."""
        for tx in T.thread_binding(TH, thread="threadIdx.x"):
            with T.sblock("draw"):
                vt = T.axis.spatial(TH, tx)
                vr = T.axis.spatial(R, r)
                f = T.sblock_alloc_buffer((4,), "float32", scope="local")     # u, E, score, e^x
                h = T.sblock_alloc_buffer((1,), "uint32", scope="local")      # a hash
                t_best[vt] = lowest
                t_id[vt] = none
                t_mass[vt] = T.float32(0)
                if done[0] == 0:
                    # the round's stream: hash(seed, pos, round), then one more hash per token
                    _pcg(h, T.Cast("uint32", sampling[3]))
                    _pcg(h, h[0] ^ T.Cast("uint32", t_pos[vt]))
                    _pcg(h, h[0] + T.Cast("uint32", vr))
                    t_base[vt] = h[0]
                    for e in T.unroll(E):
                        if key_at(xs, vt, e) <= cand[vt]:
                            # u in (0, 1]: 32 random bits + 1/2; E = -log(1 - u) ~ Exp(1), for small u its
                            # series (log(1 - u) would round it away); score = e^x / E (e^x recomputed: kept
                            # beside x, 1024 threads' registers would not hold them)
                            _pcg(h, t_base[vt] + T.Cast("uint32", e * TH + vt))
                            f[0] = (T.Cast("float32", h[0]) + T.float32(0.5)) * T.float32(2.0 ** -32)
                            f[1] = T.if_then_else(f[0] < T.float32(1e-4), f[0] + T.float32(0.5) * f[0] * f[0],
                                                  T.float32(0) - T.log(T.float32(1) - f[0]))
                            f[3] = T.exp(xs[vt, e])
                            f[2] = f[3] / T.max(f[1], T.float32(1e-30))
                            # the lowest id on ties: ids rise with e
                            t_id[vt] = T.if_then_else(f[2] > t_best[vt], T.Cast("int32", e * TH + vt), t_id[vt])
                            t_best[vt] = T.max(t_best[vt], f[2])
                            t_mass[vt] = t_mass[vt] + f[3]
        block_argmax(TH, t_best, t_id, b_best, b_id, r)          # the round's draw
        _block_sum(TH, t_mass, b_mass, r)                         # the mass of the round's candidates
        for tx in T.thread_binding(TH, thread="threadIdx.x"):
            with T.sblock("test"):
                vt = T.axis.spatial(TH, tx)
                vr = T.axis.spatial(R, r)
                # b_mass[r]: the mass of this round's candidates, i.e. strictly above the last round's
                # sample (chosen[vt]): that sample is kept if it is < top_p Z_k
                kept = T.sblock_alloc_buffer((1,), "int32", scope="local")
                drawn = T.sblock_alloc_buffer((1,), "int32", scope="local")
                kept[0] = T.Cast("int32", b_mass[vr] < sampling[2] * b_zk[0])
                drawn[0] = b_id[vr]
                if done[0] == 0:
                    if vr > 0 and kept[0] == 1:
                        done[0] = 1
                    elif sampling[2] >= T.float32(1):             # no top-p: every draw is kept
                        done[0] = 1
                        chosen[vt] = drawn[0]
                    else:                                         # test it next round, below it
                        chosen[vt] = drawn[0]
                        cand[vt] = _key((logits[0, T.Cast("int64", drawn[0])] - b_max[0]) / sampling[0]) - 1

    @T.prim_func(s_tir=True)
    def sample_advance(logits: T.Buffer((one, V), "float32"), sampling: T.Buffer((T.int64(4),), "float32"),
                       ids: T.Buffer((one,), "int32"), pos: T.Buffer((one,), "int32"),
                       history: T.Buffer((P1,), "int32"), next_id: T.Buffer((one,), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        # per thread, indexed by the thread so that TVM compacts each to registers
        xs = T.sblock_alloc_buffer((TH, E), "float32", scope="local")      # x of the thread's logits
        t_max = T.sblock_alloc_buffer((TH,), "float32", scope="local")
        t_first = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        t_count = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        t_mass = T.sblock_alloc_buffer((TH,), "float32", scope="local")
        t_best = T.sblock_alloc_buffer((TH,), "float32", scope="local")
        t_id = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        # the search's state: the same in every thread (computed from the block-wide results below)
        lo = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        hi = T.sblock_alloc_buffer((TH,), "int32", scope="local")          # then top-k's K
        cand = T.sblock_alloc_buffer((TH,), "int32", scope="local")        # candidates: key <= cand
        # 1 once a draw is kept; one register each thread sets alike, so that skip's branch can read it
        done = T.sblock_alloc_buffer((1,), "int32", scope="local")
        found = T.sblock_alloc_buffer((1,), "int32", scope="local")     # likewise, once top-k's count is exactly k
        chosen = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        t_pos = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        t_base = T.sblock_alloc_buffer((TH,), "uint32", scope="local")     # the round's random stream
        # block-wide results, one element per use (a reduction inside a loop writes its own element)
        b_max = T.sblock_alloc_buffer((one,), "float32", scope="shared")
        b_first = T.sblock_alloc_buffer((one,), "int32", scope="shared")
        b_count = T.sblock_alloc_buffer((T.int64(31),), "int32", scope="shared")
        b_zk = T.sblock_alloc_buffer((one,), "float32", scope="shared")
        b_best = T.sblock_alloc_buffer((R,), "float32", scope="shared")
        b_id = T.sblock_alloc_buffer((R,), "int32", scope="shared")
        b_mass = T.sblock_alloc_buffer((R,), "float32", scope="shared")
        for bx in T.thread_binding(one, thread="blockIdx.x"):
            # --- scale: the logits into registers, the block's max and the first id holding it ---
            for tx in T.thread_binding(TH, thread="threadIdx.x"):
                with T.sblock("load"):
                    vt = T.axis.spatial(TH, tx)
                    t_pos[vt] = pos[0]
                    t_max[vt] = lowest
                    t_first[vt] = none
                    for e in T.unroll(E):         # past the vocabulary: logit vocab - 1 again (in bounds)
                        xs[vt, e] = logits[0, T.min(e * TH + vt, V - one)]
                    for e in T.unroll(E):         # ids rise with e: a later equal logit keeps the first id
                        t_first[vt] = T.if_then_else(xs[vt, e] > t_max[vt],
                                                     T.Cast("int32", T.min(e * TH + vt, V - one)), t_first[vt])
                        t_max[vt] = T.max(t_max[vt], xs[vt, e])
            block_argmax(TH, t_max, t_first, b_max, b_first, 0)
            for tx in T.thread_binding(TH, thread="threadIdx.x"):
                with T.sblock("scale"):
                    vt = T.axis.spatial(TH, tx)
                    for e in T.unroll(E):
                        xs[vt, e] = T.if_then_else(e * TH + vt < V, (xs[vt, e] - b_max[0]) / sampling[0], lowest)
                    lo[vt] = T.int32(0)
                    hi[vt] = key_inf
                    found[0] = 0
            # --- top-k: the least K with #{key <= K} >= k, by halving [lo, hi] 31 times, or a K with exactly k
            # keys at or below it (halving) ---
            if skip:
                # without top-k (k >= vocab) none of it: a branch around barriers, which TVM's ThreadSync
                # takes only when told the condition is the same in every thread (it is: a kernel input);
                # and the halvings after a count of exactly k (`found`, set alike from a block-wide count):
                # about half of them for k = 50 over 50257 logits, one block-wide count each
                if T.tvm_thread_invariant(sampling[1] < T.float32(n_vocab)):
                    for it in T.serial(T.int64(31)):
                        if T.tvm_thread_invariant(found[0] == 0):
                            halving(it)
            else:
                for it in T.serial(T.int64(31)):
                    halving(it)
            # --- top-p: Z_k, then rounds of draw + test ---
            for tx in T.thread_binding(TH, thread="threadIdx.x"):
                with T.sblock("zk_part"):
                    vt = T.axis.spatial(TH, tx)
                    t_mass[vt] = T.float32(0)
                    for e in T.unroll(E):
                        t_mass[vt] = t_mass[vt] + T.if_then_else(key_at(xs, vt, e) <= hi[vt], T.exp(xs[vt, e]), T.float32(0))
                    cand[vt] = hi[vt]
                    done[0] = 0
                    chosen[vt] = 0
            _block_sum(TH, t_mass, b_zk, 0)
            for r in T.serial(R):
                if skip:
                    # without top-p the first draw is kept: later rounds are skipped whole, a branch the same
                    # in every thread (kernel inputs and the loop variable)
                    if T.tvm_thread_invariant(r == 0 or (sampling[2] < T.float32(1) and done[0] == 0)):
                        one_round(r)
                else:
                    one_round(r)
            for tx in T.thread_binding(TH, thread="threadIdx.x"):
                with T.sblock("advance"):
                    vt = T.axis.spatial(TH, tx)
                    if vt == T.int64(0):
                        chosen[vt] = T.if_then_else(done[0] == 1, chosen[vt], b_first[0])   # out of rounds
                        history[T.Cast("int64", t_pos[vt]) + one] = chosen[vt]
                        ids[0] = chosen[vt]
                        pos[0] = t_pos[vt] + 1
                        next_id[0] = chosen[vt]

    return sample_advance


def sample_probs_ref(logits, temperature: float, top_k: int | None = None, top_p: float | None = None):
    """The distribution make_sample_advance_gpu draws from, in float64 numpy: p [vocab], 0 off the kept set.
    Ties at top-k's and top-p's edges are kept whole (the kernel's thresholds are on values)."""
    x = (logits.reshape(-1).astype(np.float64) - logits.max()) / temperature
    keep = np.ones(x.size, bool)
    if top_k is not None and top_k < x.size:
        keep &= x >= np.sort(x)[-top_k]
    e = np.where(keep, np.exp(x), 0.0)
    if top_p is not None and top_p < 1:
        above = np.array([e[x > xv].sum() for xv in x])             # the kept mass strictly above each token
        keep &= above < top_p * e.sum()
    p = np.where(keep, np.exp(x), 0.0)
    return p / p.sum()


def _pcg_ref(h):
    """_pcg in numpy, on uint64 arrays holding uint32 values."""
    m = np.uint64(0xFFFFFFFF)
    state = (np.asarray(h, np.uint64) * np.uint64(747796405) + np.uint64(2891336453)) & m
    word = (((state >> ((state >> np.uint64(28)) + np.uint64(4))) ^ state) * np.uint64(277803737)) & m
    return (word >> np.uint64(22)) ^ word


def sample_advance_ref(logits, sampling, pos: int, rounds: int = ROUNDS) -> int:
    """The token make_sample_advance_gpu picks at position `pos`: its algorithm and random numbers in numpy,
    float32 as on the device (so a GPU's last-ulp differences in exp or log may, rarely, pick another)."""
    temperature, top_k, top_p, seed = (float(v) for v in sampling)
    z = logits.reshape(-1).astype(np.float32)
    x = (z - z.max()) / np.float32(temperature)
    key = (-x).view(np.int32) & np.int32(0x7FFFFFFF)
    e = np.exp(x)
    k = min(int(top_k), z.size)
    cand = np.sort(key)[k - 1]                                # top-k: the least K with #{key <= K} >= k
    zk = e[key <= cand].sum(dtype=np.float32)
    chosen = None
    ids = np.arange(z.size, dtype=np.uint64)
    for r in range(rounds):
        base = _pcg_ref(_pcg_ref(_pcg_ref(np.uint64(int(seed))) ^ np.uint64(pos)) + np.uint64(r))
        u = (_pcg_ref(base + ids).astype(np.float32) + np.float32(0.5)) * np.float32(2.0 ** -32)
        ex = np.where(u < np.float32(1e-4), u + np.float32(0.5) * u * u, -np.log(np.float32(1) - u))
        m = key <= cand
        drawn = int(np.argmax(np.where(m, e / np.maximum(ex, np.float32(1e-30)), -np.inf)))
        if r > 0 and e[m].sum(dtype=np.float32) < np.float32(top_p) * zk:
            return chosen                                     # the mass above the last draw: it is kept
        if top_p >= 1:
            return drawn
        chosen, cand = drawn, key[drawn] - 1
    return int(np.argmax(z))
