"""Lesson 1: one kernel, from TVMScript to a number you can check.

GPT-2's layernorm is written once in kernels/layernorm.py as loops over `T.sblock`s, with no schedule.
Here we build it for a fixed width, print its TVMScript, compile it for the CPU, run it, and compare
with the numpy reference beside it. Then we ask DLight which rule would schedule it for a GPU.

    python examples/01_one_kernel.py
"""

import numpy as np

from tinygpt2.kernels import layernorm_ref, make_layernorm
from tinygpt2.rules import GPU_RULES
from tinygpt2.targets import make_target
from tinygpt2.tvm_shim import dl, to_tensor, tvm

C = 768
func = make_layernorm(C, "float32")              # symbolic number of rows n
print(func.script())

lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
x = np.random.default_rng(0).standard_normal((5, C)).astype(np.float32)
gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
y = to_tensor(np.zeros_like(x), tvm.cpu())
lib["main"](to_tensor(x, tvm.cpu()), to_tensor(gamma, tvm.cpu()), to_tensor(beta, tvm.cpu()), y)
print("max |tvm - numpy| =", np.abs(y.numpy() - layernorm_ref(x, gamma, beta)).max())

# Which DLight rule takes it on a GPU? Try each alone (the first that returns a schedule wins in a list).
target = make_target("cuda", arch="sm_90a")
for name, rule in GPU_RULES.items():
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target:
        scheduled = dl.ApplyDefaultSchedule(rule())(mod)
    print(f"{name:18s} {'schedules it' if scheduled['main'].attrs.get('tirx.is_scheduled') else '-'}")
