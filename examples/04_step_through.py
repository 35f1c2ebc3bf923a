"""Lesson 4: step through the model one kernel at a time.

`model.prefill(ids)` runs every kernel launch of the model in one go (lesson 2): 43 for the 4-layer
Shakespeare model, 3 + 10 a layer. `step_through` runs the same launch plan one launch at a time, on
the same weights and KV cache, and hands you each launch's output as a numpy array, together with the
kernel it called, the kernel's scheduled TVMScript and how it was launched (CPU: the host thread and
its parallel loop; WebGPU: the workgroups).

`tinygpt2.reference` is GPT-2 written again in plain numpy from the kernels' `*_ref` functions,
recording every intermediate under the same names (x, h0_ln_1, h0_qkv, h0_kv, ..., logits), so each
kernel can be checked on its own: the first launch whose error jumps is the broken kernel.

This lesson prints the first transformer block's launches on the bundled Shakespeare model, shows
one kernel's TVMScript, and then -- because a finished step-through leaves the KV cache exactly as
`prefill` would -- continues the sequence with plain `model.decode`.

    python examples/04_step_through.py [--target webgpu]
"""

import sys

import numpy as np

import tinygpt2
from tinygpt2.reference import Reference
from tinygpt2.runtime.step import compare, step_through

target = sys.argv[sys.argv.index("--target") + 1] if "--target" in sys.argv else "llvm"
# DLight's own list: the plain graph of 10 launches a layer on every target (load's default, `auto`, takes
# `fused` on WebGPU, which folds the layernorms into the linears and fuses the attention: fewer launches)
model = tinygpt2.load("shakespeare", target=target, rules="default")
ids = model.tokenizer.encode("ROMEO:\nBut soft, what light")

ref = Reference.of(model).prefill(ids)           # numpy: every intermediate, by launch name
print(f"prefill of {len(ids)} tokens on {target}, launch by launch (error relative to numpy's largest value):")
for step in step_through(model, ids):
    err = compare(step, ref)
    if step.name.startswith(("x", "h0_")):                              # the embedding and block 0
        shapes = ", ".join(str(o.shape) for o in step.outputs)
        print(f"  {step.name:<14} {step.kernel:<17} {step.grid:<22} {shapes:<26} {err.rel:.1e}")
    assert err.rel < 1e-4, (step.name, err)
    if step.name == "h0_probs":
        probs = step.output                                             # [heads, n, m]: attention weights
        print(f"    head 0, last token attends to: {np.round(probs[0, -1], 3)}")
    if step.name == "h0_scores":
        scores = step
print(f"  ... {step.index + 1} launches in all, every one within 1e-4 of numpy")

# one kernel as it was scheduled for this target: block 0's attention scores q·Kᵀ
rule = f"rule {scores.rule!r}" if scores.rule else "no rule (the loops as written)"
print(f"\n{scores.kernel}, scheduled by {rule}, launched as {scores.grid}:\n{scores.script}")

# the last launch committed the KV cache: the step-through was a prefill, and decode continues from it
logits, out = step.output[0], list(ids)
for _ in range(20):
    out.append(int(np.argmax(logits)))                                  # greedy
    logits = model.decode(out[-1])
print(model.tokenizer.decode(out))
