"""The public API: `tinygpt2.load(...)` gives a `Model` that tokenizes, prefills, decodes, generates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygpt2 import targets as TG
from tinygpt2.compile import Compiled, compile
from tinygpt2.dtypes import check_dtype
from tinygpt2.tokenizer import Tokenizer
from tinygpt2.weights import Checkpoint, fold_layernorms, load_checkpoint, param_names

BUNDLED = {"shakespeare": Path(__file__).parent / "assets" / "shakespeare"}


class Model:
    """A GPT-2 compiled for one target, with its weights on the device and its own KV cache."""

    def __init__(self, checkpoint: Checkpoint, compiled: Compiled, executor, tokenizer: Tokenizer):
        self.checkpoint, self.compiled, self.executor, self.tokenizer = checkpoint, compiled, executor, tokenizer
        self.config = checkpoint.config

    @property
    def rule_of(self) -> dict[str, str | None]:
        """Which rule scheduled each kernel."""
        return self.compiled.rule_of

    def prefill(self, ids) -> np.ndarray:
        """Start a new sequence with `ids`; float32 logits [vocab] at its last position."""
        return self.executor.prefill(ids)

    def decode(self, token: int) -> np.ndarray:
        """Append one token; float32 logits [vocab] for the next position."""
        return self.executor.decode(token)

    def generate(self, prompt, **kwargs):
        from tinygpt2.runtime.generate import generate
        return generate(self.executor, self.tokenizer, prompt, **kwargs)


def make_executor(compiled: Compiled, ckpt: Checkpoint):
    folded = compiled.folded_layernorms             # fused-decode: ln_1, ln_2 folded into c_attn, c_fc
    params = fold_layernorms(ckpt.config, ckpt.params) if folded else ckpt.params
    names = param_names(ckpt.config, folded)
    if compiled.target in ("llvm", "cuda"):
        from tinygpt2.runtime.executor import VMExecutor
        return VMExecutor(compiled.executable, ckpt.config, params, names, compiled.dtype, TG.device(compiled.target),
                          functions=tuple(compiled.plans))
    if compiled.target == "webgpu":
        from tinygpt2.runtime.webgpu import WebGPUExecutor
        return WebGPUExecutor(compiled, ckpt.config, params, names)
    return TG.device(compiled.target)        # raises: code generation only


def load(model: str = "gpt2", target: str = "llvm", dtype: str = "float32", rules="auto", *,
         arch: str | None = None, cache: bool = True, progress: bool = True) -> Model:
    """Load weights (Hub id, local directory, bundled name or random:<size>), compile, ready to run.

    rules: any form rules.resolve takes; "auto" is the fastest list measured for the target (tuned on llvm,
    fused on a GPU), "default" DLight's own."""
    check_dtype(dtype)
    TG.make_target(target, arch)                           # unknown target: fail before loading weights
    TG.require_device(target, dtype)                       # no device to run on: fail before compiling
    spec = str(BUNDLED[model]) if model in BUNDLED else model
    ckpt = load_checkpoint(spec, dtype=dtype, progress=progress)
    tokenizer = Tokenizer.from_dir(ckpt.tokenizer_dir) if ckpt.tokenizer_dir else Tokenizer.gpt2()
    compiled = compile(ckpt.config, target, dtype, rules, arch=arch, cache=cache, progress=progress)
    return Model(ckpt, compiled, make_executor(compiled, ckpt), tokenizer)
