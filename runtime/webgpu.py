"""WebGPU executor: runs TVM's WGSL kernels from Python through `wgpu` (wgpu-native).

TVM generates WGSL for the webgpu target but its WebGPU runtime is browser JavaScript. This file is
the Python equivalent, for the model's launch plans (runtime/plan.py):

- weights are uploaded once; the KV cache (runtime/kv_cache.py) and the activation slots of the
  memory plan are allocated once, at the largest size they will hold;
- pipelines and bind groups are created once per function (every buffer is fixed);
- per step, the only things that change are the scalar arguments (n, m, packGridDimX) and the grid:
  they go into one uniform buffer written once, and all dispatches of the step are encoded into one
  compute pass, one command buffer, one submit; only the logits are read back.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from tinygpt2.errors import DTypeError, TargetError

from .executor import Executor
from .kv_cache import KVCache
from .plan import Tensor, slot_sizes

UNIFORM_ALIGN = 256              # WebGPU's default minUniformBufferOffsetAlignment (the largest allowed)
MAX_WORKGROUPS = 65535           # per dimension
ITEMSIZE = {"float32": 4, "float16": 2, "int32": 4}


def _wgpu():
    # Mesa's drivers complain on stderr when XDG_RUNTIME_DIR is unset (as under CI): give them one
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="xdg-")
    try:
        import wgpu
    except ImportError as e:
        raise TargetError("the webgpu target needs the 'wgpu' package: pip install wgpu") from e
    return wgpu


def find_adapter(dtype: str):
    """(wgpu, adapter): the WebGPU adapter, checked to run `dtype` (shader-f16 for float16); TargetError or
    DTypeError otherwise. Cheap: what `load` asks before it compiles."""
    wgpu = _wgpu()
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:        # wgpu raises plain RuntimeErrors when no Vulkan/Metal/DX12 driver loads
        raise TargetError(f"no WebGPU adapter found ({str(e).strip().splitlines()[0]}); on Linux install "
                          "a Vulkan driver, e.g. Mesa's llvmpipe: apt-get install mesa-vulkan-drivers") from None
    if adapter is None:
        raise TargetError("no WebGPU adapter found; on Linux install a Vulkan driver, e.g. Mesa's llvmpipe: "
                          "apt-get install mesa-vulkan-drivers")
    if dtype == "float16" and "shader-f16" not in adapter.features:
        raise DTypeError(f"WebGPU adapter '{adapter.info['device']}' lacks the shader-f16 feature float16 "
                         "needs; use --dtype float32")
    return wgpu, adapter


def open_device(dtype: str):
    """(wgpu, adapter, device) with the adapter's own limits, and shader-f16 for float16."""
    wgpu, adapter = find_adapter(dtype)
    features = ["shader-f16"] if dtype == "float16" else []
    keys = ["max-storage-buffer-binding-size", "max-buffer-size", "max-storage-buffers-per-shader-stage",
            "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
            "max-compute-workgroup-size-x"]
    limits = {k: adapter.limits[k] for k in keys if k in adapter.limits}
    device = adapter.request_device_sync(required_features=features, required_limits=limits)
    return wgpu, adapter, device


class _Dispatch:
    """One kernel launch of a step: pipeline and bind group fixed; scalars and grid evaluated per step."""

    def __init__(self, launch_name, pipeline, bind_group, pod, grid, uniform_offset):
        self.launch_name, self.pipeline, self.bind_group = launch_name, pipeline, bind_group
        self.pod, self.grid, self.uniform_offset = pod, grid, uniform_offset

    def dims(self, env) -> tuple[int, int, int, int]:
        """(x, y, z, packGridDimX): blockIdx.x beyond 65535 is spread over z, as TVM's web runtime does."""
        x = self.grid.get("blockIdx.x", lambda e: 1)(env)
        y = self.grid.get("blockIdx.y", lambda e: 1)(env)
        z = 1
        while x > MAX_WORKGROUPS:
            x, z = (x + 1) // 2, z * 2
        packed = self.grid.get("blockIdx.x", lambda e: 1)(env)
        # the kernel returns when blockIdx.z * gridDim.x + blockIdx.x > packGridDimX: pass the last
        # valid index, not the count (TVM's comparison is off by one for a padded grid)
        return x, y, z, packed - 1


class WebGPUExecutor(Executor):
    def __init__(self, compiled, config, params: dict, names: list[str]):
        """params: name -> array, uploaded in the order of `names` (the compiled functions' parameters)."""
        self.config = cfg = config
        self.dtype = compiled.dtype
        self.wgpu, self.adapter, self.device = open_device(self.dtype)
        wgpu, dev = self.wgpu, self.device
        self.adapter_name = self.adapter.info.get("device", "unknown adapter")
        self.max_binding = self.adapter.limits["max-storage-buffer-binding-size"]
        art, plans = compiled.webgpu, compiled.plans
        usage = wgpu.BufferUsage

        def upload(name, array):
            if array.nbytes > self.max_binding:
                raise TargetError(
                    f"weight {name} is {array.nbytes / 2**20:.0f} MiB, over this WebGPU adapter's "
                    f"maxStorageBufferBindingSize of {self.max_binding / 2**20:.0f} MiB ({self.adapter_name}); "
                    f"try --dtype float16, a smaller model, or another target")
            return dev.create_buffer_with_data(data=np.ascontiguousarray(array), usage=usage.STORAGE)

        self.params = [upload(n, params[n]) for n in names]
        self.cache = KVCache(cfg.n_layer, cfg.n_head, cfg.n_positions, cfg.head_dim, self.dtype,
                             lambda shape, dt: dev.create_buffer(size=int(np.prod(shape)) * ITEMSIZE[dt],
                                                                 usage=usage.STORAGE | usage.COPY_SRC))
        self.ids = dev.create_buffer(size=4 * cfg.n_positions, usage=usage.STORAGE | usage.COPY_DST)
        self.pos = dev.create_buffer(size=4, usage=usage.STORAGE | usage.COPY_DST)       # decode's position
        self.history = dev.create_buffer(size=4 * (cfg.n_positions + 1), usage=usage.STORAGE | usage.COPY_SRC)
        self.readback = dev.create_buffer(size=4 * cfg.vocab_size, usage=usage.MAP_READ | usage.COPY_DST)
        self.pipelines = {}
        for name, code in art["kernels"].items():
            module = dev.create_shader_module(code=code)
            self.pipelines[name] = dev.create_compute_pipeline(layout="auto",
                                                               compute={"module": module, "entry_point": name})
        self.sampling = dev.create_buffer(size=16, usage=usage.STORAGE | usage.COPY_DST)   # decode_sample's knobs
        self.functions = {fn: self._prepare(plans[fn], art["functions"], cfg.n_positions if fn == "prefill" else 1)
                          for fn in plans}
        self.plans = plans
        self._pending = None               # ((fn, n, m), command buffer) encoded ahead of time

    def _prepare(self, plan, functions, n_max):
        """Slots, uniform buffer, and a _Dispatch per kernel launch, for one function of the model."""
        dev, usage = self.device, self.wgpu.BufferUsage
        slots = [dev.create_buffer(size=max(count, 1) * ITEMSIZE[dt], usage=usage.STORAGE | usage.COPY_SRC)
                 for dt, count in slot_sizes(plan, {"n": n_max, "m": self.config.n_positions})]

        def buffer_of(t: Tensor):
            if t.kind == "ids":
                return self.ids
            if t.kind == "pos":
                return self.pos
            if t.kind == "history":
                return self.history
            if t.kind == "sampling":
                return self.sampling
            if t.kind == "cache":
                return self.cache.tensors[t.index]
            if t.kind == "param":
                return self.params[t.index]
            return slots[plan.slot_of[t.index]]

        env_max = {"n": n_max, "m": self.config.n_positions}
        workspaces = {}                    # (kernel, buffer name) -> GPU buffer, sized for the largest step

        def workspace(kernel, name):
            if (kernel, name) not in workspaces:
                ws = functions[kernel]["workspaces"][name]
                count = int(np.prod([e(env_max) for e in ws["shape"]]))
                workspaces[kernel, name] = dev.create_buffer(size=max(count, 1) * ITEMSIZE[ws["dtype"]],
                                                             usage=usage.STORAGE)
            return workspaces[kernel, name]

        def bind(launch, params, name):
            if name in params:
                return buffer_of(launch.args[params.index(name)])
            return workspace(launch.kernel, name)

        launches = [(launch, k) for launch in plan.launches for k in functions[launch.kernel]["launches"]]
        uniform = dev.create_buffer(size=UNIFORM_ALIGN * len(launches), usage=usage.UNIFORM | usage.COPY_DST)
        dispatches = []
        for i, (launch, k) in enumerate(launches):
            params = functions[launch.kernel]["params"]
            pipeline = self.pipelines[k["kernel"]]
            entries = [{"binding": b, "resource": {"buffer": bind(launch, params, name)}}
                       for b, name in enumerate(k["buffers"])]
            pod_bytes = -(-4 * (len(k["pod"]) + 1) // 16) * 16           # a uniform binding is 16-byte granular
            entries.append({"binding": len(k["buffers"]),
                            "resource": {"buffer": uniform, "offset": UNIFORM_ALIGN * i, "size": pod_bytes}})
            bind_group = dev.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
            dispatches.append(_Dispatch(launch.name, pipeline, bind_group, k["pod"], k["grid"], UNIFORM_ALIGN * i))
        result = buffer_of(plan.result)
        return {"dispatches": dispatches, "uniform": uniform, "result": result, "slots": slots,
                "buffer_of": buffer_of}

    def _encode(self, fn: str, env: dict, dispatches=None, repeat: int = 1):
        """Write the step's scalars and encode its dispatches (all of them by default) in one pass,
        `repeat` times over (decode_greedy: the same static step, run back to back)."""
        f = self.functions[fn]
        if dispatches is None:
            dispatches = f["dispatches"]
        else:
            self._pending = None           # the uniform buffer is about to hold other values
        words = np.zeros(len(f["dispatches"]) * UNIFORM_ALIGN // 4, dtype=np.int32)
        encoder = self.device.create_command_encoder()
        cpass = encoder.begin_compute_pass()
        grids = []
        for d in dispatches:
            x, y, z, packed = d.dims(env)
            base = d.uniform_offset // 4
            for j, e in enumerate(d.pod):
                words[base + j] = e(env)
            words[base + len(d.pod)] = packed
            grids.append((d, x, y, z))
        for _ in range(repeat):
            for d, x, y, z in grids:
                cpass.set_pipeline(d.pipeline)
                cpass.set_bind_group(0, d.bind_group)
                cpass.dispatch_workgroups(x, y, z)
        cpass.end()
        self.device.queue.write_buffer(f["uniform"], 0, words)
        return encoder

    def _command(self, fn: str, n: int, m: int):
        """The whole step as one command buffer: every dispatch, then the copy of the logits."""
        encoder = self._encode(fn, {"n": n, "m": m})
        encoder.copy_buffer_to_buffer(self.functions[fn]["result"], 0, self.readback, 0, 4 * self.config.vocab_size)
        return encoder.finish()

    def _run(self, fn: str, ids: np.ndarray, m: int) -> np.ndarray:
        self.device.queue.write_buffer(self.ids, 0, ids.astype(np.int32))
        if fn == "decode":
            self.device.queue.write_buffer(self.pos, 0, np.array([m - 1], np.int32))
        key = (fn, len(ids), m)
        pending, self._pending = self._pending, None
        command = pending[1] if pending is not None and pending[0] == key else self._command(*key)
        self.device.queue.submit([command])                     # one submit per step
        if m < self.config.n_positions:
            # Encoding ~170 dispatches costs ~1 ms of Python: do it for the likely next step (a decode
            # at m + 1) while the GPU runs this one. Its uniform writes are queued after this submit,
            # so they cannot change the values this step reads.
            self._pending = (("decode", 1, m + 1), self._command("decode", 1, m + 1))
        # wgpu-py's plain READ map submits an extra empty command buffer first (a workaround for
        # wgpu-native#305, for buffers written without a submit); ours was written by the submit above
        self.readback.map_sync("READ_NOSYNC")
        logits = np.frombuffer(self.readback.read_mapped(), dtype=np.float32).copy()
        self.readback.unmap()
        return logits

    @property
    def samples_on_device(self) -> bool:
        return "decode_sample" in self.functions

    @property
    def samples_on_device_by_default(self) -> bool:
        """Not on a CPU adapter: on Mesa's llvmpipe one call of the sampler over GPT-2's 50257 logits takes
        ~5.5 ms (its 256 threads' ~1300 barriers emulated), the host sampler 0.3-1 ms with the readback."""
        return self.samples_on_device and self.adapter.info.get("adapter_type") != "CPU"

    def greedy(self, token: int, count: int) -> list[int]:
        """As VMExecutor.greedy: `token`, then count - 1 greedy steps chosen on the GPU; returns the
        `count` new ids. All `count` steps are one compute pass, one submit; only the ids are read."""
        return self._ahead("decode_greedy", token, count)

    def sample(self, token: int, count: int, sampling) -> list[int]:
        """As VMExecutor.sample: each token drawn on the GPU (kernels/sample.py)."""
        self.device.queue.write_buffer(self.sampling, 0, np.asarray(sampling, np.float32))
        return self._ahead("decode_sample", token, count)

    def _ahead(self, fn: str, token: int, count: int) -> list[int]:
        from tinygpt2.errors import GenerationError
        if self.cache.length == 0:
            raise GenerationError("decode() before prefill(): there is no sequence to continue")
        start = self.cache.length                           # the position `token` goes to
        m = self.cache.reserve(count)
        queue = self.device.queue
        queue.write_buffer(self.ids, 0, self._check_ids([token]))
        queue.write_buffer(self.pos, 0, np.array([start], np.int32))
        encoder = self._encode(fn, {"n": 1, "m": m}, repeat=count)
        encoder.copy_buffer_to_buffer(self.history, 4 * (start + 1), self.readback, 0, 4 * count)
        queue.submit([encoder.finish()])
        self.readback.map_sync("READ_NOSYNC")
        new = np.frombuffer(self.readback.read_mapped(), dtype=np.int32)[:count].copy()
        self.readback.unmap()
        self.cache.commit(m)
        return [int(t) for t in new]

    @property
    def dispatches_per_step(self) -> dict[str, int]:
        return {fn: len(f["dispatches"]) for fn, f in self.functions.items()}


def run_kernel(func, arrays: list, dtype: str = "float32", repeat: int = 1) -> list:
    """Run one scheduled PrimFunc (no symbolic shapes) on the WebGPU adapter, outside any model.

    `arrays` are numpy arrays in the PrimFunc's parameter order, outputs included; returns them as they
    are after the call, or after `repeat` calls back to back in one submit (a kernel that updates its
    inputs in place, as decode's sampler advances the position, then runs as a decode loop would).
    What the kernel tests use for kernels that only exist on a GPU.
    """
    from tinygpt2 import compile as C
    from tinygpt2 import targets as TG
    from tinygpt2.tvm_shim import tvm

    art = C.webgpu_kernels(C.Scheduled(tvm.IRModule({"main": func}), {}), TG.make_target("webgpu"))
    wgpu, _, dev = open_device(dtype)
    usage = wgpu.BufferUsage
    fn = art["functions"]["main"]
    buffers = {name: dev.create_buffer_with_data(data=np.ascontiguousarray(a),
                                                  usage=usage.STORAGE | usage.COPY_SRC)
               for name, a in zip(fn["params"], arrays)}
    for name, ws in fn["workspaces"].items():
        count = int(np.prod([e({}) for e in ws["shape"]]))
        buffers[name] = dev.create_buffer(size=max(count, 1) * ITEMSIZE[ws["dtype"]], usage=usage.STORAGE)
    steps = []                             # (pipeline, bind group, grid) of each launch
    for k in fn["launches"]:
        module = dev.create_shader_module(code=art["kernels"][k["kernel"]])
        pipeline = dev.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": k["kernel"]})
        x, y, z, packed = _Dispatch(k["kernel"], None, None, k["pod"], k["grid"], 0).dims({})
        words = np.zeros(-(-(len(k["pod"]) + 1) // 4) * 4, np.int32)        # scalars + packGridDimX, 16 B units
        words[:len(k["pod"]) + 1] = [e({}) for e in k["pod"]] + [packed]
        uniform = dev.create_buffer_with_data(data=words, usage=usage.UNIFORM)
        entries = [{"binding": b, "resource": {"buffer": buffers[name]}} for b, name in enumerate(k["buffers"])]
        entries.append({"binding": len(k["buffers"]), "resource": {"buffer": uniform}})
        steps.append((pipeline, dev.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries),
                      (x, y, z)))
    encoder = dev.create_command_encoder()
    for pipeline, bind_group, grid in steps * repeat:
        cpass = encoder.begin_compute_pass()
        cpass.set_pipeline(pipeline)
        cpass.set_bind_group(0, bind_group)
        cpass.dispatch_workgroups(*grid)
        cpass.end()
    dev.queue.submit([encoder.finish()])
    # buffers are whole 4-byte words: an odd count of float16 reads back one element too many
    return [np.frombuffer(dev.queue.read_buffer(buffers[name]), a.dtype)[:a.size].reshape(a.shape).copy()
            for name, a in zip(fn["params"], arrays)]
