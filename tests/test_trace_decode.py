"""scripts/trace_decode.py's summary of a CUDA-graph trace (its CUPTI part needs the GPU machine): steps split
at the embedding kernel, the first replay dropped, and each launch's time on the critical path, which with
PDL is shorter than its duration (a kernel starts early and waits)."""

from scripts_loader import load_script


def test_summary_counts_each_launch_from_the_previous_kernels_end(capsys):
    # (name, duration ns, ns it starts before the kernel before it ends): qkv twice a step, overlapping
    layer = [("embedding_n1_kernel", 1000, 0), ("ln_linear_qkv_n1_kernel", 7000, 200),
             ("decode_attention_n1_kernel", 4000, 500), ("decode_attention_n1_kernel_1", 2000, 0),
             ("ln_linear_qkv_n1_kernel", 7000, 200), ("prefill_kernel_not_decode", 9000, 0)]
    events, t = [], 0
    for _ in range(3):                                        # three replays of the step
        for name, dur, overlap in layer:
            events.append((t - overlap, dur, name))
            t = t - overlap + dur
    load_script("trace_decode").summarize(events, "synthetic")
    out = capsys.readouterr().out
    assert "#### synthetic: 2 steps, 5 kernels a step" in out           # the first replay dropped
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.splitlines()
            if line.startswith("| ") and "_n1" in line}
    assert rows["ln_linear_qkv_n1"][0] == "14.0"                         # us per step: both launches
    assert rows["ln_linear_qkv_n1"][2:] == ["2", "6.80", "0.20 |"]       # 7.0 us less the 0.2 it started early
    assert rows["decode_attention_n1"][2:] == ["1", "3.50", "0.50 |"]
    assert rows["decode_attention_n1_kernel_1"][2:] == ["1", "2.00", "0.00 |"]


def test_the_side_prefetcher_is_kept_out_of_the_steps(capsys):
    # side-prefetch's kernel runs on a stream of its own, overlapping the steps: counted apart, not as a step's
    layer = [("embedding_n1_kernel", 1000, 0), ("ln_linear_qkv_n1_kernel", 7000, 0)]
    events, t = [], 0
    for _ in range(3):
        events.append((t, 5000, "side_prefetch_n1_kernel"))          # starts with the step, ends inside it
        for name, dur, _overlap in layer:
            events.append((t, dur, name))
            t += dur
    load_script("trace_decode").summarize(events, "synthetic")
    out = capsys.readouterr().out
    assert "#### synthetic: 2 steps, 2 kernels a step; span 8.0 us" in out
    assert "3 side_prefetch launches, 5.0 us each" in out
    assert "| side_prefetch" not in out
