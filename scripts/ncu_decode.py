"""On the GPU machine, under Nsight Compute: decode steps of a model, for per-kernel GPU times.

    ncu --graph-profiling node -k regex:_n1 --metrics gpu__time_duration.sum --csv \\
        python3 scripts/ncu_decode.py random:gpt2 float16 > ncu.csv
    ncu ... python3 scripts/ncu_decode.py random:gpt2 float16 fused 4   # a rule list, greedy steps

Prefills 128 tokens, then runs greedy decode steps (the first captures the CUDA graph, the later
ones replay it); ncu times every kernel of the decode functions (the `_n1` ones) on its own.
scripts/trace_decode.py times them as they run inside the graph instead.
"""

import sys

import numpy as np

import tinygpt2

model, dtype = sys.argv[1], sys.argv[2]
rules = sys.argv[3] if len(sys.argv) > 3 else "default"
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
m = tinygpt2.load(model, target="cuda", dtype=dtype, rules=rules, progress=False)
token = int(np.argmax(m.prefill(list(range(1000, 1128)))))
m.executor.greedy(token, steps)
print("done", file=sys.stderr)
