"""A launch plan: the Relax functions `prefill` / `decode`, read back as a flat list of kernel launches.

The model (tinygpt2/model.py) is a straight list of `call_tir`s. Executors that launch kernels
themselves (WebGPU, and the step-through executor on every target) walk that list instead of a VM:

    Launch(name="h3_qkv", kernel="linear_qkv", args=[Tensor(tmp 7), Tensor(param 39), Tensor(param 40)],
           outputs=[Tensor(tmp 8)])

Shapes are symbolic in n (new tokens) and m (length after them); `Expr`s evaluate them for given
values (decode has no symbolic shape: its position is the 1-element int32 input tensor `pos`, = m - 1). `plan_memory` assigns the temporaries to reusable slots from their live ranges, so a model
needs a handful of activation buffers, not one per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinygpt2.tvm_shim import relax, tirx, tvm

_OPS = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%", tirx.Div: "//"}


class Expr:
    """An integer PrimExpr over named vars, compiled to a Python lambda (evaluated on every step)."""

    def __init__(self, e):
        self.text = self._py(e)
        self.fn = eval(f"lambda env: {self.text}")          # noqa: S307 -- built from IR nodes only

    def __reduce__(self):                                   # picklable: rebuilt from its text
        return (Expr._from_text, (self.text,))

    @classmethod
    def _from_text(cls, text: str) -> "Expr":
        e = cls.__new__(cls)
        e.text, e.fn = text, eval(f"lambda env: {text}")    # noqa: S307 -- text written by _py above
        return e

    def __call__(self, env: dict[str, int]) -> int:
        return self.fn(env)

    def __repr__(self):
        return self.text.replace("env['", "").replace("']", "")

    @classmethod
    def _py(cls, e) -> str:
        if isinstance(e, int):
            return str(e)
        if isinstance(e, tirx.IntImm):
            return str(int(e.value))
        if isinstance(e, tirx.Var):
            return f"env[{e.name!r}]"
        if isinstance(e, tirx.Cast):
            return cls._py(e.value)
        if type(e) in _OPS:
            return f"({cls._py(e.a)} {_OPS[type(e)]} {cls._py(e.b)})"
        if isinstance(e, (tirx.Min, tirx.Max)):
            return f"{'min' if isinstance(e, tirx.Min) else 'max'}({cls._py(e.a)}, {cls._py(e.b)})"
        raise NotImplementedError(f"cannot evaluate {type(e).__name__}: {e}")


@dataclass
class Tensor:
    kind: str                      # "ids" | "pos" | "history" | "sampling" | "progress" | "cache" | "param" | "tmp"
    index: int                     # which cache tensor / param / temporary
    shape: list[Expr]
    dtype: str

    def concrete(self, env) -> tuple[int, ...]:
        return tuple(s(env) for s in self.shape)


@dataclass
class Scalar:
    value: Expr                    # e.g. m


@dataclass
class Launch:
    name: str                      # the call site: the Relax variable it defines, e.g. "h3_qkv"
    kernel: str                    # the PrimFunc it calls, e.g. "linear_qkv"
    args: list                     # Tensor / Scalar in the PrimFunc's parameter order (outputs last)
    outputs: list[Tensor]          # what it writes (for in-place calls: the updated inputs)


@dataclass
class Plan:
    function: str
    launches: list[Launch]
    result: Tensor
    tmps: list[Tensor] = field(default_factory=list)      # every temporary, indexed by Tensor.index
    slot_of: list[int] = field(default_factory=list)      # temporary -> memory slot (see plan_memory)


def _tensor(kind: str, index: int, ty) -> Tensor:
    return Tensor(kind, index, [Expr(s) for s in ty.shape.values], str(ty.dtype))


def build_plan(mod, function: str) -> Plan:
    """Walk one Relax function of the model (before or after scheduling; not after lowering)."""
    func = mod[function]
    params = list(func.params)
    env: dict = {params[0]: Tensor("ids", 0, [Expr(s) for s in params[0].ty.shape.values], "int32")}
    if isinstance(params[1].ty, relax.TensorType):             # decode's `pos` (prefill's `total` is a shape)
        env[params[1]] = Tensor("pos", 0, [Expr(1)], "int32")
    rest = params[2:]
    if rest and rest[0].name == "history":                     # decode_greedy's / decode_sample's token history
        env[rest[0]] = _tensor("history", 0, rest[0].ty)
        rest = rest[1:]
    if rest and rest[0].name == "sampling":                    # decode_sample's temperature, top_k, top_p, seed
        env[rest[0]] = _tensor("sampling", 0, rest[0].ty)
        rest = rest[1:]
    if rest and rest[0].name == "progress":                    # side-prefetch's progress word (CUDA decode)
        env[rest[0]] = _tensor("progress", 0, rest[0].ty)
        rest = rest[1:]
    n_cache = sum(1 for p in rest if p.name[:2] in ("k_", "v_"))
    for i, p in enumerate(rest[:n_cache]):
        env[p] = _tensor("cache", i, p.ty)
    for i, p in enumerate(rest[n_cache:]):
        env[p] = _tensor("param", i, p.ty)

    plan = Plan(function, [], None)
    for block in func.body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            if isinstance(value, relax.TupleGetItem):          # an output of an in-place or many-output call
                env[var] = env[value.tuple_value][value.index]
                continue
            if isinstance(value, relax.Var):
                env[var] = env[value]
                continue
            op = value.op.name
            if op not in ("relax.call_tir", "relax.call_tir_inplace"):
                raise NotImplementedError(f"the plan walker only knows call_tir, not {op}")
            args = [Scalar(Expr(a)) if tvm.ir.is_prim_expr(a) else env[a] for a in value.args[1].fields]
            if op == "relax.call_tir_inplace":
                # index -1: a fresh output (the kernel takes those after its inputs, in order)
                tys = value.ty.fields if isinstance(value.ty, relax.TupleType) else [value.ty]
                outputs = []
                for i, ty in zip(value.attrs.inplace_indices, tys):
                    if int(i) < 0:
                        out = Tensor("tmp", len(plan.tmps), [Expr(s) for s in ty.shape.values], str(ty.dtype))
                        plan.tmps.append(out)
                        args = args + [out]
                        outputs.append(out)
                    else:
                        outputs.append(args[int(i)])
                env[var] = outputs
            else:                                               # fresh outputs: one tensor, or a tuple of them
                many = isinstance(value.ty, relax.TupleType)
                outputs = []
                for ty in value.ty.fields if many else [value.ty]:
                    outputs.append(Tensor("tmp", len(plan.tmps), [Expr(s) for s in ty.shape.values], str(ty.dtype)))
                    plan.tmps.append(outputs[-1])
                args = args + outputs
                env[var] = outputs if many else outputs[0]
            plan.launches.append(Launch(var.name, value.args[0].name_hint, args, outputs))
    plan.result = env[func.body.body]
    plan_memory(plan)
    return plan


def plan_memory(plan: Plan):
    """Give each temporary a slot; a slot is reused once every reader of its last tenant has run.

    Slots are typed (dtype) and sized by the caller at the largest shape they will hold.
    """
    last_use = {}
    for step, launch in enumerate(plan.launches):
        for a in launch.args:
            if isinstance(a, Tensor) and a.kind == "tmp":
                last_use[a.index] = step
    last_use[plan.result.index] = len(plan.launches)            # the result is read after the last launch
    free: dict[str, list[int]] = {}
    slot_dtype: list[str] = []
    plan.slot_of = [-1] * len(plan.tmps)
    for step, launch in enumerate(plan.launches):
        for out in launch.outputs:
            if out.kind == "tmp" and plan.slot_of[out.index] < 0:
                pool = free.setdefault(out.dtype, [])
                if pool:
                    plan.slot_of[out.index] = pool.pop()
                else:
                    plan.slot_of[out.index] = len(slot_dtype)
                    slot_dtype.append(out.dtype)
        # release after the outputs are assigned: a kernel never writes into a buffer it reads
        for a in {a.index for a in launch.args if isinstance(a, Tensor) and a.kind == "tmp"}:
            if last_use[a] == step:
                free.setdefault(plan.tmps[a].dtype, []).append(plan.slot_of[a])


def slot_sizes(plan: Plan, env_max: dict[str, int]) -> list[tuple[str, int]]:
    """(dtype, largest element count) of every slot, for the largest n and m the executor will see."""
    sizes: dict[int, tuple[str, int]] = {}
    for t, slot in zip(plan.tmps, plan.slot_of):
        count = 1
        for d in t.concrete(env_max):
            count *= d
        dtype, prev = sizes.get(slot, (t.dtype, 0))
        sizes[slot] = (dtype, max(prev, count))
    return [sizes[i] for i in range(len(sizes))]
