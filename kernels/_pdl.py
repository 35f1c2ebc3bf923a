"""Programmatic dependent launch (PDL, CUDA sm_90+) for decode's hand-scheduled kernels.

In a decode step every kernel waits for the one before it: normally the GPU starts kernel k + 1
only once kernel k has finished and its writes are visible, so each launch pays a ramp -- the
blocks spread over the SMs, the first loads cross the memory's latency -- in which HBM idles.
gpt2-xl's step is 244 kernels; at ~2 us of ramp each that is a third of the step.

With PDL a kernel is split in two at a `griddepcontrol.wait`:

    before the wait   reads only what no kernel of this step writes: the weights (and constants);
                      W's slice of a thread goes into its registers here (in the CUDA C: ptxas, which
                      schedules read-only loads freely, places them after the wait; see "exit");
    wait              blocks until every kernel before this one has finished, its writes visible;
    after the wait    reads activations (x, the residual stream, qkv, the KV cache) and writes outputs;
    launch_dependents somewhere (MODES below) lets the GPU launch the next kernel once every block of
                      this one has issued it, so that its blocks start their own weight loads early.

Correct because every kernel launched this way waits before it reads or writes anything a kernel of
the step writes, and finishes only after its wait: so when kernel k passes its wait, k - 1 has
finished, which means k - 1 passed its own wait after k - 2 had finished, and so on back. A
kernel launched the ordinary way (DLight's, the embedding, lm_head) still waits for everything
before it. The launch flag itself is not in the kernel: compile.py's TIR pipeline adds TVM's PDL
launch tag to every CUDA kernel whose body calls `griddepcontrol.wait`, and only those.
"""

from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import T


# where a kernel lets the next one launch (rule-list entries pdl-decode-early, pdl-decode-loaded,
# pdl-decode; gpt2-xl's decode step in the CUDA graph on an H200, against 1659 us without PDL):
#   "early"   before its wait, right after issuing its weight loads: the most overlap, and the next
#             kernels' weight streams compete with this one's loads and with the latency-bound
#             attention on the critical path: 1748 us;
#   "loaded"  once its own loads have been used (after the dot product), the attention (latency-bound,
#             HBM mostly idle) at once: 1697 us;
#   "exit"    never explicitly: the GPU launches the next kernel as this one's blocks exit, ahead of
#             its completion and memory flush: 1627 us, kept. (W's loads are written before the wait,
#             but in SASS, nvcc 13.0, ptxas keeps at most the first before it and interleaves the rest
#             with the dot product after it -- 32 registers leave no room to hold them; in the kernel
#             before the layernorm was folded, all came after its statistics. Copying W by cp.async,
#             which stays before the wait, measured slower: kernels/ln_linear.py's "not kept". An L2
#             prefetch of the same rows before the wait, an asm statement taking their address, makes
#             ptxas issue all the loads there, where registers allow: decode attention's K and V
#             (attention.py) and the attention's c_proj (ln_linear.py, prefetch_w), both kept.)
MODES = ("early", "loaded", "exit")


@T.macro(hygienic=False)
def grid_wait(TY, TX, early):
    """Wait for the previous kernels (every thread of the block); with early, let the next launch first."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("grid_wait"):
                T.reads()
                T.writes()
                if early:
                    T.ptx.griddepcontrol.launch_dependents()
                T.ptx.griddepcontrol.wait()


@T.macro(hygienic=False)
def read_coherently(TY, TX, addr):
    """Make the loads of an activation (addr: the address of its first element) plain ld.global, which
    ptxas keeps after `griddepcontrol.wait`. Placed before the wait: it only has to be in the kernel.

    TVM declares every pointer argument `__restrict__`, so the compiler loads what a kernel only reads
    with ld.global.nc (the read-only path), and ptxas treats those as loads of memory that nothing
    changes while the kernel runs: it schedules them freely across the wait (SASS, nvcc 13.0: a
    variant of ln_linear whose W had no register to land in had its loads of x moved above ACQBULK, the
    statistics summed before it). Under PDL that memory is being written by the previous kernel.
    Passing the address to an asm statement (a prefetch of its line into L2, by one thread; a hint, and
    L2 is where coherence is kept) means the compiler can no longer assume that, and the loads become
    coherent ones that stay after the wait. They cannot be reused across a barrier either, so a kernel
    that reads an input several times pays for it (ln_linear: see there)."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("read_coherently"):
                T.where(ty == T.int64(0) and tx == T.int64(0))
                T.reads()
                T.writes()
                T.ptx.prefetch.global_.L2(addr)


@T.macro(hygienic=False)
def launch_next(TY, TX):
    """Let the next kernel launch (once every block of this one has got here or exited)."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("launch_next"):
                T.reads()
                T.writes()
                T.ptx.griddepcontrol.launch_dependents()


def flags(mode: str | None) -> tuple[bool, bool, bool]:
    """(wait, early, loaded) for a kernel factory's `pdl` argument: None (an ordinary launch) or a MODE.
    Plain bools, which TVMScript resolves while parsing (it takes no None for an `if`)."""
    if mode is not None and mode not in MODES:
        raise RuleError(f"unknown PDL mode {mode!r}: choose one of {', '.join(MODES)}")
    return mode is not None, mode == "early", mode == "loaded"
