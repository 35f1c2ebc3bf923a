"""The KV cache: per layer, K and V of every position so far, on the target device.

    k[i], v[i]: [n_head, n_ctx, head_dim] for layer i      (allocated once, for the whole context)
    length:     positions filled so far (the kernels write positions length .. length+n-1)

The kernels read only positions < m (the length after the new tokens), so `reset()` only has to set
the length back to zero: stale values beyond it are never looked at.
"""

from __future__ import annotations

from collections.abc import Callable

from tinygpt2.errors import ContextOverflowError


class KVCache:
    def __init__(self, n_layer: int, n_head: int, n_ctx: int, head_dim: int, dtype: str,
                 alloc: Callable[[tuple, str], object]):
        self.n_ctx = n_ctx
        self.shape = (n_head, n_ctx, head_dim)
        self.tensors = [alloc(self.shape, dtype) for _ in range(2 * n_layer)]     # k_0, v_0, k_1, v_1, ...
        self.length = 0

    def reserve(self, n_new: int) -> int:
        """The sequence length after appending n_new tokens (raises if the context would overflow)."""
        m = self.length + n_new
        if m > self.n_ctx:
            raise ContextOverflowError(
                f"sequence of {m} tokens exceeds the model's context of {self.n_ctx} "
                f"({self.length} in the cache + {n_new} new)")
        return m

    def commit(self, m: int):
        self.length = m

    def reset(self):
        self.length = 0
