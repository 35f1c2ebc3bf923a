"""GPT-2 in plain numpy, built from the kernels' own `*_ref` functions: the step-through executor's
ground truth. It records every intermediate under the name of the launch that computes it in the
model graph (tinygpt2/model.py), so each kernel's output can be checked against it:

    x  h0_ln_1  h0_qkv  h0_kv  h0_scores  h0_probs  h0_attn  h0_resid_attn
       h0_ln_2  h0_fc_gelu  h0_resid_mlp  ...  h{L-1}_resid_mlp  ln_f  logits

(h0_resid_attn = x + c_proj(attn), h0_fc_gelu = gelu(c_fc(..)): the model fuses those pairs into one
kernel; the reference computes them with the unfused kernels' refs, as two steps.)

`h{i}_kv` is the pair (k_cache, v_cache) of layer i after the append (the whole [n_head, n_ctx,
head_dim] arrays; positions >= m are zeros). Everything is computed in float32, whatever the
checkpoint's dtype.

    ref = Reference(ckpt.config, ckpt.params)        # ckpt = tinygpt2.weights.load_checkpoint(...)
    values = ref.prefill(ids)                        # {launch name: array}
    values = ref.decode(token)                       # extends the sequence by one token
"""

from __future__ import annotations

import numpy as np

from tinygpt2 import kernels as K
from tinygpt2 import model as M
from tinygpt2.errors import ContextOverflowError, GenerationError


class Reference:
    def __init__(self, config, params: dict[str, np.ndarray], fused_decode: bool = False,
                 flash_prefill: bool = False):
        """fused_decode: decode as `fused-decode` builds it (model.build_module): h{i}_qkv and h{i}_fc_gelu
        include their layernorm (no h{i}_ln_1, h{i}_ln_2), and one launch `h{i}_attn` outputs (attn,
        k_cache, v_cache) instead of h{i}_kv, h{i}_scores, h{i}_probs, h{i}_attn; in prefill h{i}_ln_1 and
        h{i}_ln_2 are x normalized only, their gamma and beta folded into the linear after them
        (weights.fold_layernorms).
        flash_prefill: prefill as `flash-prefill` builds it: one launch h{i}_attn, no h{i}_scores, h{i}_probs."""
        self.config = config
        self.fused_decode, self.flash_prefill = fused_decode, flash_prefill
        self.params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        shape = (config.n_head, config.n_positions, config.head_dim)
        self.cache = [np.zeros(shape, np.float32) for _ in range(2 * config.n_layer)]   # k_0, v_0, k_1, ...
        self.length = 0

    @classmethod
    def of(cls, model) -> "Reference":
        """The reference of a loaded model (tinygpt2.load), with the launches its compiled graph has."""
        return cls(model.config, model.checkpoint.params, model.compiled.fused_decode, model.compiled.flash_prefill)

    def prefill(self, ids) -> dict[str, np.ndarray]:
        """Start a new sequence with `ids`; every intermediate, by launch name."""
        self.length = 0
        return self._run(ids, decode=False)

    def decode(self, token: int) -> dict[str, np.ndarray]:
        """Append one token to the sequence."""
        if self.length == 0:
            raise GenerationError("decode() before prefill(): there is no sequence to continue")
        return self._run([token], decode=True)

    def _run(self, ids, decode: bool) -> dict[str, np.ndarray]:
        cfg, p, out = self.config, self.params, {}
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        m = self.length + len(ids)                           # sequence length after the new tokens
        if m > cfg.n_positions:
            raise ContextOverflowError(f"sequence of {m} tokens exceeds the model's context of {cfg.n_positions}")
        eps = cfg.layer_norm_epsilon
        x = out["x"] = K.embedding_ref(ids, p["wte.weight"], p["wpe.weight"], m)                  # [n, C]
        for i in range(cfg.n_layer):
            def w(name, i=i):
                return p[f"h.{i}.{name}"]
            # attention: x = x + c_proj(attn(c_attn(ln_1(x))))
            h = out[f"h{i}_ln_1"] = K.layernorm_ref(x, w("ln_1.weight"), w("ln_1.bias"), eps)
            qkv = out[f"h{i}_qkv"] = K.linear_ref(h, w("attn.c_attn.weight"), w("attn.c_attn.bias"))  # [n, 3C]
            if self.fused_decode:                       # gamma, beta folded into c_attn: x normalized only
                out[f"h{i}_ln_1"] = K.layernorm_ref(x, eps=eps)
            k, v = K.kv_append_ref(qkv, self.cache[2 * i], self.cache[2 * i + 1], m)
            self.cache[2 * i], self.cache[2 * i + 1] = k, v
            out[f"h{i}_kv"] = (k, v)                                                           # [H, P, D] x2
            s = out[f"h{i}_scores"] = K.attn_scores_ref(qkv, k, m)                             # [H, n, m]
            s = out[f"h{i}_probs"] = K.causal_softmax_ref(s, cfg.head_dim)                     # [H, n, m]
            a = out[f"h{i}_attn"] = K.attn_values_ref(s, v, np.float32)                        # [n, C]
            if self.fused_decode and decode:            # h{i}_attn: one launch does all four
                del out[f"h{i}_ln_1"], out[f"h{i}_kv"], out[f"h{i}_scores"], out[f"h{i}_probs"]
                out[f"h{i}_attn"] = (a, k, v)
            if self.flash_prefill and not decode:       # h{i}_attn: one launch does scores, softmax, values
                del out[f"h{i}_scores"], out[f"h{i}_probs"]
            a = K.linear_ref(a, w("attn.c_proj.weight"), w("attn.c_proj.bias"))
            x = out[f"h{i}_resid_attn"] = K.add_ref(x, a)
            # MLP: x = x + c_proj(gelu(c_fc(ln_2(x))))
            h = out[f"h{i}_ln_2"] = K.layernorm_ref(x, w("ln_2.weight"), w("ln_2.bias"), eps)
            if self.fused_decode:                       # gamma, beta folded into c_fc: x normalized only
                out[f"h{i}_ln_2"] = K.layernorm_ref(x, eps=eps)
            h = K.linear_ref(h, w("mlp.c_fc.weight"), w("mlp.c_fc.bias"))                         # [n, F]
            h = out[f"h{i}_fc_gelu"] = K.gelu_ref(h)
            if self.fused_decode and decode:            # h{i}_fc_gelu includes ln_2
                del out[f"h{i}_ln_2"]
            h = K.linear_ref(h, w("mlp.c_proj.weight"), w("mlp.c_proj.bias"))
            x = out[f"h{i}_resid_mlp"] = K.add_ref(x, h)
        x = out["ln_f"] = K.layernorm_ref(x, p["ln_f.weight"], p["ln_f.bias"], eps)
        out["logits"] = K.lm_head_ref(x, p["wte.weight"])                                      # [1, V]
        if self.fused_decode and decode and M.LN_F_IN_HEAD:     # logits includes ln_f (kernels/lm_head.py)
            del out["ln_f"]
        self.length = m
        return out
