"""GPT-2 as a Relax IRModule: the whole path of data, in one place.

    ids ──embedding──▶ x ──▶ [ block 0 ] ──▶ … ──▶ [ block L-1 ] ──ln_f──▶ lm_head(wte) ──▶ logits
                                 │
    block:  x = x + attn(ln_1(x))          attn: c_attn → append K,V to the cache → softmax(q·Kᵀ/√d)·V → c_proj
            x = x + mlp(ln_2(x))           mlp:  c_fc → gelu → c_proj

The module holds two Relax functions with the same signature,

    prefill(ids [n] int32, total: Shape([m]), k_0, v_0, …, k_{L-1}, v_{L-1}, *params) -> logits [1, vocab] f32
    decode (ids [1] int32, pos [1] int32,    …same…)                                -> logits [1, vocab] f32
    decode_greedy (ids, pos, history [n_ctx + 1] int32, …same…)                      -> next id [1] int32
    decode_sample (ids, pos, history, sampling [4] f32, …same…)     (GPU targets)    -> next id [1] int32

where n is the number of new tokens, m the sequence length after them (the new tokens sit at
positions m-n … m-1), k_i/v_i the layer-i KV cache [n_head, n_ctx, head_dim] (updated in place), and
params the weights in `weights.param_names(config)` order, under Hugging Face's names (with
`fused-decode`, `param_names(config, folded=True)`: ln_1 and ln_2 folded into c_attn and c_fc). Both
functions are straight lists of `call_tir`s into the hand-written kernels of `tinygpt2.kernels`.

prefill's kernels take a symbolic n, and m as a shape. decode's are built for n = 1, so rules see
matrix-vector shapes, and have no symbolic shape at all: the position m - 1 is a device tensor `pos`,
attention runs over the whole cache masked past it, so every decode step launches the same kernels
with the same grids (one CUDA graph captures the whole step). The linears that feed GELU or the
residual stream carry them in their epilogue (`linear_fc_gelu`, `linear_*_proj` = x + c_proj(..)).
When the rule list asks for `fused-decode` on a GPU, decode's attention is one call
(`decode_attention`: append K, V, softmax(q.K^T).V, over chunks of keys merged at the end),
ln_1 / ln_2 fold into the linear after them (`ln_linear_*`), the MLP's c_proj is hand-scheduled, ln_f and
lm_head are one kernel (`ln_f_lm_head`) and decode_greedy's argmax and advance are one kernel (`argmax_advance`),
which picks among the best logits of the head's blocks;
with `hand-softmax`, prefill's causal softmax is hand-scheduled too, and with `flash-prefill` prefill's
whole attention is one kernel (`flash_attention`): kernels written already scheduled, that no rule touches.
"""

from __future__ import annotations

import inspect

from tinygpt2 import kernels as K
from tinygpt2 import rules as R
from tinygpt2.config import GPT2Config
from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import relax, tirx, tvm
from tinygpt2.weights import param_dtype, param_shapes

ACC = "float32"                     # logits, attention scores and probabilities are float32 in every dtype
FOLDED = ("weight", "bias", "weight_sum")   # a folded ln + linear's parameters (weights.fold_layernorms)
# the decode linears pipe-decode makes pipelined grids (kernels/ln_linear.py's make_linear_pipe_decode): of the
# variants measured, qkv and the MLP's c_proj alone (gpt2-xl fp16, H100: 1489.6 us a step against fused's 1510.7;
# all four 1521.3; docs/results/pipe_decode_h100.md) -- and only where each gets PIPE_MIN_GROUPS groups of rows a
# block or more. With fewer there is next to nothing to overlap: gpt2's qkv gets 2, its MLP's c_proj 1 (its step
# 1.2-1.7% longer pipelined); gpt2-large's MLP c_proj gets 3 but its qkv 2, and the c_proj alone pipelined loses
# 0.6% (it gives back time that qkv, after it, gains only pipelined itself); gpt2-xl's get 3 and 4: 2.8% shorter.
PIPE_DECODE_LINEARS = {"ln_linear_qkv": (1, 3), "linear_mlp_proj": (4, 1)}   # name: (in, out) in n_embd
PIPE_MIN_GROUPS = 3
# a pipelined linear's threads a block where not kernels/ln_linear.py's PIPE_THREADS (128): with 256, the MLP's c_proj
# (rows of 4C, 128 lanes a row) has 2 rows a group in flight instead of 1, in 2 passes instead of 4 on gpt2-xl, held
# to 64 registers a thread for 4 blocks an SM (48 bytes of spill). Built on the guess that its 9.8 us a launch (c_fc
# reads the same bytes in 7.3) were ~4 memory latencies in turn; measured, it is far slower: gpt2-xl's step 1647.5 us
# against 1427.2 (c_proj 12.80 us a launch), qkv so too 2131.9 (H100, docs/results/pipe_blocks_h100.md). None
PIPE_THREADS_OF: dict[str, int] = {}
# a pipelined linear's most blocks where not kernels/ln_linear.py's PIPE_BLOCKS (4 an SM): the MLP's c_proj at 5 an
# SM, as few as give each block the same number of groups -- 534 blocks of 3 rows on gpt2-xl instead of 400 of 4
# (its 75 registers a thread let 6 blocks of 128 reside on an SM). gpt2-xl on an H100, three pairs in one loan: the
# step 1426.1-1428.6 -> 1416.2-1419.0 us (the c_proj 9.76 -> 9.50 us a launch), decode 701 / 701 -> 706 / 706
# tok/s back to back. At 3 an SM (320 blocks of 5) 1449.6; qkv at 5 or 3 an SM besides, 1423.5 / 1429.9; 256
# threads a block (PIPE_THREADS_OF) 1647.5 (docs/results/pipe_blocks_h100.md)
PIPE_BLOCKS_OF: dict[str, int] = {"linear_mlp_proj": 5 * 132}
# the decode linears whose epilogue operands (bias; s, or the residual) are loaded early, not after the lanes' sum
# (kernels/ln_linear.py's preload=: a pipelined grid a group ahead, a one-wave kernel before or right after the PDL
# wait). Only the attention's c_proj gains: gpt2-xl's step 1469.8 / 1468.9 -> 1458.4 us, decode 681 / 682 -> 685 /
# 682 tok/s back to back (gpt2 unchanged, 4822 / 4811 -> 4827 / 4835). The MLP's c_proj alone ends 0.2 us sooner,
# but qkv, launched during its tail, then takes 0.3 longer and the attention after it 0.3 (step 1483.9); c_fc loses
# 1.27 us, qkv 0.42 (H100; docs/results/attention_proj_preload_h100.md). With the MLP's c_proj launching qkv a
# group sooner (PIPE_TRIGGER "before-last"), its preload traces 3.5 us a step shorter (1464.8 / 1465.4 against
# 1468.1-1468.9) but benchmarks no faster (681 / 680 tok/s against 683 / 683): left out.
PRELOAD_LINEARS = ("linear_attn_proj",)
# N > 0: c_fc brings the first 1/N of the MLP c_proj's weights into L2 (with PDL: kernels/ln_linear.py's
# prefetch_next); 0: it does not. It lost or broke even at first. gpt2-xl on an H100,
# the step against 1472-1474 us without: 1/4 1513.1, 1/8 1485.1 (from the blocks' ends: 1480.4), 1/16 1472.8
# (c_fc +0.16 us a launch, c_proj -0.23); with the before-last trigger, 1/16 1466.7 against 1468.1-1468.8
# (docs/results/trigger_prefetch_h100.md). With the MLP's c_proj at 5 blocks an SM (PIPE_BLOCKS_OF), 1/16 1410.2 us
# against 1418.1 / 1418.6 (the c_proj 9.54 -> 9.18 us a launch, c_fc 7.30 -> 7.42; thirty-first session,
# docs/results/pipe_blocks_h100.md): on, where the MLP's c_proj is a pipelined grid (gpt2-xl). The smaller sizes,
# whose c_proj is a one-wave kernel, were not timed with it: off there
FC_PREFETCH_PROJ = 16
# fused decode: ln_f and the head as one hand-scheduled persistent grid (kernels/lm_head.py's make_lm_head_decode),
# launched with PDL where the step is, in place of the layernorm kernel and the rule list's GEMV
LN_F_IN_HEAD = True
# ... and in decode_greedy it also takes each block's best logit, so that argmax_advance reads ~500 candidates
# instead of the vocabulary's logits (make_lm_head_decode's argmax, make_argmax_advance_gpu's parts)
HEAD_ARGMAX = True


def pipelined(cfg: GPT2Config, dtype: str, lanes: int = 8) -> tuple[str, ...]:
    """The decode linears pipe-decode makes pipelined grids for this model: PIPE_DECODE_LINEARS, or none."""
    # (at 128 threads a block, whatever PIPE_THREADS_OF asks: whether there is enough to pipeline; PIPE_BLOCKS_OF's)
    groups = [K.pipe_grid(i * cfg.n_embd, o * cfg.n_embd, dtype, lanes,
                          PIPE_BLOCKS_OF.get(name, K.ln_linear.PIPE_BLOCKS))[-1]       # a block's groups of rows
              for name, (i, o) in PIPE_DECODE_LINEARS.items()]
    return tuple(PIPE_DECODE_LINEARS) if min(groups) >= PIPE_MIN_GROUPS else ()


class _Builder:
    """Emits `call_tir`s into one Relax function; adds each distinct kernel to the module once."""

    def __init__(self, bb: relax.BlockBuilder, suffix: str, seq_len: int | None):
        self.bb, self.suffix, self.seq_len = bb, suffix, seq_len
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}

    def kernel(self, name: str, factory, *args, mark_kib: int = 0, **options) -> tvm.ir.GlobalVar:
        """The kernel factory(*args, **options) makes, added once; with mark_kib, taking one more input, `progress`
        (after the others, before its output), that it adds mark_kib to as it starts (kernels/side_prefetch.py's
        with_progress_mark)."""
        key = (factory, args, mark_kib, tuple(sorted(options.items())))
        if key not in self.kernels:
            # decode's *_decode factories are n = 1 by construction and take no seq_len
            kw = {"seq_len": self.seq_len} if "seq_len" in inspect.signature(factory).parameters else {}
            func = factory(*args, **kw, **options)
            if mark_kib:
                func = K.side_prefetch.with_progress_mark(func, mark_kib)
            func = func.with_attr("global_symbol", name + self.suffix)
            self.kernels[key] = self.bb.add_func(func, name + self.suffix)
        return self.kernels[key]

    def call(self, out_name: str, kernel, args, shape, dtype):
        """y = kernel(*args) into a fresh tensor `y` of `shape`/`dtype`, bound to a var named out_name."""
        return self.bb.emit(relax.call_tir(kernel, args, relax.TensorType(shape, dtype)), name_hint=out_name)

    def call_many(self, out_name: str, kernel, args, outs):
        """kernel(*args) into fresh tensors of outs' (shape, dtype)s; returns them."""
        res = self.bb.emit(relax.call_tir(kernel, args, [relax.TensorType(*o) for o in outs]), name_hint=out_name)
        return [self.bb.emit(relax.TupleGetItem(res, j), name_hint=f"{out_name}_{j}") for j in range(len(outs))]

    def call_inplace(self, out_name: str, kernel, args, inplace: list[int], fresh=()):
        """kernel(*args) writing into args[i] for i in inplace; returns the updated tensors.

        An index -1 is a fresh output instead, of the next (shape, dtype) in `fresh` (the kernel
        takes fresh outputs after its inputs, as call_tir's)."""
        fresh = iter(fresh)
        out_ty = [args[i].ty if i >= 0 else relax.TensorType(*next(fresh)) for i in inplace]
        res = self.bb.emit(relax.call_tir_inplace(kernel, args, inplace, out_ty), name_hint=out_name)
        return [self.bb.emit(relax.TupleGetItem(res, j), name_hint=f"{out_name}_{j}") for j in range(len(inplace))]


def _gpt2_function(bb: relax.BlockBuilder, b: _Builder, name: str, cfg: GPT2Config, dtype: str,
                   seq_len: int | None, pick: str | None = None, gpu: str | None = None, hand=()):
    C, H, D, F, P, V = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.n_inner, cfg.n_positions, cfg.vocab_size
    eps = cfg.layer_norm_epsilon
    decode = seq_len == 1
    fused = decode and "fused-decode" in hand   # decode's hand-scheduled GPU kernels (build_module)
    flash = not decode and "flash-prefill" in hand    # prefill's attention as one kernel (build_module)
    # ... launched with programmatic dependent launch (CUDA sm_90+): kernels/_pdl.py's mode, or None
    pdl = next((R.PDL_RULES[h] for h in hand if h in R.PDL_RULES), None) if fused else None
    # what the mma and cluster kernels are written for: CUDA (sm_90+: compile.hand_kernels), fp16; the cluster
    # kernels and flash-prefill-mma for heads 64 wide
    cuda_fp16 = gpu == "cuda" and dtype == "float16"
    cuda_fp16_64 = cuda_fp16 and D == 64
    # prefill's linears on mma.sync (kernels/linear_mma.py: K-steps of 32)
    mma = not decode and cuda_fp16 and "matmul-mma" in hand and C % 32 == 0
    # ... or on wgmma (kernels/linear_wgmma.py: K-steps of 64; sm_90a, which compile.hand_kernels checks)
    wgmma = not decode and cuda_fp16 and "matmul-wgmma" in hand and C % 64 == 0
    # ln_1 + c_attn + the attention as one kernel, a thread-block cluster per head (kernels/decode_cluster.py)
    clusters = fused and cuda_fp16_64
    cluster = clusters and "decode-cluster" in hand
    # ... or the attention alone as one such kernel, after ln_linear_qkv (make_attention_cluster; a key a thread:
    # contexts up to 1024)
    attn_cluster = (clusters and not cluster and "attention-cluster" in hand
                    and P <= K.decode_cluster.ATTENTION_MAX_CTX)
    # decode's weights prefetched into L2 by a kernel on a second stream that follows the step (side-prefetch,
    # kernels/side_prefetch.py): each linear marks `progress` with its W's KiB as it starts
    side = attn_cluster and pdl is not None and "side-prefetch" in hand
    # ... or that kernel with the attention's c_proj in it, by atomics into the residual stream (attention-proj,
    # make_attention_proj_cluster: the c_proj kernel, and its boundary, gone)
    proj = attn_cluster and pdl is not None and "attention-proj" in hand
    if side and proj:
        raise RuleError("side-prefetch counts the attention's c_proj kernel, which attention-proj removes: "
                        "list one of them")
    progress = [relax.Var("progress", relax.TensorType([1], "uint32"))] if side else []
    # (whole KiB: a matrix whose bytes are not a multiple leaves the marks < 1 KiB behind the prefetcher's count)
    kib = lambda n_in, n_out: n_in * n_out * K.ITEMSIZE[dtype] // 1024 if side else 0   # noqa: E731
    # decode's linears PIPE_DECODE_LINEARS as persistent pipelined grids, loading their first rows before the PDL wait
    # (pipe-decode, kernels/ln_linear.py's make_linear_pipe_decode), where a block gets PIPE_MIN_GROUPS groups or
    # more. Its point, the overlap of consecutive linears, needs PDL: compile.hand_kernels drops it off CUDA sm_90+
    lanes = K.WEBGPU_MAX_LANES if gpu == "webgpu" else 8                # their vector loads, in elements
    pipe = pipelined(cfg, dtype, lanes) if fused and "pipe-decode" in hand else ()
    # c_fc's prefetch of the MLP c_proj's weights: CUDA with PDL, c_fc a one-wave kernel, the c_proj pipelined
    fc_prefetch = (FC_PREFETCH_PROJ if fused and pdl is not None and "linear_mlp_proj" in pipe
                   and "ln_linear_fc_gelu" not in pipe else 0)

    def decode_linear(name, k_in, n_out, ln, gelu=False, mode=pdl, **options):
        """decode's hand-scheduled linears (kernels/ln_linear.py): the layernorm folded in front (ln, + GELU) or
        the residual added after; pipe-decode's pipelined grids instead for those `pipe` names; each marking
        `progress` as it starts under side-prefetch. mode: the PDL mode (a pipelined grid lets the next kernel
        launch at once where it is early, else at its group before the last: PIPE_TRIGGER). PRELOAD_LINEARS' epilogue
        operands load early."""
        if name in PRELOAD_LINEARS:
            options["preload"] = True
        if name in pipe:
            # (mode early: qkv lets the attention launch at once, for its copies of K and V to run meanwhile)
            trigger = "start" if mode == "early" else K.ln_linear.PIPE_TRIGGER
            if name in PIPE_THREADS_OF:
                options["threads"] = PIPE_THREADS_OF[name]
            if name in PIPE_BLOCKS_OF:
                options["blocks"] = PIPE_BLOCKS_OF[name]
            return b.kernel(name, K.make_linear_pipe_decode, k_in, n_out, dtype, ln, gelu, eps, lanes, pdl,
                            trigger=trigger, mark_kib=kib(k_in, n_out), **options)
        if ln:
            if name == "ln_linear_fc_gelu" and fc_prefetch:     # W_next: the MLP's c_proj, [C, F] = [k_in, n_out]
                options["prefetch_next"] = (k_in, n_out, fc_prefetch)
            return b.kernel(name, K.make_ln_linear_decode, k_in, n_out, dtype, eps, gelu, lanes, mode,
                            mark_kib=kib(k_in, n_out), **options)
        return b.kernel(name, K.make_linear_residual_decode, k_in, n_out, dtype, lanes, mode,
                        mark_kib=kib(k_in, n_out), **options)
    n = tirx.Var("n", "int64") if seq_len is None else seq_len       # new tokens
    m = tirx.Var("m", "int64")                                        # sequence length after them
    keys = P if decode else m                                          # the attention's key axis

    ids = relax.Var("ids", relax.TensorType([n], "int32"))
    # where the new tokens go: prefill takes the length m as a shape (its kernels' shapes follow it);
    # decode reads the position m - 1 from a device tensor, so none of its shapes change from step to step
    where = relax.Var("pos", relax.TensorType([1], "int32")) if decode else relax.Var("total", relax.ShapeType([m]))
    cache = [relax.Var(f"{kv}_{i}", relax.TensorType([H, P, D], dtype))
             for i in range(cfg.n_layer) for kv in ("k", "v")]
    # with fused-decode, ln_1 and ln_2's gamma and beta come folded into c_attn and c_fc (weights.fold_layernorms),
    # for prefill as for decode: their layernorms normalize only, the linears take the folded weights
    folded = "fused-decode" in hand
    shapes = param_shapes(cfg, folded)
    w = {p: relax.Var(p.replace(".", "_"), relax.TensorType(list(s), param_dtype(p, dtype))) for p, s in shapes.items()}
    if folded:                                                  # ln_1, ln_2: (x - mu) * rstd
        ln_kernel, ln_1, ln_2 = ("normalize", K.make_layernorm, C, dtype, eps, False), [], []
        c_attn, c_fc = "ln_1.c_attn.", "ln_2.c_fc."
    else:
        ln_kernel = ("layernorm", K.make_layernorm, C, dtype, eps)
        ln_1, ln_2 = ["ln_1.weight", "ln_1.bias"], ["ln_2.weight", "ln_2.bias"]
        c_attn, c_fc = "attn.c_attn.", "mlp.c_fc."

    history = relax.Var("history", relax.TensorType([P + 1], "int32"))    # decode_greedy/_sample: tokens so far
    sampling = relax.Var("sampling", relax.TensorType([4], "float32"))    # decode_sample: temperature, top_k, top_p, seed
    if decode:      # the position-dependent kernels, built for n = 1 and the whole cache (kernels/attention.py)
        embedding = b.kernel("embedding", K.make_embedding_decode, V, P, C, dtype)
        if cluster:     # ln_1 + c_attn and the four below as one kernel, a cluster per head (make_decode_cluster)
            decode_cluster = b.kernel("decode_cluster", K.make_decode_cluster, H, D, P, dtype, eps, pdl)
        elif fused:     # on a GPU, the four below as one hand-scheduled call (make_decode_attention)
            if proj:
                attention_proj = b.kernel("attention_proj_cluster", K.make_attention_proj_cluster, H, D, P, F, dtype,
                                          pdl)
            elif attn_cluster:
                attention_cluster = b.kernel("attention_cluster", K.make_attention_cluster, H, D, P, F, dtype, pdl)
            else:
                decode_attention = b.kernel("decode_attention", K.make_decode_attention, H, D, P, dtype, pdl, lanes)
            # ... and each layernorm folded into the linear after it (kernels/ln_linear.py)
            # (before attention_cluster it lets that launch at once: its blocks then copy their K and V rows while
            # qkv streams, H100 gpt2-xl: qkv 7.17 -> 8.10 us, the attention 5.57 -> 3.46 after it, the step
            # 1632.8 -> 1572.4 us; docs/results/trace_decode_h100_attention_cluster.md)
            ln_qkv = decode_linear("ln_linear_qkv", C, 3 * C, True, mode="early" if attn_cluster and pdl else pdl)
        if side:        # the prefetcher, launched by the executor beside each step (runtime/executor.py)
            b.kernel("side_prefetch", K.make_side_prefetch, 4 * cfg.n_layer)
        if fused:
            ln_fc_gelu = decode_linear("ln_linear_fc_gelu", C, F, True, gelu=True)
        else:
            kv_append = b.kernel("kv_append", K.make_kv_append_decode, H, D, P, dtype)
            attn_scores = b.kernel("attn_scores", K.make_attn_scores_decode, H, D, P, dtype)
            softmax = b.kernel("causal_softmax", K.make_softmax_decode, H, D, P)
            attn_values = b.kernel("attn_values", K.make_attn_values_decode, H, D, P, dtype)
        pos = [where]                                                   # an extra tensor argument
    else:
        embedding = b.kernel("embedding", K.make_embedding, V, P, C, dtype)
        kv_append = b.kernel("kv_append", K.make_kv_append, H, D, P, dtype)
        if flash:       # the three below as one hand-scheduled kernel, on tensor cores where it can (WMMA)
            # (without tensor cores its lanes' operands in registers, but not on WebGPU: fully unrolled, the
            # shader took llvmpipe 30-50 s to compile, against ~1 s as it was; kernels/flash_attention.py)
            if cuda_fp16_64 and "flash-prefill-mma" in hand:
                # ... or on mma.sync, FA2's layout (kernels/flash_attention_mma.py; preset `fused`)
                flash_attention = b.kernel("flash_attention", K.make_flash_attention_mma, H, D, P)
            elif gpu:
                flash_attention = b.kernel("flash_attention", K.make_flash_attention, H, D, P, dtype,
                                           cuda_fp16 and D % 16 == 0, gpu != "webgpu")
            else:       # the CPU's: a query row a task, its scores in a row buffer
                flash_attention = b.kernel("flash_attention", K.make_flash_attention_cpu, H, D, P, dtype)
        else:
            attn_scores = b.kernel("attn_scores", K.make_attn_scores, H, D, P, dtype)
            if "hand-softmax" in hand and gpu:  # hand-scheduled for a GPU: each score read once
                softmax = b.kernel("causal_softmax", K.make_causal_softmax_gpu, H, D, P, dtype)
            elif "hand-softmax" in hand:        # ... for the CPU: whole vectors, exp as arithmetic
                softmax = b.kernel("causal_softmax", K.make_causal_softmax_cpu, H, D, dtype)
            else:
                softmax = b.kernel("causal_softmax", K.make_causal_softmax, H, D, dtype)
            attn_values = b.kernel("attn_values", K.make_attn_values, H, D, P, dtype)
        pos = []                                                        # m reaches the kernels as a shape / scalar
    # c_proj + the residual add. The attention's: with PDL, hand-scheduled and launched during the attention
    # (which lets the next kernel launch at once), its weights loaded before it waits (prefetch_w), so that
    # they stream in while the attention, bound by latency, leaves HBM idle: gpt2-xl's step 1469.3 -> 1426.7
    # us on an H200 (docs/results/trace_decode_h200_attn_proj_overlap.md). Otherwise the rule list's to
    # schedule (DLight's GEMV: 3.3 us on gpt2-xl, the hand-scheduled one launched after the merge 3.9).
    # The MLP's, rows 4C long, hand-scheduled in fused decode (kernels/ln_linear.py: gpt2-xl 8.4 -> 7.1 us,
    # gpt2 3.7 -> 3.4)
    def linear(name, make, k_in, n_out, epilogue, **options):        # prefill's: linear.py's, wgmma's or mma's
        if wgmma:
            return b.kernel(name, K.make_linear_wgmma, k_in, n_out, epilogue, **K.linear_wgmma.tile_for(n_out, P))
        if mma:
            return b.kernel(name, K.make_linear_mma, k_in, n_out, epilogue)
        return b.kernel(name, make, k_in, n_out, dtype, **options)

    if proj:
        attn_proj = None                                      # (in the attention's kernel)
    elif pdl:
        attn_proj = decode_linear("linear_attn_proj", C, C, False, prefetch_w=True)
    else:
        attn_proj = linear("linear_attn_proj", K.make_linear_residual, C, C, "residual")
    if fused:
        mlp_proj = decode_linear("linear_mlp_proj", F, C, False)
    else:
        mlp_proj = linear("linear_mlp_proj", K.make_linear_residual, F, C, "residual")
    picked = [history] if pick == "greedy" else [history, sampling] if pick == "sample" else []
    with bb.function(name, [ids, where, *picked, *progress, *cache, *w.values()]):
        with bb.dataflow():
            x = b.call("x", embedding, [ids, *pos, w["wte.weight"], w["wpe.weight"], *([] if decode else [m])],
                       [n, C], dtype)                                                          # [n, C]
            for i in range(cfg.n_layer):
                p = f"h.{i}."
                # --- attention: x = x + c_proj(attn(c_attn(ln_1(x)))) ---
                if cluster:                                                # ln_1, c_attn, append, attend: one launch
                    a, *_ = b.call_inplace(f"h{i}_attn", decode_cluster,
                                           [x, *(w[p + c_attn + t] for t in FOLDED), cache[2 * i], cache[2 * i + 1],
                                            where], [-1, 4, 5], fresh=[([n, C], dtype)])
                elif fused:                                                # c_attn(ln_1(x)) in one launch
                    qkv = b.call(f"h{i}_qkv", ln_qkv, [x, *(w[p + c_attn + t] for t in FOLDED), *progress],
                                 [n, 3 * C], dtype)
                    # append K, V and attend, in one call. Outputs: attention [n, C], the two caches (in place)
                    # (and decode_attention's: the chunks' partial results)
                    if proj:               # ... and x += c_proj(the attention) there, x in place
                        *_, x = b.call_inplace(f"h{i}_attn", attention_proj,
                                               [qkv, cache[2 * i], cache[2 * i + 1], where, w[p + c_fc + "weight"],
                                                w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"], x], [1, 2, 7])
                    elif attn_cluster:     # (c_fc's weights only prefetched into L2: make_attention_cluster)
                        a, *_ = b.call_inplace(f"h{i}_attn", attention_cluster,
                                               [qkv, cache[2 * i], cache[2 * i + 1], where, w[p + c_fc + "weight"]],
                                               [-1, 1, 2], fresh=[([n, C], dtype)])
                    else:
                        a, *_ = b.call_inplace(f"h{i}_attn", decode_attention,
                                               [qkv, cache[2 * i], cache[2 * i + 1], where], [-1, 1, 2, -1, -1],
                                               fresh=[([n, C], dtype), *K.decode_attention_parts(H, D, P, dtype, lanes)])
                else:
                    h = b.call(f"h{i}_ln_1", b.kernel(*ln_kernel), [x, *(w[p + t] for t in ln_1)], [n, C], dtype)
                    qkv = b.call(f"h{i}_qkv", linear("linear_qkv", K.make_linear, C, 3 * C, "bias"),
                                 [h, w[p + c_attn + "weight"], w[p + c_attn + "bias"]], [n, 3 * C], dtype)
                    if flash:                                              # softmax(q.K^T).V in one launch
                        k, v = b.call_inplace(f"h{i}_kv", kv_append, [qkv, cache[2 * i], cache[2 * i + 1], m], [1, 2])
                        a = b.call(f"h{i}_attn", flash_attention, [qkv, k, v, m], [n, C], dtype)      # [n, C]
                    else:
                        k, v = b.call_inplace(f"h{i}_kv", kv_append,                          # [H, P, D] x2
                                              [qkv, cache[2 * i], cache[2 * i + 1], *(pos or [m])], [1, 2])
                        s = b.call(f"h{i}_scores", attn_scores, [qkv, k, *pos], [H, n, keys], ACC)   # [H, n, keys]
                        # probabilities in dtype in prefill, as HF rounds them before p.v (kernels/attention.py)
                        s = b.call(f"h{i}_probs", softmax, [s, *pos], [H, n, keys], ACC if decode else dtype)
                        a = b.call(f"h{i}_attn", attn_values, [s, v, *pos], [n, C], dtype)           # [n, C]
                if attn_proj is not None:
                    x = b.call(f"h{i}_resid_attn", attn_proj,                                  # x + c_proj(a)
                               [a, w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"], x, *progress], [n, C],
                               dtype)
                # --- MLP: x = x + c_proj(gelu(c_fc(ln_2(x)))) ---
                if fused:                                                  # gelu(c_fc(ln_2(x))) in one launch
                    # (with FC_PREFETCH_PROJ, c_fc also prefetches the MLP's c_proj weights: one more input)
                    nxt = [w[p + "mlp.c_proj.weight"]] if fc_prefetch else []
                    h = b.call(f"h{i}_fc_gelu", ln_fc_gelu,
                               [x, *(w[p + c_fc + t] for t in FOLDED), *nxt, *progress], [n, F], dtype)
                else:
                    h = b.call(f"h{i}_ln_2", b.kernel(*ln_kernel), [x, *(w[p + t] for t in ln_2)], [n, C], dtype)
                    # (on the CPU, GELU's tanh as a ratio of polynomials, which vectorizes: kernels/_cpu_math.py)
                    h = b.call(f"h{i}_fc_gelu", linear("linear_fc_gelu", K.make_linear_gelu, C, F, "gelu",
                                                       rational_tanh=gpu is None),
                               [h, w[p + c_fc + "weight"], w[p + c_fc + "bias"]], [n, F], dtype)  # gelu(c_fc(h))
                x = b.call(f"h{i}_resid_mlp", mlp_proj,                                        # x + c_proj(h)
                           [h, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"], x, *progress], [n, C], dtype)
            # greedy: the head also leaves each of its blocks' best logit and id, for argmax_advance to pick from
            head_argmax = fused and LN_F_IN_HEAD and HEAD_ARGMAX and pick == "greedy"
            parts = K.lm_head.head_blocks(V, C, dtype, lanes) if head_argmax else 0
            if fused and LN_F_IN_HEAD:                          # ln_f + the head, one hand-scheduled grid
                head = b.kernel("ln_f_lm_head_argmax" if head_argmax else "ln_f_lm_head", K.make_lm_head_decode, V, C,
                                dtype, eps, lanes, pdl, argmax=head_argmax)
                args = [x, w["ln_f.weight"], w["ln_f.bias"], w["wte.weight"]]                  # tied wte
                if head_argmax:
                    logits, *best = b.call_many("logits", head, args, [([1, V], ACC), ([1, parts], ACC),
                                                                       ([1, parts], "int32")])
                else:
                    logits = b.call("logits", head, args, [1, V], ACC)                         # [1, V]
            else:
                x = b.call("ln_f", b.kernel("layernorm", K.make_layernorm, C, dtype, eps),
                           [x, w["ln_f.weight"], w["ln_f.bias"]], [n, C], dtype)
                logits = b.call("logits", b.kernel("lm_head", K.make_lm_head, V, C, dtype),
                                [x, w["wte.weight"]], [1, V], ACC)                             # [1, V], tied wte
            if pick == "sample":
                # the next token drawn on the device (temperature, top-k, top-p; kernels/sample.py), left where
                # the next step reads it; hand-scheduled on every GPU rule list (no rule matches a sampler)
                # (on CUDA without top-k the bisection is skipped: a branch around barriers WGSL would refuse)
                sample_advance = b.kernel("sample_advance", K.make_sample_advance_gpu, V, P,
                                          256 if gpu == "webgpu" else 1024, K.sample.ROUNDS, gpu == "cuda")
                nxt, *_ = b.call_inplace("next", sample_advance, [logits, sampling, ids, where, history],
                                         [-1, 2, 3, 4], fresh=[([1], "int32")])
                out = bb.emit_output(nxt)
            elif pick == "greedy":
                # the next token, chosen on the device and left where the next step reads it
                if fused:           # argmax + advance as one hand-scheduled kernel of one block (kernels/argmax.py)
                    argmax_advance = b.kernel("argmax_advance", K.make_argmax_advance_gpu, V, P,
                                              256 if gpu == "webgpu" else 1024, parts)  # WebGPU: 256 threads at most
                    picked_from = best if head_argmax else [logits]
                    k = len(picked_from)
                    nxt, *_ = b.call_inplace("next", argmax_advance, [*picked_from, ids, where, history],
                                             [-1, k, k + 1, k + 2], fresh=[([1], "int32")])
                else:
                    nxt = b.call("next", b.kernel("argmax", K.make_argmax, V), [logits], [1], "int32")
                    b.call_inplace("advance", b.kernel("advance", K.make_advance, P), [nxt, ids, where, history],
                                   [1, 2, 3])
                # returns the token; returning the updated `history` instead trips RewriteCUDAGraph
                # (TVM 0.27: "Var gv1 is not defined" in VM codegen)
                out = bb.emit_output(nxt)
            else:
                out = bb.emit_output(logits)
        bb.emit_func_output(out)
    if decode:
        # num_input = 0 declares every argument fixed from call to call (RewriteCUDAGraph then lets the
        # captured graph read them; without it only the weights after `num_input` may be captured). The
        # executor keeps that promise: ids, pos, the caches and the weights are persistent tensors.
        gv = bb.get().get_global_var(name)
        bb.update_func(gv, bb.get()[gv].with_attr("num_input", 0))


def build_module(cfg: GPT2Config, dtype: str = "float32", gpu: str | None = None, hand=()) -> tvm.IRModule:
    """The IRModule with `prefill` (symbolic n), `decode` (n = 1) and `decode_greedy`, kernels unscheduled.

    gpu: a GPU target's name ("cuda", "webgpu", ...) to build hand-scheduled GPU kernels for, or None
    (the CPU); hand: which hand-scheduled kernels the rule list asks for (compile.hand_kernels), none by
    default (on the CPU only hand-softmax and flash-prefill have one):
      "fused-decode": on a GPU a decode step is bound by launches and weight streaming; kernels that
        no rule schedules, `decode_attention` (kv_append + scores + softmax + values), `ln_linear_qkv` /
        `ln_linear_fc_gelu` (ln_1 / ln_2 folded into the linear after it) and the MLP's c_proj +
        residual (kernels/ln_linear.py): 5 calls a layer, not 10; and decode_greedy's argmax + advance
        as one kernel (`argmax_advance`, kernels/argmax.py);
      "hand-softmax": prefill's causal softmax reading each kept score once (make_causal_softmax_gpu), or
        on the CPU in whole vectors with exp as arithmetic (make_causal_softmax_cpu);
      "flash-prefill": prefill's attn_scores + causal_softmax + attn_values as one kernel that keeps the
        scores on chip and skips the key tiles past the diagonal (kernels/flash_attention.py), on tensor
        cores on CUDA in float16; on the CPU a query row a task (make_flash_attention_cpu).

    decode_greedy(ids, pos, history [n_ctx + 1] int32, caches..., params...) is decode followed by the
    argmax on the device: history[pos + 1], ids and pos are updated in place, so steps run back to back
    with nothing from the host (runtime/executor.py's `greedy`). It returns the new token as well.
    On a GPU, decode_sample(ids, pos, history, sampling [4] float32, caches..., params...) does the same
    with a token drawn on the device (temperature, top-k, top-p, seed: kernels/sample.py), for
    runtime/executor.py's `sample`.
    """
    # one BlockBuilder per sequence length, so that prefill and decode keep the plain variable names
    # (h0_qkv, ...) the step-through executor shows; decode and decode_greedy share their kernels (_n1)
    cpu_hand = tuple(h for h in hand if h in R.CPU_RULES)      # GPU kernels are not built for the CPU
    mod = tvm.IRModule()
    decode = [("decode", None), ("decode_greedy", "greedy"), *([("decode_sample", "sample")] if gpu else [])]
    for seq_len, functions in ((None, [("prefill", None)]), (1, decode)):
        bb = relax.BlockBuilder()
        b = _Builder(bb, "" if seq_len is None else f"_n{seq_len}", seq_len)
        for name, pick in functions:
            _gpt2_function(bb, b, name, cfg, dtype, seq_len, pick, gpu, cpu_hand if gpu is None else tuple(hand))
        for gv, func in bb.get().functions_items():
            mod[gv] = func
    return mod
