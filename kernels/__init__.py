"""GPT-2's operators as hand-written TVMScript PrimFuncs, one file per operator family.

Each file has `make_<op>(dims..., dtype) -> PrimFunc` (schedulable: `@T.prim_func(s_tir=True)`,
loops over `T.sblock`s, no schedule applied) and a numpy `<op>_ref` that states the same math.
The exceptions are GPU decode's fused kernels, written already scheduled (thread bindings, shared
memory) because no rule matches them: attention.make_decode_attention and ln_linear's
make_ln_linear_decode / make_linear_residual_decode, lm_head.make_lm_head_decode (ln_f + the head) and
argmax.make_argmax_advance_gpu (the rule list entry `fused-decode` asks for them; `pdl-decode` launches them with programmatic dependent launch,
_pdl.py), and prefill's attention.make_causal_softmax_gpu / _cpu (`hand-softmax`) and
flash_attention.make_flash_attention / _cpu (`flash-prefill`); decode_cluster.make_decode_cluster (`decode-cluster`:
ln_1 + c_attn + the attention as one CUDA kernel, a thread-block cluster per head) and
decode_cluster.make_attention_cluster (`attention-cluster`: the attention alone, likewise) and
make_attention_proj_cluster (`attention-proj`: that with the attention's c_proj, by fp16 atomics); and
sample.make_sample_advance_gpu, decode's sampler on any GPU (no rule matches a sampler either).
flash_attention_mma.make_flash_attention_mma is prefill's attention on mma.sync in FlashAttention-2's layout,
(`flash-prefill-mma`, preset `fused`, CUDA sm_90+ fp16): gpt2-xl's 1024-token attention 2.7x faster than the WMMA one.
linear_wgmma.make_linear_wgmma is prefill's linears on Hopper's wgmma (`matmul-wgmma`, first in preset `fused`, CUDA
sm_90a fp16): gpt2-xl's four linears 1.7x faster than the WMMA schedule; linear_mma.make_linear_mma the same on
mma.sync (`matmul-mma`, opt-in: slower than WMMA). side_prefetch.make_side_prefetch is no operator: a kernel the
executor launches on a second stream beside each CUDA decode step, prefetching its weights into L2 as far ahead of
the step as the marks of its linears allow (`side-prefetch`, opt-in).
Installed as `tinygpt2.kernels`.
"""

from .argmax import advance_ref, argmax_ref, make_advance, make_argmax, make_argmax_advance_gpu
from .attention import (attention_ref, attn_scores_ref, attn_values_ref, causal_softmax_ref, decode_attention_ref,
                        decode_attention_parts,
                        make_attn_scores, make_causal_softmax_cpu, make_causal_softmax_gpu, make_decode_attention,
                        make_attn_scores_decode, make_attn_values, make_attn_values_decode, make_causal_softmax,
                        make_softmax_decode, pad_keys)
from .decode_cluster import (attention_proj_ref, decode_cluster_ref, make_attention_cluster,
                             make_attention_proj_cluster, make_decode_cluster)
from .embedding import embedding_ref, make_embedding, make_embedding_decode
from .flash_attention import flash_attention_ref, make_flash_attention, make_flash_attention_cpu
from .flash_attention_mma import make_flash_attention_mma
from .gelu import gelu_expr, gelu_ref, make_gelu
from .kv_cache import kv_append_ref, make_kv_append, make_kv_append_decode
from .layernorm import layernorm_ref, make_layernorm
from .ln_linear import (ITEMSIZE, WEBGPU_MAX_LANES, linear_residual_decode_ref, ln_linear_ref, make_linear_pipe_decode,
                        make_linear_residual_decode, make_ln_linear_decode, pipe_grid)
from .linear_mma import make_linear_mma
from .linear_wgmma import make_linear_wgmma
from .linear import (linear_gelu_ref, linear_ref, linear_residual_ref, make_linear, make_linear_gelu,
                     make_linear_residual)
from .lm_head import lm_head_decode_ref, lm_head_ref, make_lm_head, make_lm_head_decode
from .residual import add_ref, make_add
from .sample import make_sample_advance_gpu, sample_advance_ref, sample_probs_ref
from .side_prefetch import make_side_prefetch, with_progress_mark
