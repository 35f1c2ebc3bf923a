"""Executors: run a compiled model's `prefill` and `decode` against our own KV cache.

Every target has the same interface, so generation, benchmarks and the step-through debugger
are written once:

    ex.prefill(ids)  -> logits [vocab] float32   (starts a new sequence)
    ex.decode(token) -> logits [vocab] float32   (appends one token)
    ex.reset()

`VMExecutor` runs llvm and cuda builds through TVM's Relax virtual machine.
"""

from __future__ import annotations

import numpy as np

from tinygpt2.errors import GenerationError
from tinygpt2.kernels.side_prefetch import prefetch_plan
from tinygpt2.tvm_shim import empty, relax, shape_tuple, to_tensor

from .kv_cache import KVCache


class Executor:
    """What every executor provides; subclasses implement `_run(fn_name, ids, m)`."""

    config = None
    cache: KVCache

    def prefill(self, ids) -> np.ndarray:
        ids = self._check_ids(ids)
        if len(ids) == 0:
            raise GenerationError("prefill needs at least one token")
        self.cache.reset()
        return self._step("prefill", ids)

    def decode(self, token: int) -> np.ndarray:
        if self.cache.length == 0:
            raise GenerationError("decode() before prefill(): there is no sequence to continue")
        return self._step("decode", self._check_ids([token]))

    def reset(self):
        self.cache.reset()

    def _step(self, fn: str, ids: np.ndarray) -> np.ndarray:
        m = self.cache.reserve(len(ids))
        logits = self._run(fn, ids, m)
        self.cache.commit(m)
        return logits

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise GenerationError(f"token ids must be in [0, {self.config.vocab_size}), got {ids.min()}..{ids.max()}")
        return ids.astype(np.int32)

    def _run(self, fn: str, ids: np.ndarray, m: int) -> np.ndarray:
        raise NotImplementedError


class VMExecutor(Executor):
    """llvm / cuda: the Relax VM calls the kernels; weights and KV cache live on `device`."""

    def __init__(self, executable_or_lib, config, params: dict[str, np.ndarray], param_order: list[str],
                 dtype: str, device, functions=("prefill", "decode", "decode_greedy")):
        self.config, self.device = config, device
        self.vm = relax.VirtualMachine(executable_or_lib, device)
        self.params = [to_tensor(params[name], device) for name in param_order]     # uploaded once
        self.cache = KVCache(config.n_layer, config.n_head, config.n_positions, config.head_dim, dtype,
                             lambda shape, dt: empty(shape, dt, device))
        self._fns = {name: self.vm[name] for name in functions}
        # decode's inputs are persistent tensors: the CUDA graph that captures the step keeps their addresses
        # (zeroed: a position read from uninitialised memory would send the kernels' cache writes anywhere)
        self._decode_ids = to_tensor(np.zeros(1, np.int32), device)
        self._decode_pos = to_tensor(np.zeros(1, np.int32), device)
        self._history = to_tensor(np.zeros(config.n_positions + 1, np.int32), device)   # history[p]: token for p
        self._sampling = to_tensor(np.array([1, config.vocab_size, 1, 0], np.float32), device)  # decode_sample's knobs
        self._side = _SidePrefetch.of(self.vm, config, params, self.params, param_order, device)
        extra = self._side.args                                 # decode's progress word (side-prefetch)
        self._decode_args = (self._decode_ids, self._decode_pos, *extra)
        self._picked_args = {"decode_greedy": (self._decode_ids, self._decode_pos, self._history, *extra),
                             "decode_sample": (self._decode_ids, self._decode_pos, self._history, self._sampling,
                                               *extra)}
        self._next_on_device = None     # (token, position) that ids/pos already hold after steps on the device

    @property
    def samples_on_device(self) -> bool:
        """Whether `sample` can run: the build has decode_sample (GPU targets)."""
        return "decode_sample" in self._fns

    samples_on_device_by_default = samples_on_device     # generate(sample_on="auto"): wherever it can

    def greedy(self, token: int, count: int) -> list[int]:
        """Append `token`, then `count - 1` greedy tokens, on the device; returns the `count` greedy tokens.

        Each `decode_greedy` step takes its argmax on the device and leaves the token and the position
        where the next step reads them (kernels/argmax.py), so the steps are queued back to back with
        no host round trip, and the new ids are read back once, at the end. The cache then holds
        `token` and the first count - 1 returned tokens; the last one is not appended yet (as after
        `decode`). `truncate` undoes steps run ahead of need.
        """
        return self._ahead("decode_greedy", token, count)

    def sample(self, token: int, count: int, sampling) -> list[int]:
        """As `greedy`, each token drawn on the device (`decode_sample`, kernels/sample.py) with
        sampling = (temperature > 0, top_k (vocab: off), top_p (1: off), seed in [0, 2^24))."""
        self._sampling.copyfrom(np.asarray(sampling, np.float32))
        return self._ahead("decode_sample", token, count)

    def _ahead(self, fn: str, token: int, count: int) -> list[int]:
        if self.cache.length == 0:
            raise GenerationError("decode() before prefill(): there is no sequence to continue")
        start = self.cache.length                           # the position `token` goes to
        m = self.cache.reserve(count)
        if self._next_on_device != (token, start):          # else the last step left them there (advance)
            self._decode_ids.copyfrom(self._check_ids([token]))
            self._decode_pos.copyfrom(np.array([start], np.int32))
        step, args = self._fns[fn], (*self._picked_args[fn], *self.cache.tensors, *self.params)
        self._side.sync()
        for _ in range(count):
            self._side.launch()                             # the step's prefetcher, on its own stream (side-prefetch)
            step(*args)                                     # asynchronous: a CUDA graph launch on cuda
        new = [int(t) for t in self._history.numpy()[start + 1:start + 1 + count]]   # waits for the last step
        self.cache.commit(m)
        self._next_on_device = (new[-1], m)
        return new

    def _run(self, fn: str, ids: np.ndarray, m: int) -> np.ndarray:
        self._next_on_device = None
        if fn == "decode":
            self._decode_ids.copyfrom(ids)
            self._decode_pos.copyfrom(np.array([m - 1], np.int32))     # the new token's position
            self._side.sync()
            self._side.launch()
            out = self._fns[fn](*self._decode_args, *self.cache.tensors, *self.params)
        else:
            out = self._fns[fn](to_tensor(ids, self.device), shape_tuple([m]), *self.cache.tensors, *self.params)
        return out.numpy()[0]


def side_prefetch_weights(config) -> list[str]:
    """The weights side-prefetch's progress marks count, in the order a decode step reads them (model.py's
    marked linears: ln_1 + c_attn, the attention's c_proj, ln_2 + c_fc, the MLP's c_proj, layer by layer)."""
    return [f"h.{i}.{w}.weight" for i in range(config.n_layer)
            for w in ("ln_1.c_attn", "attn.c_proj", "ln_2.c_fc", "mlp.c_proj")]


class _NoSidePrefetch:
    """A build without side-prefetch: no progress word to pass, nothing to sync or launch (and false, as None)."""
    args = ()

    def __bool__(self):
        return False

    def sync(self):
        pass

    def launch(self):
        pass


class _SidePrefetch:
    """side-prefetch's host side (kernels/side_prefetch.py): the progress word the step's linears mark, the
    table of decode's weight matrices in the order it reads them (with what to prefetch of each, by
    side_prefetch.prefetch_plan), and a second stream on which `launch` starts the prefetcher of the next step.
    `base` is progress's value as that step begins: read from the device by `sync` while it is idle (before a
    batch of steps), then advanced by the step's KiB at each launch."""

    def __init__(self, fn, table, device, step_kib: int):
        self.fn, self.table, self.device, self.step_kib = fn, table, device, step_kib
        self.progress = to_tensor(np.zeros(1, np.uint32), device)
        self.args = (self.progress,)
        self.stream = device.create_raw_stream()        # non-blocking: it runs beside the default stream
        self.base = 0
        # for measurements (scripts/trace_decode.py --side-idle): each prefetcher told a base 2^31 KiB ahead, so
        # that it never prefetches and only polls (until it gives up): what its presence alone costs the steps
        self.idle = False

    @classmethod
    def of(cls, vm, config, params: dict[str, np.ndarray], tensors: list, param_order: list[str], device):
        """The build's prefetcher, or _NoSidePrefetch where it has none (every build but CUDA's with side-prefetch)."""
        try:
            fn = vm.module.get_function("side_prefetch_n1", query_imports=True)
        except AttributeError:
            return _NoSidePrefetch()
        on_device = dict(zip(param_order, tensors))
        names = side_prefetch_weights(config)
        sizes = [params[n].nbytes for n in names]
        rows = np.array([[on_device[n].data_ptr() + offset, size, pf]
                         for n, size, (offset, pf) in zip(names, sizes, prefetch_plan(names, sizes))], np.int64)
        return cls(fn, to_tensor(rows, device), device, sum(sizes) // 1024)

    def sync(self):
        """base <- progress as it is now (the device done with every step launched so far)."""
        self.base = int(self.progress.numpy()[0])

    def launch(self):
        """The next step's prefetcher, on the side stream; then TVM's default stream again, which the executor's
        steps run on (it never sets another)."""
        self.device.set_raw_stream(self.stream)
        try:
            self.fn(self.table, self.progress, (self.base + (1 << 31 if self.idle else 0)) & 0xFFFFFFFF)
        finally:
            self.device.set_raw_stream(0)           # TVM's default stream (CUDA's legacy one)
        self.base = (self.base + self.step_kib) & 0xFFFFFFFF
