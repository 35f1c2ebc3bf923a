"""On the GPU machine, under Nsight Compute: one decode step of a model, for per-kernel GPU times.

    ncu --graph-profiling node -k regex:_n1 --metrics gpu__time_duration.sum --csv \\
        python3 scripts/ncu_decode.py random:gpt2 float16 > ncu.csv

Prefills 128 tokens, then runs two greedy decode steps (the first captures the CUDA graph, the
second replays it); ncu times every kernel of the decode functions (the `_n1` ones) on its own.
"""

import sys

import numpy as np

import tinygpt2

model, dtype = sys.argv[1], sys.argv[2]
m = tinygpt2.load(model, target="cuda", dtype=dtype, progress=False)
token = int(np.argmax(m.prefill(list(range(1000, 1128)))))
m.executor.greedy(token, 2)
print("done", file=sys.stderr)
