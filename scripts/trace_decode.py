"""On the GPU machine: where a decode step's time goes *inside* its CUDA graph, from CUPTI.

    python3 scripts/trace_decode.py random:gpt2 float16 default [steps] [--out=DIR] [--sampled] [--side-idle]

Traces greedy decode steps (with --sampled, steps drawing their token on the device: decode_sample,
temperature 0.8, top-k 50, top-p 0.95) with torch.profiler (CUPTI's kernel activity records every node of a
replayed CUDA graph with its own start and end; the machine has no Nsight Systems), then prints per
kernel the median time per step, its time on the step's critical path and how early it starts (PDL lets a kernel
start before the one before it ends; it waits for it inside), and per step its span (first kernel start to last
kernel end) and the idle gaps between kernels (side-prefetch's prefetcher, on a stream of its own, apart; with
--side-idle it is launched so that it only polls and never prefetches: what its presence alone costs the steps).
Unlike ncu (each kernel replayed alone, caches warm) and time_evaluator (each kernel in a loop), these
are the kernels as they run in the graph: weights cold, launches back to back.
"""

import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict


def trace(model, dtype, rules, steps, out, sampled=False, side_idle=False):
    """(start ns, duration ns, name) of every GPU kernel, from CUPTI through torch.profiler (kineto):
    the tracer is process-wide, so it sees TVM's launches and each node of a replayed CUDA graph."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    import tinygpt2

    torch.cuda.init()
    m = tinygpt2.load(model, target="cuda", dtype=dtype, rules=rules, progress=False)
    token = int(np.argmax(m.prefill(list(range(1000, 1128)))))
    if side_idle:
        if not m.executor._side:
            raise SystemExit(f"trace_decode: --side-idle needs a build with side-prefetch (rules {rules!r} has none)")
        m.executor._side.idle = True
    run = (lambda t, n: m.executor.sample(t, n, [0.8, 50, 0.95, 1])) if sampled else m.executor.greedy
    run(token, 2)                                            # captures the graph
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(token, steps)
        torch.cuda.synchronize()
    tag = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in f"{model}_{dtype}_{rules}")
    path = os.path.join(out, f"decode_{tag[:80]}{'_side-idle' if side_idle else ''}.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    return [(int(e["ts"] * 1000), int(e["dur"] * 1000), e["name"]) for e in events if e.get("cat") == "kernel"]


def summarize(kernels, label):
    # side-prefetch's prefetcher runs on a stream of its own, beside the steps: not part of them
    side = [k for k in kernels if k[2].startswith("side_prefetch")]
    kern = [k for k in kernels if "_n1" in k[2] and not k[2].startswith("side_prefetch")]   # the decode functions'
    # steps: each starts with the embedding kernel
    steps, cur = [], []
    for k in sorted(kern):
        if k[2].startswith("embedding") and cur:
            steps.append(cur)
            cur = []
        cur.append(k)
    steps.append(cur)
    steps = steps[1:] or steps                                # skip the first replay
    per = defaultdict(list)
    # a launch's time on the critical path: from the end of the kernel before it (or its own start, if later)
    # to its own end. With PDL a kernel starts before the one before it ends and waits, so its duration
    # counts that wait too; this does not.
    after_prev = defaultdict(list)
    early = defaultdict(list)           # how long before the previous kernel's end it started (PDL), or 0
    spans, gaps = [], []
    for s in steps:
        t = defaultdict(float)
        for i, (st, du, name) in enumerate(s):
            name = name.removesuffix("_kernel")                     # a PrimFunc's 2nd kernel: *_kernel_1
            t[name] += du / 1e3
            start = st if i == 0 else max(st, s[i - 1][0] + s[i - 1][1])
            after_prev[name].append((st + du - start) / 1e3)
            early[name].append(0.0 if i == 0 else max(0, s[i - 1][0] + s[i - 1][1] - st) / 1e3)
        for name, us in t.items():
            per[name].append(us)
        spans.append((s[-1][0] + s[-1][1] - s[0][0]) / 1e3)
        gaps.append(sum(max(0, b[0] - (a[0] + a[1])) for a, b in zip(s, s[1:])) / 1e3)
    n = len(s)
    print(f"\n#### {label}: {len(steps)} steps, {n} kernels a step; span {statistics.median(spans):.1f} us "
          f"(kernels {statistics.median(spans) - statistics.median(gaps):.1f} us, gaps between them "
          f"{statistics.median(gaps):.1f} us)\n")
    print("| kernel | us per step | share of kernel time | launches a step | us a launch, from the previous "
          "kernel's end | us it starts before that end |\n|---|---|---|---|---|---|")
    if side:
        print(f"(beside the steps, on its own stream: {len(side)} side_prefetch launches, "
              f"{statistics.median(d for _s, d, _n in side) / 1e3:.1f} us each, median)\n")
    tot = sum(statistics.median(v) for v in per.values())
    for name, v in sorted(per.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"| {name} | {statistics.median(v):.1f} | {100 * statistics.median(v) / tot:.1f}% | "
              f"{len(after_prev[name]) // len(steps)} | {statistics.median(after_prev[name]):.2f} | "
              f"{statistics.median(early[name]):.2f} |")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sampled = "--sampled" in sys.argv[1:]
    side_idle = "--side-idle" in sys.argv[1:]
    out = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--out=")), tempfile.mkdtemp())
    model, dtype, rules = args[:3]
    steps = int(args[3]) if len(args) > 3 else 20
    os.makedirs(out, exist_ok=True)
    summarize(trace(model, dtype, rules, steps, out, sampled, side_idle),
              f"{model} {dtype} --rules {rules}{', sampled on the device' if sampled else ''}"
              f"{', the side prefetcher only polling' if side_idle else ''}, in the CUDA graph (CUPTI)")


if __name__ == "__main__":
    main()
