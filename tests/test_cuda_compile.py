"""CUDA without a GPU: the model compiles for sm_90a (what the H100/H200 run), every kernel is
scheduled by a rule, the CUDA C has a __global__ per kernel, and the decode step's static stretches
are captured as CUDA graphs. Running it needs the GPU machine (scripts/device_bench.sh)."""

import collections
import dataclasses
import re
import shutil

import pytest

from tinygpt2 import compile as C
from tinygpt2.config import GPT2Config
from tinygpt2.errors import RuleError

CFG = GPT2Config(vocab_size=50257, n_positions=64, n_embd=48, n_layer=2, n_head=4)

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_builds_with_every_kernel_scheduled(dtype):
    sched, tgt, _ = C.build_scheduled(CFG, "cuda", dtype, "default", arch="sm_90a")
    assert all(sched.rule_of.values()), sched.rule_of
    assert sched.rule_of["linear_qkv"] == "matmul" and sched.rule_of["linear_qkv_n1"] == "gemv"
    ex = C.codegen(sched, tgt)
    source = C.device_module(ex.mod, "cuda").inspect_source()
    assert sched.rule_of["sample_advance_n1"] == C.HAND_SCHEDULED       # decode_sample's sampler (kernels/sample.py)
    for kernel in ("linear_qkv_n1_kernel", "lm_head_kernel", "causal_softmax_kernel", "sample_advance_n1_kernel"):
        assert f"__global__ void __launch_bounds__" in source and kernel in source
    if dtype == "float16":
        assert "half" in source


def test_cuda_sampler_skips_unused_work():
    """decode_sample's sampler on CUDA (kernels/sample.py, skip=True): the 31 block-wide counts of top-k's
    bisection sit behind a branch on top_k < vocab (sampling[1]), each of them behind one on no count of
    exactly k yet (found), and each top-p round after the first behind one on top_p < 1 (sampling[2]) and no
    draw kept yet, all marked thread-invariant for ThreadSync."""
    sched, tgt, _ = C.build_scheduled(CFG, "cuda", "float32", "default", arch="sm_90a")
    kernel = cuda_kernels(sched, tgt)["sample_advance_n1_kernel"]
    branch = kernel.index("if ((sampling_ptr[1] < ")
    halvings = kernel.index("for (int64_t it = (int64_t)0; it < (int64_t)31; ++it)")
    assert branch < halvings and kernel.index("if ((found_ptr[0] == 0))", halvings) < kernel.index("t_count", halvings)
    rounds = kernel.index("for (int r = 0; r < 32; ++r)")
    branch = kernel[rounds:kernel.index("t_best_ptr", rounds)]
    assert "(r == 0) ||" in branch and "sampling_ptr[2] < 0x1p+0f" in branch and "done_ptr[0] == 0" in branch


def test_decode_uses_cuda_graphs():
    sched, tgt, _ = C.build_scheduled(CFG, "cuda", "float32", "default", arch="sm_90a")
    with tgt, C.tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
        lowered = C.relax.get_pipeline("default_build")(sched.mod)
    for fn in ("decode", "decode_greedy", "decode_sample"):       # every decode step: one graph replay
        assert "vm.builtin.cuda_graph.run_or_capture" in lowered[fn].script(), fn


def test_a_rule_list_that_leaves_a_kernel_unscheduled_is_an_error():
    with pytest.raises(RuleError, match="embedding"):
        C.build_scheduled(CFG, "cuda", "float32", ["gemv"], arch="sm_90a")


def cuda_kernels(sched, tgt) -> dict[str, str]:
    """Kernel name -> its CUDA C (the last of the source's declaration and definition)."""
    source = C.device_module(C.codegen(sched, tgt).mod, "cuda").inspect_source()
    return dict(re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\((.*?)(?=extern "C"|\Z)',
                           source, re.S))


# n_embd 128: every linear dimension is over the 64 under which DLight's Matmul keeps CUDA cores
TC_CFG = GPT2Config(vocab_size=50257, n_positions=64, n_embd=128, n_layer=1, n_head=2)


def test_fp16_prefill_linears_use_tensor_cores_on_sm_90a():
    """DLight's Matmul tensorizes fp16 matmuls with WMMA on sm_70+; TVM 0.27 reads "sm_90a" as no
    version at all (tvm_shim.py fixes it), and apache-tvm-ffi 0.1.15 segfaults in tensorize (pinned)."""
    sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", "default", arch="sm_90a")
    # the lowered device kernels, not their CUDA C: nvcc's build of them took about 80 s here, and
    # CUDA's codegen turns each tvm_mma_sync into a wmma::mma_sync (the tests below read the CUDA C)
    kernels = {name: f.script() for name, f in device_kernels(sched, tgt).items()}
    for name in ("linear_qkv_kernel", "linear_fc_gelu_kernel", "linear_mlp_proj_kernel", "linear_attn_proj_kernel"):
        assert "T.tvm_mma_sync" in kernels[name], name
    assert "T.tvm_mma_sync" not in kernels["linear_qkv_n1_kernel"]      # decode's n = 1 stays a GEMV


def test_tensor_core_matmul_puts_attention_on_tensor_cores():
    """tensor-core-matmul before the default list: attention's q.k^T and p.v (K = head_dim = 64 and
    N = 64, which DLight's Matmul keeps on CUDA cores) are tensorized too; what it does not take
    (fp32, decode's n = 1) goes to DLight's rules."""
    rules = ["tensor-core-matmul", "matmul", "gemv", "reduction", "general-reduction", "fallback"]
    sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", rules, arch="sm_90a")
    assert sched.rule_of["attn_scores"] == "tensor-core-matmul"
    assert sched.rule_of["linear_qkv"] == "tensor-core-matmul"
    assert sched.rule_of["attn_values"] == "tensor-core-matmul" and sched.rule_of["linear_qkv_n1"] == "gemv"
    kernels = cuda_kernels(sched, tgt)
    assert "wmma::mma_sync" in kernels["attn_scores_kernel"] and "wmma::mma_sync" in kernels["attn_values_kernel"]
    fp32, _, _ = C.build_scheduled(TC_CFG, "cuda", "float32", rules, arch="sm_90a")
    assert "tensor-core-matmul" not in fp32.rule_of.values()            # WMMA here is fp16 only


def test_flash_prefill_is_one_tensor_core_kernel_for_attention():
    """`tuned` has flash-prefill: prefill's scores, softmax and values are one kernel (WMMA in fp16);
    in fp32 the same kernel with plain dot products. Its linears go to tensor-core-matmul-async."""
    sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", "tuned", arch="sm_90a")
    assert sched.rule_of["flash_attention"] == "hand-scheduled"
    assert sched.rule_of["linear_qkv"] == "tensor-core-matmul-async"    # first in `tuned` (tensor_core.py)
    assert not {"attn_scores", "causal_softmax", "attn_values"} & set(sched.rule_of)
    assert "wmma::mma_sync" in cuda_kernels(sched, tgt)["flash_attention_kernel"]
    fp32, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float32", "tuned", arch="sm_90a")
    assert "wmma" not in cuda_kernels(fp32, tgt)["flash_attention_kernel"]


def test_gpu_decode_is_five_calls_per_layer_of_hand_scheduled_fusions():
    """On a GPU, decode's kv_append + scores + softmax + values are one call (kernels/attention.py:
    make_decode_attention: a kernel over chunks of keys, and one merging them), each layernorm folds
    into the linear after it and the MLP's c_proj carries the residual add (kernels/ln_linear.py); no
    rule schedules those. The attention's block-wide max and sum become warp shuffles. Asked for by the rule
    list's `fused-decode` (preset `fused`; `default` keeps the plain graph)."""
    from tinygpt2.runtime.plan import build_plan

    sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", ["fused-decode", "gemv", "fallback"],
                                      arch="sm_90a")                                      # head_dim 64
    assert sched.rule_of["decode_attention_n1"] == C.HAND_SCHEDULED
    assert not {"kv_append_n1", "attn_scores_n1", "causal_softmax_n1", "attn_values_n1"} & set(sched.rule_of)
    layer = [ln.kernel for ln in build_plan(sched.mod, "decode").launches if ln.name.startswith("h0_")]
    assert layer == ["ln_linear_qkv_n1", "decode_attention_n1", "linear_attn_proj_n1",   # 5 calls, not 10
                     "ln_linear_fc_gelu_n1", "linear_mlp_proj_n1"]
    assert {sched.rule_of[k] for k in layer if k != "linear_attn_proj_n1"} == {C.HAND_SCHEDULED}
    assert sched.rule_of["linear_attn_proj_n1"] == "gemv"                   # DLight's was faster there
    assert "kv_append" in sched.rule_of                                 # prefill keeps its four kernels
    kernels = cuda_kernels(sched, tgt)
    assert "__shfl_down_sync" in kernels["decode_attention_n1_kernel"]      # one block per (head, chunk)
    assert "o_part" in kernels["decode_attention_n1_kernel_1"]               # the chunks merged per head
    # rows of K and V read 16 bytes a load (8 halves; WebGPU's build takes 4)
    assert "= *(uint4*)(k_cache_ptr" in kernels["decode_attention_n1_kernel"]
    assert "= *(uint4*)(v_cache_ptr" in kernels["decode_attention_n1_kernel"]


def test_fused_greedy_tail_is_the_head_then_one_kernel_reading_its_blocks_candidates():
    """With fused-decode, decode_greedy's ln_f + lm_head + argmax + advance (five kernels in the plain graph) are
    two: the head (kernels/lm_head.py), which also leaves each of its blocks' best logit and its id, and one block
    of 1024 threads (kernels/argmax.py: make_argmax_advance_gpu with parts) that picks among those candidates --
    one load of each a thread, 524 for GPT-2's vocabulary -- and feeds the next step; its reductions are warp
    shuffles. decode (logits out) keeps the head without the candidates."""
    from tinygpt2.runtime.plan import build_plan

    sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float32", ["fused-decode", "gemv", "general-reduction",
                                                                   "fallback"], arch="sm_90a")
    tail = [ln.kernel for ln in build_plan(sched.mod, "decode_greedy").launches][-2:]
    assert tail == ["ln_f_lm_head_argmax_n1", "argmax_advance_n1"]
    assert sched.rule_of["argmax_advance_n1"] == sched.rule_of["ln_f_lm_head_argmax_n1"] == C.HAND_SCHEDULED
    assert [ln.kernel for ln in build_plan(sched.mod, "decode").launches][-1] == "ln_f_lm_head_n1"
    assert not {"argmax_n1", "advance_n1", "layernorm_n1", "lm_head_n1"} & set(sched.rule_of)   # not built
    source = C.device_module(C.codegen(sched, tgt).mod, "cuda").inspect_source()
    kernel = cuda_kernels(sched, tgt)["argmax_advance_n1_kernel"]
    assert "__launch_bounds__(1024) argmax_advance_n1_kernel" in source
    assert kernel.count("logits_ptr[") == 1 and "for (" not in kernel           # one candidate a thread, no loop
    assert "__shfl_down_sync" in kernel


def test_hand_softmax_reads_each_score_once():
    """`hand-softmax` swaps prefill's causal softmax for make_causal_softmax_gpu: one global read of a
    score per key a thread holds (n_ctx 64: one), where GeneralReduction's schedule reads the row in
    each of its three passes."""
    rules = ["hand-softmax", "general-reduction", "gemv", "fallback"]
    sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", rules, arch="sm_90a")
    assert sched.rule_of["causal_softmax"] == C.HAND_SCHEDULED
    assert cuda_kernels(sched, tgt)["causal_softmax_kernel"].count("scores_ptr[") == 1
    sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", rules[1:], arch="sm_90a")
    assert sched.rule_of["causal_softmax"] == "general-reduction"
    assert cuda_kernels(sched, tgt)["causal_softmax_kernel"].count("scores_ptr[") >= 3


def test_small_block_gemv_is_dlights_gemv_with_a_quarter_of_the_threads():
    """small-block-gemv schedules what GEMV does, as for a GPU of at most 128 threads a block."""
    def bounds(rule):
        sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", [rule, "fallback"], arch="sm_90a")
        assert sched.rule_of["linear_mlp_proj_n1"] == rule
        source = C.device_module(C.codegen(sched, tgt).mod, "cuda").inspect_source()
        return int(re.search(r"__launch_bounds__\((\d+)\) linear_mlp_proj_n1_kernel\(", source).group(1))
    assert (bounds("gemv"), bounds("small-block-gemv")) == (512, 128)


def test_tiled_matmul_takes_float32_matmuls():
    """`tiled-matmul` (in `tuned` and `fused`, before `matmul`): DLight's Matmul with 64 x 64 tiles of 128
    threads (DLight's: 32 x 64, 128 threads), for float32 matmuls; float16 kernels go on to the rules after
    it, and so do those narrower than `min_out` when it is given."""
    from tinygpt2 import kernels as K
    from tinygpt2.rules import TiledMatmul
    from tinygpt2.targets import make_target

    rule, target = TiledMatmul(), make_target("cuda", "sm_90a")
    assert rule.apply(K.make_linear(1600, 4800, "float16"), target, False) is None
    assert TiledMatmul(min_out=4096).apply(K.make_linear_residual(1600, 1600, "float32"), target, False) is None
    sch = rule.apply(K.make_linear_residual(1600, 1600, "float32"), target, False)
    assert "__launch_bounds__(128)" in cuda_source({"main": sch.mod["main"]})
    sched, _, _ = C.build_scheduled(CFG, "cuda", "float32", "fused", arch="sm_90a")
    assert {sched.rule_of[f"linear_{name}"] for name in ("qkv", "attn_proj", "fc_gelu", "mlp_proj")} == {"tiled-matmul"}
    assert sched.rule_of["ln_linear_qkv_n1"] == "hand-scheduled"       # decode's linears are not matmuls


def test_tiled_matmul_stores_its_tiles_k_major():
    """rules.to_k_major: in shared memory A's and B's 64-row tiles are stored as 16 k's of 64 + 4 floats
    (DLight: 64 rows of 16 + 4 k's). A thread's 4 rows of A and 8 columns of B at one k then lie side by
    side, so in SASS a K-step of 16 is 16 x (1 + 2) 16-byte loads for its 16 x 32 FMAs, and nothing else
    from shared memory."""
    from tinygpt2 import kernels as K
    from tinygpt2.rules import TiledMatmul
    from tinygpt2.targets import make_target

    target = make_target("cuda", "sm_90a")

    def float_arrays(rule):
        func = rule.apply(K.make_linear(1600, 4800, "float32"), target, False).mod["main"]
        return sorted(n for t, n in shared_arrays(cuda_source({"main": func})).values() if t == "float"), func

    # K-steps of 16, no prefetch: the tile as it was measured K-major (the default's K-steps are 32)
    k_major, func = float_arrays(TiledMatmul(k=16, prefetch=False))
    dlight, _ = float_arrays(TiledMatmul(k=16, prefetch=False, k_major=False))
    assert k_major == [16 * (64 + 4)] * 2 and dlight == [64 * (16 + 4)] * 2
    ops = (op.split()[0].removesuffix(".FTZ") for op in sass({"lin": func})["lin_kernel"])  # fast math: FTZ
    assert collections.Counter(op for op in ops if op.startswith(("LDS", "FFMA"))) == {"FFMA": 512, "LDS.128": 48}


def test_tiled_matmul_loads_the_next_k_step_into_registers_during_this_one():
    """rules.prefetch_to_registers (tiled-matmul's default): each K-step of the CUDA C first loads the next
    step's tiles from global memory into a thread's registers (four 16-byte vectors each of A and B: 64 x 32
    floats over 128 threads), then, between two barriers, computes this step from shared memory, then stores
    the registers into shared memory. One copy of the tiles in shared memory (32 k's of 64 + 4 floats
    each), and the registers stay registers: no stack frame in ptxas's report."""
    from tinygpt2 import kernels as K
    from tinygpt2.rules import TiledMatmul
    from tinygpt2.targets import make_target

    func = TiledMatmul().apply(K.make_linear(1600, 4800, "float32"), make_target("cuda", "sm_90a"), False)
    source = cuda_source({"main": func.mod["main"]})
    assert sorted(n for _, n in shared_arrays(source).values()) == [32 * (64 + 4)] * 2
    assert re.findall(r"float4 (\w+_local_ptr)\[4\]", source) == ["x_reindex_pad_shared_local_ptr",
                                                                   "w_reindex_shared_local_ptr"]
    loop = source[source.index("for (int64_t ax3_0"):]                   # the K loop, from its first line
    load = max(re.search(rf"{buf}_local_ptr\[(\(int64_t\))?3\] = ", loop).start()
               for buf in ("x_reindex_pad_shared", "w_reindex_shared"))       # each copy's last vector
    bar1 = loop.index("__syncthreads()")
    fma = loop.index("acc_reindex_pad_local_ptr[0]")
    bar2 = loop.index("__syncthreads()", fma)
    store = loop.index("x_reindex_pad_shared_ptr[", bar2)
    assert load < bar1 < fma < bar2 < store
    report = nvcc({"main": func.mod["main"]}, "cubin", *TVM_FLAGS, "-Xptxas=-v", report=True)
    assert re.findall(r"(\d+) bytes stack frame", report) == ["0"]


def device_kernels(sched, tgt) -> dict:
    """Kernel name -> its device PrimFunc after the TIR pipeline CUDA builds take (launch tags set; no nvcc)."""
    from tinygpt2.tvm_shim import pdl_tir_pipeline, tirx, tvm

    prims = tvm.IRModule({gv: f for gv, f in sched.mod.functions_items() if isinstance(f, tirx.PrimFunc)})
    pipeline = tirx.get_tir_pipeline(pdl_tir_pipeline())[0]
    with tgt, C.tir_pass_context(tgt):
        lowered = pipeline(tirx.transform.BindTarget(tgt)(prims))
    return {gv.name_hint: f for gv, f in lowered.functions_items()
            if f.attrs is not None and "tirx.kernel_launch_params" in f.attrs}


def test_tensor_core_matmul_async_streams_tiles_with_cp_async():
    """`tensor-core-matmul-async` (tinygpt2/tensor_core.py): the same WMMA math as DLight's schedule, but
    A's and B's tiles go global -> shared by cp.async, 16 bytes a copy, in commit groups kept in flight;
    x's rows past n (the tile is padded to 128 rows) by the predicated form. One kernel, lowered only."""
    from types import SimpleNamespace

    from tinygpt2.kernels import make_linear_gelu
    from tinygpt2.rules import resolve
    from tinygpt2.targets import make_target
    from tinygpt2.tvm_shim import tvm

    (rule,), tgt = resolve(["tensor-core-matmul-async"], "cuda"), make_target("cuda", "sm_90a")
    sch = rule.apply(make_linear_gelu(128, 512, "float16"), tgt, False)
    kernel = device_kernels(SimpleNamespace(mod=tvm.IRModule({"linear_fc_gelu": sch.mod["main"]})), tgt)
    script = kernel["linear_gelu_kernel"].script()
    copies = re.findall(r"T\.s_tir\.cp_async_raw\((.*)\)", script)
    x_copies = [c for c in copies if "x.data" in c]
    assert copies and all(", 16" in c for c in copies)                  # 16-byte copies
    assert x_copies and all(c.endswith("< n") for c in x_copies)      # x's: predicated on the row < n
    assert "async_commit_queue_scope" in script and "T.tvm_mma_sync" in script
    # fp32 (no WMMA for it here) and decode's n = 1 GEMV are not its kernels
    assert rule.apply(make_linear_gelu(128, 512, "float32"), tgt, False) is None
    assert rule.apply(make_linear_gelu(128, 512, "float16", seq_len=1), tgt, False) is None


def first_read(code: str, buf: str) -> int:
    """Where a kernel's script first reads buf (not counting the address read_coherently takes)."""
    return re.search(rf"(?<!address_of\()\b{buf}\[", code).start()


def test_pdl_decode_kernels_load_weights_then_wait_and_are_launched_with_pdl():
    """`pdl-decode` (kernels/_pdl.py; in preset `fused`): decode's hand kernels issue their weight loads,
    then wait for the previous kernel before reading x; the TIR pipeline gives exactly those kernels
    TVM's PDL launch tag. The attention's c_proj is hand-scheduled too and prefetches its weights before
    the wait; the attention's two kernels, bound by latency, let the next kernel launch at once, so that
    it streams those weights in during the attention. The linears let the next one launch as their blocks
    exit; variant `pdl-decode-loaded` once a linear's loads are used. The attention's c_proj loads its bias
    with W (model.PRELOAD_LINEARS). The head (ln_f + lm_head, kernels/lm_head.py) loads its first rows of wte before
    the wait and never lets the sampler after it launch early. Kernels not written for PDL (the embedding, the
    sampler) keep the ordinary launch, which waits for all before it."""
    from tinygpt2.tvm_shim import PDL_LAUNCH_TAG

    pdl = {"ln_linear_qkv_n1_kernel", "decode_attention_n1_kernel", "decode_attention_n1_kernel_1",
           "linear_attn_proj_n1_kernel", "ln_linear_fc_gelu_n1_kernel", "linear_mlp_proj_n1_kernel",
           "ln_f_lm_head_n1_kernel", "ln_f_lm_head_argmax_n1_kernel"}
    for entry in ("pdl-decode", "pdl-decode-loaded"):
        sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", [entry, "fused-decode", "gemv", "fallback"],
                                          arch="sm_90a")
        assert sched.rule_of["linear_attn_proj_n1"] == C.HAND_SCHEDULED
        kernels = device_kernels(sched, tgt)
        assert {name for name, f in kernels.items() if PDL_LAUNCH_TAG in f.attrs["tirx.kernel_launch_params"]} == pdl
        for name, f in kernels.items():
            code = f.script()
            assert ('griddepcontrol("wait"' in code) == (name in pdl), name
            if name not in pdl:
                continue
            wait = code.index('griddepcontrol("wait"')
            launch = code.find('griddepcontrol("launch_dependents"')
            if name.startswith(("ln_linear", "linear_")):
                assert code.index("w[") < wait < first_read(code, "x")
                assert launch == -1 if entry == "pdl-decode" else first_read(code, "x") < launch
                # the attention's c_proj: W's lines prefetched into L2 before the wait (prefetch_w)
                assert ("prefetch(T.address_of(w[" in code[:wait]) == (name == "linear_attn_proj_n1_kernel"), name
                # ... and loads its bias with W, before the wait (model.PRELOAD_LINEARS); the others after the sum
                assert (re.search(r"\bb\[", code).start() < wait) == (name == "linear_attn_proj_n1_kernel"), name
            elif name.startswith("ln_f_lm_head"):          # its first group's rows of wte, then x
                assert code.index("wte[") < wait < first_read(code, "x") and launch == -1
            else:                                          # the attention's chunks and merge: the next one at once
                assert -1 < launch < wait
            if name == "decode_attention_n1_kernel":       # the cache's K and V rows, then qkv
                assert max(code.index("k_cache["), code.index("v_cache[")) < wait < first_read(code, "qkv")
    # before Hopper there is no griddepcontrol: the entry is dropped, the kernels are the plain fused ones
    sm80, _, _ = C.build_scheduled(TC_CFG, "cuda", "float16", ["pdl-decode-loaded", "fused-decode", "gemv",
                                                               "fallback"], arch="sm_80")
    assert sm80.rule_of["linear_attn_proj_n1"] == "gemv"
    assert "griddepcontrol" not in sm80.mod["ln_linear_qkv_n1"].script()


def test_c_fc_can_prefetch_the_mlp_c_proj_weights_into_l2(monkeypatch):
    """model.FC_PREFETCH_PROJ (kernels/ln_linear.py's prefetch_next): where the MLP's c_proj is a pipelined grid
    (gpt2-xl; here model.PIPE_MIN_GROUPS lowered to 1, so that this small model's is), c_fc takes the c_proj's
    weights as one more input and each of its blocks brings its slice of their first 1/fraction into L2 by one
    bulk prefetch, after the PDL wait; at 0, or before a one-wave c_proj, c_fc has no such input."""
    from tinygpt2 import model as M

    one_wave = M.PIPE_MIN_GROUPS                       # (this model's c_proj gets 1 group a block: not pipelined)

    def c_fc(prefetch, min_groups=1):
        monkeypatch.setattr(M, "FC_PREFETCH_PROJ", prefetch)
        monkeypatch.setattr(M, "PIPE_MIN_GROUPS", min_groups)
        sched, tgt, _ = C.build_scheduled(TC_CFG, "cuda", "float16", "fused", arch="sm_90a")
        return device_kernels(sched, tgt)["ln_linear_fc_gelu_n1_kernel"].script()

    C_, F = TC_CFG.n_embd, 4 * TC_CFG.n_embd
    code = c_fc(8)
    blocks = F // 8                                    # one warp a row, 8 rows a block
    size = C_ * F * 2 // 8 // blocks                   # bytes a block: its slice of W_next's first eighth
    bulk = re.search(r'T\.ptx\.cp\(T\.address_of\(w_next\[.*?\]\), T\.uint32\((\d+)\), "async", "bulk", "prefetch", '
                     r'"L2"', code)
    assert bulk and int(bulk.group(1)) == size == 256
    assert code.index('griddepcontrol("wait"') < bulk.start()
    assert "w_next" not in c_fc(0)
    assert "w_next" not in c_fc(8, min_groups=one_wave)


# TVM's own nvcc flags (tvm.support.nvcc): fast math, ptxas register level 10
TVM_FLAGS = ("--use_fast_math", "--ptxas-options=--register-usage-level=10")


def cuda_source(funcs: dict) -> str:
    """PrimFuncs (name -> func, each exported under its name) built for sm_90a as compile.py builds CUDA
    (TVM's TIR pipeline with the PDL launch tag): their CUDA C."""
    from tinygpt2 import targets as TG
    from tinygpt2.tvm_shim import pdl_tir_pipeline, tvm

    tgt = TG.make_target("cuda", "sm_90a")
    with tgt:
        ex = tvm.compile(tvm.IRModule({k: f.with_attr("global_symbol", k) for k, f in funcs.items()}), target=tgt,
                         tir_pipeline=pdl_tir_pipeline())
    return C.device_module(ex.mod, "cuda").inspect_source()


def shared_arrays(src: str) -> dict[str, tuple[str, int]]:
    """CUDA C's static shared arrays: name -> (element type, count)."""
    return {name: (t, int(count))
            for t, name, count in re.findall(r"__shared__ alignas\(\d+\) (half|float) (\w+)\[(\d+)\]", src)}


def nvcc(funcs: dict, out: str, *flags: str, report: bool = False):
    """cuda_source(funcs) compiled by nvcc to `out` ("ptx", "cubin") with flags: the file's bytes; with
    report, nvcc's stderr instead (ptxas's -v report)."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.cu").write_text(cuda_source(funcs))
        run = subprocess.run(["nvcc", f"--{out}", "-O3", "-arch=sm_90a", *flags, "-o", f"{tmp}/k.{out}",
                              f"{tmp}/k.cu"], check=True, capture_output=True, text=True)
        return run.stderr if report else (Path(tmp) / f"k.{out}").read_bytes()


def ptx_loads(func) -> dict[str, int]:
    """A kernel's global loads in the PTX nvcc makes of its CUDA C: {'ld.global.nc.v4.u32': n, ...}."""
    ptx = nvcc({"main": func}, "ptx").decode()
    return collections.Counter(re.findall(r"ld\.global(?:\.nc)?(?:\.v[24])?\.\w+", ptx))


def test_decode_linears_fit_32_registers_in_float16():
    """Decode's linears stream W in one wave only while every block is resident: 8 blocks of 256 threads an
    SM, so at most 32 registers a thread (gpt2-xl's c_fc is 800 blocks on 132 SMs). Variants that needed
    more (48, 80-103) were slower by 5-50% (kernels/ln_linear.py); this is ptxas's count with TVM's flags."""
    from tinygpt2.config import PRESETS
    from tinygpt2.kernels.ln_linear import make_linear_residual_decode, make_ln_linear_decode

    C = PRESETS["gpt2-xl"].n_embd
    out = nvcc({"qkv": make_ln_linear_decode(C, 3 * C, "float16", pdl="exit"),
                "fc": make_ln_linear_decode(C, 4 * C, "float16", gelu=True, pdl="exit"),
                # (with model.FC_PREFETCH_PROJ's prefetch, held there by __launch_bounds__(256, 8): 34 without)
                "fc_next": make_ln_linear_decode(C, 4 * C, "float16", gelu=True, pdl="exit",
                                                 prefetch_next=(C, 4 * C, 8)),
                "mlp_proj": make_linear_residual_decode(4 * C, C, "float16", pdl="exit")},
               "cubin", *TVM_FLAGS, "-Xptxas=-v", report=True)
    used = dict(re.findall(r"entry function '(\w+)_kernel'.*?Used (\d+) registers", out, re.S))
    assert set(used) == {"qkv", "fc", "fc_next", "mlp_proj"} and all(int(n) <= 32 for n in used.values()), used
    assert set(re.findall(r"(\d+) bytes spill stores", out)) == {"0"}


def test_pdl_kernels_read_activations_with_coherent_loads():
    """Under PDL a kernel's inputs are written by the kernel before it until `griddepcontrol.wait`
    returns. TVM marks every pointer __restrict__, so what a kernel only reads is loaded with
    ld.global.nc, which ptxas may move across the wait (kernels/_pdl.py, read_coherently). ln_linear
    (x), the MLP's c_proj (x, the residual) and the attention's chunks (qkv) read their activations with
    plain ld.global, which stays after it; the weights and the cache rows of earlier steps stay
    read-only. (The attention's merge is checked in SASS instead: the next test.)"""
    from tinygpt2.kernels.attention import make_decode_attention
    from tinygpt2.kernels.ln_linear import make_linear_residual_decode, make_ln_linear_decode

    # ln + linear, C = 1024 fp16: 32 lanes x 4 vectors of 8 halves a row; then its bias and row sum
    loads = ptx_loads(make_ln_linear_decode(1024, 64, "float16", pdl="exit"))
    assert loads["ld.global.nc.v4.u32"] == 4 and loads["ld.global.v4.u32"] == 4      # W read-only, x coherent
    assert loads["ld.global.nc.u16"] == 1 and loads["ld.global.nc.f32"] == 1

    # c_proj + residual, K = 1024 fp16: 32 lanes x 4 vectors of 8 halves a row
    loads = ptx_loads(make_linear_residual_decode(1024, 64, "float16", pdl="exit"))
    assert loads["ld.global.nc.v4.u32"] == 4 and loads["ld.global.v4.u32"] == 4      # W read-only, x coherent
    assert loads["ld.global.u16"] == 1                                                 # the residual r
    # without PDL nothing is written under a kernel's feet: everything it only reads stays read-only
    assert "ld.global.v4.u32" not in ptx_loads(make_linear_residual_decode(1024, 64, "float16"))
    # decode attention, head_dim 64: qkv's q, k, v as 16-byte vectors, coherent; K's and V's cache rows
    # (8 + 8 a thread) coherent too, since their prefetch before the wait takes the caches' addresses
    # (attention.py's kv_prefetch: what keeps them before the wait, the next test)
    loads = ptx_loads(make_decode_attention(2, 64, 128, "float16", "exit", 8))
    assert loads["ld.global.v4.u32"] == 8 + 8 + 1 + 16 and loads["ld.global.nc.v4.u32"] == 0


def cuobjdump_sass(cubin) -> str:
    """cuobjdump -sass of a cubin file, with nvdisasm beside it (the nvidia-cuda-cuobjdump / -nvdisasm wheels of
    the test extras); skips where they are not installed (the lent GPU machine's torch has no cuobjdump)."""
    import os
    import subprocess
    from pathlib import Path

    nvidia = pytest.importorskip("nvidia", reason="the nvidia-cuda-cuobjdump wheel (test extras) reads the SASS")
    cuobjdump = next(Path(p) / "cu13" / "bin" / "cuobjdump" for p in nvidia.__path__)
    if not cuobjdump.exists():
        pytest.skip(f"no cuobjdump at {cuobjdump} (the test extras' nvidia-cuda-cuobjdump wheel)")
    return subprocess.run([str(cuobjdump), "-sass", str(cubin)], check=True, capture_output=True, text=True,
                          env={**os.environ, "NVDISASM_PATH": str(cuobjdump.parent)}).stdout


def sass(funcs: dict) -> dict[str, list[str]]:
    """Kernel name -> its SASS instructions, for PrimFuncs built for sm_90a (nvcc, then cuobjdump_sass)."""
    import tempfile
    from pathlib import Path

    cubin = nvcc(funcs, "cubin", *TVM_FLAGS)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.cubin").write_bytes(cubin)
        out = cuobjdump_sass(Path(tmp) / "k.cubin")
    kernels, name = {}, None
    for line in out.splitlines():
        if "Function :" in line:
            name = line.split(":")[1].strip()
            kernels[name] = []
        elif name and (m := re.search(r"/\*[0-9a-f]{4}\*/\s+(.*?);", line)):
            kernels[name].append(m.group(1).strip())
    return kernels


@pytest.mark.parametrize("size", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_decode_attention_in_sass_cache_loads_before_the_wait_merge_loads_after(size):
    """What ptxas made of decode attention's two PDL kernels, for every Hub size and dtype.

    The chunks kernel: every load of its K and V rows (D / VEC of each a thread) is issued before the wait
    (ACQBULK), so that their memory latency passes while the kernel waits for qkv; after the wait, only
    qkv's q, k and v. Without the rows' L2 prefetch (attention.py's kv_prefetch) ptxas issued K's after
    the wait and V's after the block reductions: 4.16 instead of 3.58 us a call, gpt2-xl on an H200.

    The merge (the chunks' partials) keeps its read-only loads of activations: coherent ones cost 0.3 us
    a call on an H200 (the SASS of that day had every one of them after the wait already;
    docs/results/README.md). So this checks that the wait comes before any load from global memory.
    Should a later ptxas hoist a load above it, the merge needs _pdl.read_coherently too. (ln_linear,
    which kept read-only loads of x until its layernorm was folded, reads x coherently since: the test
    before.)"""
    from tinygpt2.config import PRESETS
    from tinygpt2.kernels.attention import make_decode_attention
    from tinygpt2.kernels.ln_linear import ITEMSIZE, VECTOR_BYTES

    cfg = PRESETS[size]
    C, H = cfg.n_embd, cfg.n_head
    for dtype in ("float16", "float32"):
        kernels = sass({"attn": make_decode_attention(H, C // H, cfg.n_positions, dtype, "exit", 8)})
        code = kernels["attn_kernel"]        # the chunks
        wait = next(i for i, ins in enumerate(code) if ins.startswith("ACQBULK"))
        rows = 2 * (C // H) * ITEMSIZE[dtype] // VECTOR_BYTES                         # K's and V's, 16 bytes a load
        qkv = rows + 1                       # q's and the new k's D / VEC a thread, then the new v's one VEC
        vector_loads = [i for i, ins in enumerate(code) if re.match(r"(@!?P\d+\s+)?LDG\.E\.128", ins)]
        assert sum(i < wait for i in vector_loads) == rows, (size, dtype, code[:wait + 1])
        assert sum(i > wait for i in vector_loads) == qkv, (size, dtype)
        code = kernels["attn_kernel_1"]      # the merge (the chunks read qkv coherently: the test before)
        wait = next(i for i, ins in enumerate(code) if ins.startswith("ACQBULK"))
        loads = [i for i, ins in enumerate(code) if re.match(r"(@!?P\d+\s+)?LDG", ins)]
        assert loads and wait < loads[0], (size, dtype, code[:wait + 1])              # up to the wait


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_attention_c_proj_issues_its_weight_loads_before_the_wait_in_sass(dtype):
    """The attention's c_proj is launched while the attention runs, so that its weights stream in then: that
    needs its loads of W issued before the wait (ACQBULK), and ptxas keeps them there only with the rows'
    L2 prefetch (prefetch_w; without it, one of gpt2-xl's 7 in fp16). After the wait: x's loads alone."""
    from tinygpt2.config import PRESETS
    from tinygpt2.kernels.ln_linear import _geometry, make_linear_residual_decode

    C = PRESETS["gpt2-xl"].n_embd
    ko = _geometry(C, C, dtype, 8)["ko"]                            # W's 16-byte loads a thread, and x's
    for prefetch in (True, False):
        code = sass({"proj": make_linear_residual_decode(C, C, dtype, pdl="exit", prefetch_w=prefetch)})["proj_kernel"]
        wait = next(i for i, ins in enumerate(code) if ins.startswith("ACQBULK"))
        loads = [i for i, ins in enumerate(code) if re.match(r"(@!?P\d+\s+)?LDG\.E\.128", ins)]
        before = sum(i < wait for i in loads)
        assert len(loads) == 2 * ko and (before == ko if prefetch else before < ko), (dtype, prefetch, before)


def test_tvmscript_writes_the_release_acquire_counter_a_persistent_kernel_needs():
    """docs/persistent_decode.md's counter, as written there: thread 0 of each block adds to a global counter
    with release semantics, then spins on acquire loads until every block of its round has arrived. TVM 0.27's
    T.ptx table renders both as the memory model's instructions, the wait a loop around the acquire load."""
    from tinygpt2.tvm_shim import T

    NB = T.uint32(8)

    @T.prim_func(s_tir=True)
    def counter(arrived: T.Buffer((1,), "uint32"), out: T.Buffer((8,), "uint32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for b in T.thread_binding(T.int64(8), thread="blockIdx.x"):
            for t in T.thread_binding(T.int64(32), thread="threadIdx.x"):
                with T.sblock("arrive"):
                    T.reads()
                    T.writes(out[b])
                    old = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                    now = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                    if t == T.int64(0):
                        T.ptx.atom.release.gpu.global_.add.u32(old[0], T.address_of(arrived[0]), T.uint32(1))
                        T.ptx.ld.acquire.gpu.global_.u32(now[0], T.address_of(arrived[0]))
                        while now[0] < (old[0] // NB + T.uint32(1)) * NB:
                            T.ptx.ld.acquire.gpu.global_.u32(now[0], T.address_of(arrived[0]))
                        out[b] = old[0]

    ptx = nvcc({"counter": counter}, "ptx").decode()
    body = ptx[ptx.index("atom."):]
    assert body.startswith("atom.release.gpu.global.add.u32")
    # the spin: a label, the acquire load, a compare, and a branch back to the label
    loop = re.search(r"(\$L__BB\d+_\d+):\s*\n(?:.*\n)*?\s*ld\.acquire\.gpu\.global\.u32[^\n]*\n(?:.*\n)*?\s*@%p\d+ bra\s+\1;", body)
    assert loop, body[:800]


def test_tvmscript_writes_the_tma_ring_a_streaming_decode_kernel_needs():
    """docs/persistent_decode.md's weight stream: a ring of S chunks of shared memory that thread 0 fills by TMA
    (cp.async.bulk, completing on a per-stage mbarrier that expects the chunk's bytes) and refills once the block
    has read a chunk, every thread waiting on the stage's mbarrier phase. TVM 0.27's T.ptx table writes each
    instruction ("::" in a PTX token is "__" in its name, Python keywords take a trailing "_"); ptxas builds it
    for sm_90a. The kernel is scripts/bench_tvm_ring.py's (one block here), which times it on the GPU machine."""
    from scripts_loader import load_script

    S, CB, NCH, NT = 2, 4096, 4, 128                   # stages, bytes a chunk, chunks, threads
    ring = load_script("bench_tvm_ring").make_ring_read(1, NCH, S, CB, NT)   # the kernel, read there
    ptx = nvcc({"ring": ring}, "ptx").decode()
    copy = "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
    assert ptx.count("mbarrier.init.shared.b64") == S and ptx.count(copy) == 2 * S   # prologue and refill
    assert ptx.count("mbarrier.arrive.expect_tx.shared.b64") == 2 * S
    # the wait: a loop around try_wait.parity; the refill: the proxy fence, then the copy
    assert re.search(r"(\$L__BB\d+_\d+):\s*\n(?:.*\n)*?.*mbarrier\.try_wait\.parity\.shared\.b64(?:.*\n)*?\s*@%p\d+ bra\s+\1;", ptx)
    refill = ptx[ptx.index("fence.proxy.async.shared::cta"):]
    assert copy in refill
    nvcc({"ring": ring}, "cubin")                      # ptxas accepts it for sm_90a


def cluster_exchange(blocks: int = 8, cluster: int = 4):
    """A thread-block cluster's exchange through distributed shared memory, as a head's cluster in
    scripts/bench_head_cluster.py does it: block b (rank r = b % cluster in its cluster) stores b * 10 + r into
    slot r of every block of its cluster (mapa maps its slot's shared address into block t's; st.shared::cluster
    stores there), between two cluster barriers; then each block writes its slots out.
    out[b, t] = (b - r + t) * 10 + t: what block t of b's cluster stored."""
    from tinygpt2.tvm_shim import T

    NB, CL = T.int64(blocks), T.int64(cluster)

    @T.prim_func(s_tir=True)
    def exchange(out: T.Buffer((NB, CL), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for r in T.thread_binding(CL, thread="clusterCtaIdx.x"):         # launched as clusters of CL blocks
            for b in T.thread_binding(NB, thread="blockIdx.x"):
                for t in T.thread_binding(T.int64(32), thread="threadIdx.x"):
                    with T.sblock("exchange"):
                        T.reads()
                        T.writes(out[b, t])
                        slots = T.sblock_alloc_buffer((CL,), "float32", scope="shared")
                        addr = T.sblock_alloc_buffer((1,), "uint32", scope="local")
                        T.ptx.barrier.cluster.arrive.relaxed.aligned()    # every block of the cluster started
                        T.ptx.barrier.cluster.wait.aligned()              # before any store into another's memory
                        if t < CL:
                            T.ptx.mapa.shared__cluster.u32(addr[0], T.cuda.cvta_generic_to_shared(
                                T.address_of(slots[r])), T.Cast("uint32", t))
                            T.ptx.st.shared__cluster.f32(addr[0], T.Cast("float32", b * T.int64(10) + r))
                        T.ptx.barrier.cluster.arrive.release.aligned()    # the stores visible to the cluster ...
                        T.ptx.barrier.cluster.wait.acquire.aligned()      # ... once every block has arrived
                        if t < CL:
                            out[b, t] = slots[t]

    return exchange


def cluster_exchange_ref(blocks: int = 8, cluster: int = 4):
    import numpy as np

    b, t = np.arange(blocks)[:, None], np.arange(cluster)[None, :]
    return ((b - b % cluster + t) * 10 + t).astype("float32")


def test_tvmscript_writes_the_cluster_exchange_a_head_cluster_kernel_needs():
    """docs/persistent_decode.md's cluster per head (scripts/bench_head_cluster.py, raw CUDA there) written in
    TVMScript: a thread binding to clusterCtaIdx.x makes the kernel a cluster launch (TVM 0.27's launch tag; the
    rank is read from %cluster_ctarank), and T.ptx writes mapa, st.shared::cluster and the split cluster barrier.
    ptxas builds it for sm_90a. The test below runs it where there is a GPU."""
    from types import SimpleNamespace

    from tinygpt2 import targets as TG
    from tinygpt2.tvm_shim import tvm

    func = cluster_exchange()
    src = cuda_source({"exchange": func})
    body = src[src.rindex("exchange_kernel("):]
    for ins in ("barrier.cluster.arrive.relaxed.aligned", "barrier.cluster.wait.aligned",
                "mapa.shared::cluster.u32", "st.shared::cluster.f32", "barrier.cluster.arrive.release.aligned",
                "barrier.cluster.wait.acquire.aligned", "%%cluster_ctarank"):
        assert ins in src, ins
    assert body.index("mapa_u32_shared__cluster") < body.index("arrive_release") < body.index("out_ptr[")
    kernel = device_kernels(SimpleNamespace(mod=tvm.IRModule({"exchange": func})), TG.make_target("cuda", "sm_90a"))
    assert "clusterCtaIdx.x" in list(kernel["exchange_kernel"].attrs["tirx.kernel_launch_params"])
    nvcc({"exchange": func}, "cubin")


def test_the_cluster_exchange_runs_as_clusters_on_the_gpu():
    """The same kernel run: only a launch as clusters of 4 gives every block its cluster's values (launched as
    single blocks, mapa into ranks 1-3 would fault)."""
    import numpy as np

    from tinygpt2.compile import build_cuda_kernel
    from tinygpt2.tvm_shim import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU here: the cluster launch runs on the lent GPU machine")
    lib = build_cuda_kernel(cluster_exchange())
    out = tvm.runtime.tensor(np.zeros((8, 4), "float32"), dev)
    lib["main"](out)
    np.testing.assert_array_equal(out.numpy(), cluster_exchange_ref())


def mma_fragments():
    """One warp's two tensor-core products as scripts/bench_flash_mma.py's attention lays them out, in TVMScript:
    S = Q K^T (Q [16, 16] by ldmatrix.x4 as mma's A, K [8 keys, 16] by ldmatrix.x2 as B: K's rows are B's
    columns) and O = S' V (S' = S rounded to fp16, taken from S's accumulators as the A fragment, FA2's trick
    with keys 0-7 only (a2, a3 zero); V [16 keys, 8] by ldmatrix.x2.trans). The accumulators are written out by
    the layout the kernel assumes: lane l holds rows l / 4 and l / 4 + 8, columns 2 (l % 4) and + 1.
    Shared rows padded to 24 halves as flat buffers (TVM compacts a 2-D allocation to the columns it reads)."""
    from tinygpt2.tvm_shim import T

    @T.prim_func(s_tir=True)
    def fragments(q: T.Buffer((16, 16), "float16"), k: T.Buffer((8, 16), "float16"),
                  v: T.Buffer((16, 8), "float16"), s: T.Buffer((16, 8), "float32"), o: T.Buffer((16, 8), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for tx in T.thread_binding(32, thread="threadIdx.x"):
            with T.sblock("fragments"):
                T.reads(q[0:16, 0:16], k[0:8, 0:16], v[0:16, 0:8])
                T.writes(s[0:16, 0:8], o[0:16, 0:8])
                q_s = T.sblock_alloc_buffer((16 * 24,), "float16", scope="shared")
                k_s = T.sblock_alloc_buffer((8 * 24,), "float16", scope="shared")
                v_s = T.sblock_alloc_buffer((16 * 24,), "float16", scope="shared")
                qa = T.sblock_alloc_buffer((4,), "uint32", scope="local")
                kb = T.sblock_alloc_buffer((2,), "uint32", scope="local")
                vb = T.sblock_alloc_buffer((2,), "uint32", scope="local")
                pa = T.sblock_alloc_buffer((4,), "uint32", scope="local")
                acc = T.sblock_alloc_buffer((4,), "float32", scope="local")
                acc2 = T.sblock_alloc_buffer((4,), "float32", scope="local")
                for i in T.serial(8):
                    q_s[(tx * 8 + i) // 16 * 24 + (tx * 8 + i) % 16] = q[(tx * 8 + i) // 16, (tx * 8 + i) % 16]
                for i in T.serial(4):
                    k_s[(tx * 4 + i) // 16 * 24 + (tx * 4 + i) % 16] = k[(tx * 4 + i) // 16, (tx * 4 + i) % 16]
                    v_s[(tx * 4 + i) // 8 * 24 + (tx * 4 + i) % 8] = v[(tx * 4 + i) // 8, (tx * 4 + i) % 8]
                T.tvm_storage_sync("shared")
                T.ptx.ldmatrix.sync.aligned.m8n8.x4.shared.b16(                      # rows 0-15, k 0-7 / 8-15
                    qa[0], qa[1], qa[2], qa[3], T.address_of(q_s[tx % 16 * 24 + tx // 16 * 8]))
                T.ptx.ldmatrix.sync.aligned.m8n8.x2.shared.b16(                      # keys 0-7, d 0-7 / 8-15
                    kb[0], kb[1], T.address_of(k_s[tx % 8 * 24 + tx // 8 % 2 * 8]))
                T.ptx.ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16(                # keys 0-7 / 8-15, d 0-7
                    vb[0], vb[1], T.address_of(v_s[(tx % 8 + tx // 8 % 2 * 8) * 24]))
                for i in T.serial(4):
                    acc[i] = T.float32(0)
                    acc2[i] = T.float32(0)
                T.ptx.mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32(
                    acc[0], acc[1], acc[2], acc[3], qa[0], qa[1], qa[2], qa[3], kb[0], kb[1],
                    acc[0], acc[1], acc[2], acc[3])
                # S's accumulators -> P's A fragment, keys 0-7: a0 row g, a1 row g + 8 (a2, a3: keys 8-15, zero)
                # (two fp16 in a register: the first in the low half, as __floats2half2_rn packs them)
                for i in T.serial(2):
                    pa[i] = T.Cast("uint32", T.reinterpret("uint16", T.Cast("float16", acc[2 * i]))) | (T.Cast(
                        "uint32", T.reinterpret("uint16", T.Cast("float16", acc[2 * i + 1]))) << T.uint32(16))
                pa[2] = T.uint32(0)
                pa[3] = T.uint32(0)
                T.ptx.mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32(
                    acc2[0], acc2[1], acc2[2], acc2[3], pa[0], pa[1], pa[2], pa[3], vb[0], vb[1],
                    acc2[0], acc2[1], acc2[2], acc2[3])
                for e in T.serial(2):
                    s[tx // 4, tx % 4 * 2 + e] = acc[e]
                    s[tx // 4 + 8, tx % 4 * 2 + e] = acc[2 + e]
                    o[tx // 4, tx % 4 * 2 + e] = acc2[e]
                    o[tx // 4 + 8, tx % 4 * 2 + e] = acc2[2 + e]

    return fragments


def mma_fragments_ref(q, k, v):
    s = q.astype("float32") @ k.astype("float32").T                   # [16, 8]
    o = s.astype("float16").astype("float32") @ v[:8].astype("float32")   # keys 0-7 only (a2, a3 zero)
    return s, o


def test_tvmscript_writes_the_tensor_core_fragments_of_an_fa2_attention():
    """The layout scripts/bench_flash_mma.py assumes, in TVMScript (TVM 0.27's T.ptx: ldmatrix, ldmatrix.trans,
    mma.sync.m16n8k16 on local registers): built by ptxas for sm_90a; the test below runs it where there is a GPU."""
    src = cuda_source({"fragments": mma_fragments()})
    for ins in ("ldmatrix.sync.aligned.m8n8.x4.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"):
        assert ins in src, ins
    nvcc({"fragments": mma_fragments()}, "cubin")


def test_the_tensor_core_fragments_match_numpy_on_the_gpu():
    """Run: S = Q K^T and (S in fp16) V over keys 0-7, against numpy -- so the lane layouts the FA2 prototype is
    built on (A by ldmatrix.x4, B from K's rows by ldmatrix.x2, from V's by .trans, C's rows g and g + 8) hold."""
    import numpy as np

    from tinygpt2.compile import build_cuda_kernel
    from tinygpt2.tvm_shim import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU here: the tensor-core fragments run on the lent GPU machine")
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(shape).astype("float16") for shape in ((16, 16), (8, 16), (16, 8)))
    args = [tvm.runtime.tensor(a, dev) for a in (q, k, v, np.zeros((16, 8), "float32"), np.zeros((16, 8), "float32"))]
    build_cuda_kernel(mma_fragments())["main"](*args)
    want_s, want_o = mma_fragments_ref(q, k, v)
    np.testing.assert_allclose(args[3].numpy(), want_s, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(args[4].numpy(), want_o, rtol=1e-2, atol=1e-2)


# a config whose heads are 64 wide (decode-cluster's), small enough to build quickly
CFG64 = GPT2Config(vocab_size=50257, n_positions=64, n_embd=128, n_layer=2, n_head=2)


def check_cluster_kernel(entry: str, kernel: str, gone: set, marks: list) -> str:
    """`entry` in front of `fused` on sm_90a in fp16: every kernel scheduled, `kernel` in place of `gone`, launched
    as clusters (clusterCtaIdx.x) and with PDL, its CUDA in the order of `marks`; in float32 and on sm_80 the
    entry is dropped (fused's decode_attention instead). Returns the fp16 module's CUDA source."""
    from tinygpt2.rules import GPU_FUSED
    from tinygpt2.tvm_shim import PDL_LAUNCH_TAG

    sched, tgt, _ = C.build_scheduled(CFG64, "cuda", "float16", [entry, *GPU_FUSED], arch="sm_90a")
    assert all(sched.rule_of.values()), sched.rule_of
    names = set(sched.rule_of)
    assert kernel in names and not gone & names, names
    params = list(device_kernels(sched, tgt)[f"{kernel}_kernel"].attrs["tirx.kernel_launch_params"])
    assert "clusterCtaIdx.x" in params and PDL_LAUNCH_TAG in params
    src = C.device_module(C.codegen(sched, tgt).mod, "cuda").inspect_source()
    body = src[src.rindex(f"{kernel}_kernel("):]
    at = [body.index(m) for m in marks]
    assert at == sorted(at), dict(zip(marks, at))
    for dtype, arch in (("float32", "sm_90a"), ("float16", "sm_80")):
        plain, *_ = C.build_scheduled(CFG64, "cuda", dtype, [entry, *GPU_FUSED], arch=arch)
        assert "decode_attention_n1" in plain.rule_of and kernel not in plain.rule_of, (dtype, arch)
    return src


def ptxas_usage(func) -> tuple[int, int, int]:
    """(spill store bytes, registers a thread, static shared bytes: 0 where ptxas reports none, as for a kernel with
    only dynamic shared memory) of a kernel built by nvcc for sm_90a."""
    report = nvcc({"k": func}, "cubin", *TVM_FLAGS, "-Xptxas=-v", report=True)
    spill, regs, smem = re.search(r"(\d+) bytes spill stores.*?Used (\d+) registers, used \d+ barriers"
                                  r"(?:, (\d+) bytes smem)?", report, re.S).groups()
    return int(spill), int(regs), int(smem or 0)


def test_decode_cluster_makes_ln_1_c_attn_and_the_attention_one_cluster_kernel_launched_with_pdl():
    """`decode-cluster` (kernels/decode_cluster.py) in front of `fused`: decode's ln_linear_qkv and
    decode_attention give way to one kernel a layer, launched as clusters of 4 blocks (clusterCtaIdx.x) and
    with PDL; prefill and the other decode kernels as in `fused`. Dropped in float32 and before sm_90."""
    # the order the kernel is built on: W's bulk copies, the PDL wait, q, k, v across the cluster, attention
    check_cluster_kernel("decode-cluster", "decode_cluster_n1", {"ln_linear_qkv_n1", "decode_attention_n1"},
                         ["cp_async_bulk", "griddepcontrol_wait", "st_shared__cluster",
                          "barrier_cluster_wait_cluster_wait_acquire"])


@pytest.mark.parametrize("size", ["gpt2", "gpt2-xl"])
def test_decode_cluster_builds_without_spills_and_fits_one_block_an_sm(size):
    """The kernel at a Hub size's shapes (n_ctx 1024), built by nvcc for sm_90a: no spills, its 512 threads'
    registers within an SM's, and its shared memory (static + the dynamic W', K and V rows) within a block's 227 KB."""
    from tinygpt2.config import PRESETS
    from tinygpt2.kernels.decode_cluster import make_decode_cluster

    cfg = PRESETS[size]
    spill, regs, static = ptxas_usage(make_decode_cluster(cfg.n_head, cfg.head_dim, cfg.n_positions, "float16",
                                                          pdl="exit"))
    dynamic = (48 * cfg.n_embd + 2 * (cfg.n_positions // 4) * 64) * 2
    assert spill == 0 and regs * 512 <= 65536 and static + dynamic <= 227 * 1024, (spill, regs, static, dynamic)


def run_cluster_kernel(func, inputs, pos, ref, after=(), out0=None):
    """Run a cluster kernel (inputs, then gpt2-xl's K and V caches and pos, then `after`; out [1, C] last, zeros or
    out0) on the GPU against its numpy reference ref(*inputs, k_cache, v_cache, pos) -> (out, k_cache, v_cache).
    The caches are random up to pos and NaN past it (stale rows: never read); checked: out, the new key and value
    appended at pos, no row past pos touched."""
    import numpy as np

    from tinygpt2.compile import build_cuda_kernel
    from tinygpt2.tvm_shim import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU here: the cluster kernel runs on the lent GPU machine")
    H, D, P = 25, 64, 1024
    rng = np.random.default_rng(pos + 1)
    kc, vc = (rng.standard_normal((H, P, D)).astype("float16") for _ in range(2))
    kc[:, pos + 1:] = vc[:, pos + 1:] = np.nan
    want, want_k, want_v = ref(*inputs, kc.copy(), vc.copy(), pos)
    args = [tvm.runtime.tensor(a, dev) for a in (*inputs, kc, vc, np.array([pos], "int32"), *after)]
    out = tvm.runtime.tensor(np.zeros((1, H * D), "float16") if out0 is None else out0, dev)
    build_cuda_kernel(func)["main"](*args, out)
    got_k, got_v = (args[len(inputs) + i].numpy().astype("float32") for i in (0, 1))
    np.testing.assert_allclose(out.numpy().astype("float32"), want.astype("float32"), rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(got_k[:, :pos + 1], want_k[:, :pos + 1], rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(got_v[:, :pos + 1], want_v[:, :pos + 1], rtol=2e-2, atol=2e-3)
    assert np.isnan(got_k[:, pos + 1:]).all() and np.isnan(got_v[:, pos + 1:]).all()


@pytest.mark.parametrize("pos", [0, 5, 255, 1023])
def test_decode_cluster_matches_its_numpy_reference_on_the_gpu(pos):
    """The kernel at gpt2-xl's shapes against decode_cluster_ref (the two kernels it replaces, in numpy), at the
    first position, a few, and the last."""
    import numpy as np

    from tinygpt2.kernels import decode_cluster_ref, make_decode_cluster

    C = 25 * 64
    rng = np.random.default_rng(pos)
    x = rng.standard_normal((1, C)).astype("float16")
    w = (rng.standard_normal((3 * C, C)) * 0.02).astype("float16")
    b = (rng.standard_normal(3 * C) * 0.1).astype("float16")
    w_sum = w.astype(np.float64).sum(axis=1).astype("float32")
    run_cluster_kernel(make_decode_cluster(25, 64, 1024), (x, w, b, w_sum), pos, decode_cluster_ref)


def test_attention_cluster_makes_decode_attention_one_cluster_kernel_after_ln_linear_qkv():
    """`attention-cluster` in front of `fused`: decode_attention's two kernels (chunks, merge) give way to one,
    launched as clusters of 4 blocks and with PDL, its K and V rows copied (TMA) before the wait; ln_linear_qkv
    stays. Dropped in float32, before sm_90 and past 1024 positions; decode-cluster wins where both are listed."""
    from tinygpt2.rules import GPU_FUSED

    # (the order: K and V rows copied, the wait, q k v read, a quarter of c_fc's rows prefetched, the parts into
    # rank 0 by st.async, out)
    src = check_cluster_kernel("attention-cluster", "attention_cluster_n1", {"decode_attention_n1"},
                               ["cp_async_bulk", "griddepcontrol_wait", "(float)qkv_in_ptr[", "prefetch_L2_global(",
                                "st_async", "out_ptr["])
    # ... each of its 2 heads x 4 blocks 16 rows (128 halves) of c_fc's 512: the first quarter, 4096 bytes a block
    body = src[src.rindex("attention_cluster_n1_kernel("):]
    assert "prefetch_L2_global((&(w_fc_ptr[(((int)blockIdx.x) * 2048)])), (uint)4096)" in body
    # ... and ln_linear_qkv stays, and lets it launch at once, so that its blocks copy their rows while qkv streams
    qkv = src[src.rindex("ln_linear_qkv_n1_kernel("):]
    qkv = qkv[:qkv.index("\n}\n")]
    assert -1 < qkv.index("griddepcontrol_launch_dependents") < qkv.index("griddepcontrol_wait")
    both, *_ = C.build_scheduled(CFG64, "cuda", "float16", ["decode-cluster", "attention-cluster", *GPU_FUSED],
                                 arch="sm_90a")
    assert "decode_cluster_n1" in both.rule_of and "attention_cluster_n1" not in both.rule_of
    long = dataclasses.replace(CFG64, n_positions=2048)           # more keys than its threads can hold: dropped
    plain, *_ = C.build_scheduled(long, "cuda", "float16", ["attention-cluster", *GPU_FUSED], arch="sm_90a")
    assert "decode_attention_n1" in plain.rule_of and "attention_cluster_n1" not in plain.rule_of


@pytest.mark.parametrize("size", ["gpt2", "gpt2-xl"])
def test_attention_cluster_builds_without_spills(size):
    """make_attention_cluster at a Hub size's shapes (n_ctx 1024) for sm_90a: no spills, its threads' registers
    within an SM's, and its shared memory (static + the dynamic K and V rows of 256 keys) within a block's 227 KB."""
    from tinygpt2.config import PRESETS
    from tinygpt2.kernels.decode_cluster import ATTENTION_THREADS, make_attention_cluster

    cfg = PRESETS[size]
    spill, regs, static = ptxas_usage(make_attention_cluster(cfg.n_head, cfg.head_dim, cfg.n_positions, cfg.n_inner,
                                                             "float16", pdl="exit"))
    dynamic = 2 * (cfg.n_positions // 4) * 64 * 2
    assert spill == 0 and regs * ATTENTION_THREADS <= 65536 and static + dynamic <= 227 * 1024, (spill, regs, static)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("async_stores", [True, False])
def test_attention_cluster_merges_without_a_gpu_wide_fence(async_stores, monkeypatch, tmp_path):
    """Why the parts reach rank 0 by st.async (MERGE_BY_ASYNC_STORES, the default): in SASS, after the PDL wait
    (ACQBULK), the barrier merge's cluster arrive carries a MEMBAR.ALL.GPU; the st.async merge (STAS, then rank 0's
    mbarrier wait) has no MEMBAR and no second cluster barrier. The first cluster barrier, before the wait, keeps
    its release (a MEMBAR.ALL.GPU): arrived at relaxed it measured wrong and slower (kernels/decode_cluster.py).
    gpt2-xl's shapes."""
    from tinygpt2.kernels import decode_cluster

    monkeypatch.setattr(decode_cluster, "MERGE_BY_ASYNC_STORES", async_stores)
    func = decode_cluster.make_attention_cluster(25, 64, 1024, 6400, "float16", pdl="exit")
    (tmp_path / "k.cubin").write_bytes(nvcc({"k": func}, "cubin", *TVM_FLAGS))
    sass = cuobjdump_sass(tmp_path / "k.cubin")
    before, after = sass[:sass.index("ACQBULK")], sass[sass.index("ACQBULK"):]
    if async_stores:
        assert "MEMBAR" not in after and "UCGABAR_ARV" not in after, after
        assert after.count("STAS") == 3 and "SYNCS.PHASECHK" in after[after.index("STAS"):]
    else:
        assert "STAS" not in after and "MEMBAR.ALL.GPU" in after[:after.index("UCGABAR_ARV")]
    assert "MEMBAR.ALL.GPU" in before[:before.index("UCGABAR_ARV")]
    assert "po_ptr[((int)threadIdx.x)] = 0x0p+0f" in cuda_source({"k": func})


@pytest.mark.parametrize("pos", [0, 5, 255, 1023])
def test_attention_cluster_matches_decode_attention_ref_on_the_gpu(pos):
    """The kernel at gpt2-xl's shapes against decode_attention_ref (numpy), as decode_cluster above; its parts merged
    by st.async (the default). At pos 0 only rank 0 has keys: the others send empty parts."""
    import numpy as np

    from tinygpt2.kernels import decode_attention_ref, make_attention_cluster

    rng = np.random.default_rng(pos)
    qkv = rng.standard_normal((1, 3 * 25 * 64)).astype("float16")
    w_fc = rng.standard_normal((4 * 25 * 64, 25 * 64)).astype("float16")       # only prefetched
    run_cluster_kernel(make_attention_cluster(25, 64, 1024, 4 * 25 * 64), (qkv,), pos, decode_attention_ref, (w_fc,))


@pytest.mark.parametrize("pos", [0, 5, 255, 1023])
def test_attention_proj_matches_its_numpy_reference_on_the_gpu(pos):
    """make_attention_proj_cluster at gpt2-xl's shapes against attention_proj_ref (the attention, then its c_proj
    with the residual, in numpy): x updated in place by the 25 heads' atomics (fp16's tolerance)."""
    import numpy as np

    from tinygpt2.kernels import attention_proj_ref, make_attention_proj_cluster

    C = 25 * 64
    rng = np.random.default_rng(pos)
    qkv = rng.standard_normal((1, 3 * C)).astype("float16")
    w_fc = rng.standard_normal((4 * C, C)).astype("float16")                   # only prefetched
    w = (rng.standard_normal((C, C)) * 0.02).astype("float16")
    b = (rng.standard_normal(C) * 0.1).astype("float16")
    x = rng.standard_normal((1, C)).astype("float16")
    run_cluster_kernel(make_attention_proj_cluster(25, 64, 1024, 4 * C), (qkv,), pos,
                       lambda q, kc, vc, p: attention_proj_ref(q, kc, vc, p, w, b, x), (w_fc, w, b), out0=x)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_attention_proj_loads_its_c_proj_rows_before_the_wait_and_adds_by_atomics(tmp_path):
    """At gpt2-xl's shapes for sm_90a: no spill, its registers within an SM's; in SASS, a thread's pair of rows of
    c_proj (2 x 8 16-byte loads) before ACQBULK (griddepcontrol.wait), and after it one atomic add of the pair's two
    halves, without return (REDG ... F16x2; a single half's red.add is a compare-and-swap loop on sm_90)."""
    from tinygpt2.kernels.decode_cluster import ATTENTION_THREADS, make_attention_proj_cluster

    func = make_attention_proj_cluster(25, 64, 1024, 6400, "float16", pdl="exit")
    spill, regs, _ = ptxas_usage(func)
    assert spill == 0 and regs * ATTENTION_THREADS <= 65536, (spill, regs)
    (tmp_path / "k.cubin").write_bytes(nvcc({"k": func}, "cubin", *TVM_FLAGS))
    sass = cuobjdump_sass(tmp_path / "k.cubin")
    acqbulk = sass.index("ACQBULK")
    assert sass[:acqbulk].count("LDG.E.128") >= 16, sass[:acqbulk].count("LDG.E.128")
    reds = re.findall(r"\b(?:RED|ATOM)\S*", sass)
    assert reds == ["REDG.E.ADD.F16x2.RN.STRONG.GPU"] and sass.index("REDG") > acqbulk, reds


def test_attention_proj_takes_the_attention_c_proj_into_the_cluster_kernel():
    """`attention-proj` in front of `fused`: decode's attention_cluster gives way to attention_proj_cluster, and
    the attention's c_proj kernel is gone from decode (prefill keeps its own); x updated in place by atomics after
    the wait. Dropped in float32 and before sm_90; with side-prefetch, a RuleError that says why."""
    from tinygpt2.errors import RuleError
    from tinygpt2.rules import GPU_FUSED

    src = check_cluster_kernel("attention-proj", "attention_proj_cluster_n1",
                               {"decode_attention_n1", "attention_cluster_n1", "linear_attn_proj_n1"},
                               ["cp_async_bulk", "griddepcontrol_wait", "(float)qkv_in_ptr[", "st_shared__cluster",
                                "ptx_red_half_global_add_noftz_f16x2("])
    assert "linear_attn_proj" in src                                            # prefill's, n symbolic
    with pytest.raises(RuleError, match="list one of them"):
        C.build_scheduled(CFG64, "cuda", "float16", ["attention-proj", "side-prefetch", *GPU_FUSED], arch="sm_90a")


def test_attention_cluster_refuses_more_keys_than_its_threads():
    """A key a thread, 4 blocks of 256 a head: past 1024 positions the factory says so (the model drops the entry
    there, test above)."""
    from tinygpt2.errors import RuleError
    from tinygpt2.kernels import make_attention_cluster

    with pytest.raises(RuleError, match="n_ctx up to 1024"):
        make_attention_cluster(25, 64, 2048, 6400)
