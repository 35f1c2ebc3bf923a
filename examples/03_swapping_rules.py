"""Lesson 3: the same kernel under two rule lists.

A kernel is written once, with no schedule; the rule list decides what it becomes on a GPU. Here we
take decode's query/key/value projection (`linear_qkv_n1`: one token, y = x @ W.T + b) and explain it
for CUDA under two lists: ["fallback"] (the preset "none": loops fused and bound to threads, the
reduction left serial in each thread) and ["gemv", "fallback"] (GEMV splits the reduction across a
block, stages x in shared memory, vectorizes the loads). For each we print which rule fired and the
launch it became, then the diff of the generated CUDA C. No GPU is needed for any of this: `explain`
only generates code, and reads only the model's config.

Swapping rules for a model you run is one argument, the same everywhere:

    m = tinygpt2.load("shakespeare", target="cuda", rules=["gemv", "fallback"])

which the end of this lesson does on a GPU if there is one: CUDA, else WebGPU (on Linux without a
GPU, Mesa's llvmpipe is a WebGPU adapter too).

    python examples/03_swapping_rules.py
    tinygpt2 explain --model shakespeare --target cuda --rules none --diff-rules gemv,fallback \\
        --kernel linear_qkv_n1 --show code           # the same, from the command line
"""

import difflib

import tinygpt2
from tinygpt2.errors import TargetError
from tinygpt2.explain import explain, model_config

cfg, _ = model_config("shakespeare")               # config.json only: no weights loaded
KERNEL = "linear_qkv_n1"

explained = {}
for rules in (["fallback"], ["gemv", "fallback"]):
    e = explain(cfg, "cuda", rules=rules, kernels=[KERNEL], show=("code",))
    k = e.kernels[0]
    print(f"rules {rules}: {k.name} was scheduled by {k.rule!r}")
    print(f"    grid {k.grid_text()}, block {k.block_text()}, shared memory {k.shared_text()}, "
          f"vector {k.vector_text()}, unroll {k.unroll_text()}")
    explained[k.rule] = e.code[KERNEL]

print("\nCUDA C, fallback -> gemv (first 60 lines of the diff):")
diff = difflib.unified_diff(explained["fallback"].splitlines(), explained["gemv"].splitlines(),
                            "fallback", "gemv", lineterm="")
print("\n".join(list(diff)[:60]))

# The one-liner: the same rule list for a model you run.
for target in ("cuda", "webgpu"):
    try:
        m = tinygpt2.load("shakespeare", target=target, rules=["gemv", "fallback"], progress=False)
    except TargetError as err:                     # no GPU / no WebGPU adapter here
        print(f"\n{target}: {err}")
        continue
    # GEMV takes decode's matrix-vector products; prefill's matrix-matrix ones fall through to fallback
    print(f"\non {target}: {KERNEL} scheduled by {m.rule_of[KERNEL]!r}; prefill's linear_qkv by "
          f"{m.rule_of['linear_qkv']!r}")
    print(m.generate("ROMEO:\n", max_new_tokens=24).text)
    break
