"""Lesson 2: the whole model on the CPU.

tinygpt2/model.py builds GPT-2 as two Relax functions, `prefill` and `decode`, each a straight list
of calls into the hand-written kernels. This lesson prints the first calls of `decode`, compiles
the bundled Shakespeare model for the CPU (`llvm`), and drives it by hand: prefill a prompt, then
decode greedily one token at a time with our own KV cache.

    python examples/02_the_model.py
"""

import numpy as np

import tinygpt2
from tinygpt2.model import build_module

m = tinygpt2.load("shakespeare", target="llvm")
print(m.config)

decode = build_module(m.config, "float32")["decode"].script()
print("\n".join(decode.splitlines()[:24]), "\n...")

ids = m.tokenizer.encode("ROMEO:\n")
logits = m.prefill(ids)                          # [vocab], the last position's logits
for _ in range(30):
    token = int(np.argmax(logits))               # greedy
    ids.append(token)
    logits = m.decode(token)                     # one position more in the KV cache
print(m.tokenizer.decode(ids))
print("KV cache holds", m.executor.cache.length, "positions of", m.config.n_positions)
print("which rule scheduled what:", m.rule_of)
