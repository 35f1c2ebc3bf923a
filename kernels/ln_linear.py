"""Layer normalisation fused into the linear that consumes it, for a GPU decode step (one token).

    mu   = 1/C * sum_k x[0, k]
    var  = 1/C * sum_k (x[0, k] - mu)^2                          (two passes, float32, as layernorm.py)
    h[k] = Cast(dtype, (x[0, k] - mu) * rsqrt(var + eps) * gamma[k] + beta[k])     rounded to dtype
    y[0, j] = Cast(dtype, sum_k h[k] * W[j, k] + b[j])                              (linear.py)
    y[0, j] = Cast(dtype, gelu(sum_k h[k] * W[j, k] + b[j]))                        (gelu=True: c_fc)

    x [1, C], gamma [C], beta [C], W [N, C], b [N] -> y [1, N]      accumulated in float32 whatever the dtype

ln_1 + c_attn (qkv) and ln_2 + c_fc (gelu) are each one launch instead of two: in decode a GPU step is
bound by launches, and the layernorm's [1, C] output no longer goes through memory.

Written already scheduled (thread bindings, shared memory, registers), like attention.py's
make_decode_attention: no DLight rule matches "a block-wide layernorm feeding a matrix-vector product",
so the rule list leaves it alone (`tirx.is_scheduled`).

The work is split by output rows. Block bx computes ROWS = WARPS * ROWS_PER_WARP consecutive rows of y;
inside it each warp (threadIdx.y) owns ROWS_PER_WARP rows and its 32 lanes (threadIdx.x) split the
reduction axis k. Every block recomputes the layernorm of x itself (C <= 1600 values, read from cache:
cheaper than a second launch). In order:

  1. w_load   each thread loads its whole slice of its W rows into registers: VEC contiguous elements
              (16 bytes: 8 halves / 4 floats, one vector load) at k = (ko * 32 + lane) * VEC, for each ko.
              A warp reads 32 * 16 = 512 contiguous bytes per load: coalesced. Written first so that the
              weight stream -- what this kernel costs -- may be in flight while the layernorm runs (ptxas
              is free to sink these read-only loads below the barriers, and CUDA 13's does: the overlap
              then comes from the other blocks resident on the SM).
  2. x_sum, sq_sum   the two statistics, reductions over all threads of the block (TVM lowers a
              reduction whose axis is bound to threads to warp shuffles + shared memory).
  3. normalize h = layernorm(x) rounded to dtype, into shared memory [C] (the matmul's input). Kept in
              dtype, not float32: the same value, and lane t's VEC elements are then the 16 bytes after
              lane t-1's, so the vector loads of step 4 are free of bank conflicts.
  4. dot      each thread: its VEC-slices of h (a vector load from shared memory) times its registers
              of W, summed in a float32 register.
  5. row_sum  the 32 lanes' partial sums of a row added up (warp shuffles), then the epilogue adds the
              bias (and GELU), casts, and lane 0 stores y.

Rows past N (the last block, when ROWS does not divide N) read row N - 1 again and store nothing; k past C
(when 32 * VEC does not divide C) is masked per vector.
"""

from tinygpt2.tvm_shim import T

from ._dtypes import ACC, check_dtype
from .gelu import gelu_expr
from .layernorm import layernorm_ref
from .linear import linear_gelu_ref, linear_ref

LANES = 32                  # threadIdx.x: one warp splits a row's reduction axis; the row sum is warp shuffles
WARPS = 8                   # threadIdx.y: 8 x 32 = 256 threads, WebGPU's limit per workgroup
ROWS_PER_WARP = 1           # rows of W per warp (per thread: ROWS_PER_WARP * C / 32 elements in registers)
VECTOR_BYTES = 16           # the widest load a CUDA thread issues (LDG.128)
WEBGPU_MAX_LANES = 4        # WGSL has vec2..vec4 only: TVM's WebGPU codegen rejects wider vectors
ITEMSIZE = {"float32": 4, "float16": 2}


def vector_width(n_embd: int, dtype: str, max_lanes: int = 8) -> int:
    """Elements per vector load of W and h: 16 bytes' worth (8 halves / 4 floats, at most max_lanes), halved
    until it divides C, so that every vector lies inside a row (and is aligned: rows start at multiples of
    C elements)."""
    vec = min(VECTOR_BYTES // ITEMSIZE[dtype], max_lanes)
    while n_embd % vec:
        vec //= 2
    return vec


def make_ln_linear_decode(n_embd: int, out_features: int, dtype: str = "float32", eps: float = 1e-5,
                          gelu: bool = False, max_lanes: int = 8):
    """ln + linear (+ GELU) for one token: see the module docstring. Grid ceil(N / ROWS) x 1, 256 threads.

    max_lanes caps the vector width: pass WEBGPU_MAX_LANES (4) for the webgpu target, whose float16 loads
    are then 8 bytes; CUDA, Metal and ROCm take the default (16-byte loads in both dtypes)."""
    check_dtype(dtype)
    vec = vector_width(n_embd, dtype, max_lanes)
    n_vec = n_embd // vec                                 # vectors per row of W
    rows = WARPS * ROWS_PER_WARP                          # rows of y per block
    C, N = T.int64(n_embd), T.int64(out_features)
    one = T.int64(1)
    TX, TY, RY = T.int64(LANES), T.int64(WARPS), T.int64(ROWS_PER_WARP)
    R = T.int64(rows)
    NB = T.int64(-(-out_features // rows))                # blocks
    NP = T.int64(-(-out_features // rows) * rows)         # rows, padded to whole blocks
    V = T.int64(vec)
    CV = T.int64(n_vec)
    KO = T.int64(-(-n_vec // LANES))                      # vector loads per thread per row
    NT = TX * TY                                          # threads per block
    KX = T.int64(-(-n_embd // (LANES * WARPS)))           # elements of x per thread in the statistics
    inv_c = T.float32(1.0 / n_embd)
    eps_ = T.float32(eps)
    unroll = {"pragma_auto_unroll_max_step": 256, "pragma_unroll_explicit": 1}

    def epilogue(acc):
        return gelu_expr(acc) if gelu else acc

    @T.prim_func(s_tir=True)
    def ln_linear_decode(x: T.Buffer((one, C), dtype), gamma: T.Buffer((C,), dtype), beta: T.Buffer((C,), dtype),
                         w: T.Buffer((N, C), dtype), b: T.Buffer((N,), dtype), y: T.Buffer((one, N), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        # registers: indexed by (row, lane, ...) so that TVM compacts each to what one thread touches
        w_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")      # per thread: RY x KO x V
        partial = T.sblock_alloc_buffer((NP, TX), ACC, scope="local")             # per thread: RY
        row_acc = T.sblock_alloc_buffer((NP,), ACC, scope="local")                # per thread: RY
        x_sum = T.sblock_alloc_buffer((one,), ACC, scope="shared")
        sq_sum = T.sblock_alloc_buffer((one,), ACC, scope="shared")
        h = T.sblock_alloc_buffer((C,), dtype, scope="shared")                    # layernorm(x), in dtype
        for bx in T.thread_binding(NB, thread="blockIdx.x"):
            # 1. this thread's slice of W into registers, 16-byte vector loads (rows past N: row N - 1)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for r in T.serial(RY, annotations=unroll):
                        for ko in T.serial(KO, annotations=unroll):
                            for v in T.vectorized(V):
                                with T.sblock("w_load"):
                                    vj = T.axis.spatial(NP, bx * R + ty * RY + r)
                                    vt = T.axis.spatial(TX, tx)
                                    vo = T.axis.spatial(KO, ko)
                                    vv = T.axis.spatial(V, v)
                                    T.where(ko * TX + tx < CV)
                                    w_reg[vj, vt, vo, vv] = w[T.min(vj, N - one), (vo * TX + vt) * V + vv]
            # 2. the statistics of x: block-wide reductions, as layernorm.py's (two passes)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for kx in T.serial(KX):
                        with T.sblock("x_sum"):
                            vk = T.axis.reduce(C, kx * NT + ty * TX + tx)
                            T.where(kx * NT + ty * TX + tx < C)
                            with T.init():
                                x_sum[0] = T.float32(0)
                            x_sum[0] = x_sum[0] + T.Cast(ACC, x[0, vk])
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for kx in T.serial(KX):
                        with T.sblock("sq_sum"):
                            vk = T.axis.reduce(C, kx * NT + ty * TX + tx)
                            T.where(kx * NT + ty * TX + tx < C)
                            with T.init():
                                sq_sum[0] = T.float32(0)
                            sq_sum[0] = sq_sum[0] + (T.Cast(ACC, x[0, vk]) - x_sum[0] * inv_c) * (
                                T.Cast(ACC, x[0, vk]) - x_sum[0] * inv_c)
            # 3. h = layernorm(x), rounded to dtype as make_layernorm's output is, into shared memory
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for kx in T.serial(KX):
                        with T.sblock("normalize"):
                            vk = T.axis.spatial(C, kx * NT + ty * TX + tx)
                            T.where(kx * NT + ty * TX + tx < C)
                            h[vk] = T.Cast(dtype, (T.Cast(ACC, x[0, vk]) - x_sum[0] * inv_c)
                                           * T.rsqrt(sq_sum[0] * inv_c + eps_)
                                           * T.Cast(ACC, gamma[vk]) + T.Cast(ACC, beta[vk]))
            # 4. per thread: sum over its k slices of h[k] * W[j, k], in a float32 register
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for r in T.serial(RY, annotations=unroll):
                        with T.sblock("dot"):
                            vj = T.axis.spatial(NP, bx * R + ty * RY + r)
                            vt = T.axis.spatial(TX, tx)
                            acc = T.sblock_alloc_buffer((1,), ACC, scope="local")
                            h_vec = T.sblock_alloc_buffer((V,), dtype, scope="local")
                            acc[0] = T.float32(0)
                            for ko in T.serial(KO, annotations=unroll):
                                if ko * TX + vt < CV:
                                    for v in T.vectorized(V):                 # one vector load from shared
                                        h_vec[v] = h[(ko * TX + vt) * V + v]
                                    for v in T.serial(V, annotations=unroll):
                                        acc[0] = acc[0] + T.Cast(ACC, h_vec[v]) * T.Cast(ACC, w_reg[vj, vt, ko, v])
                            partial[vj, vt] = acc[0]
            # 5. the row's 32 partial sums added across the warp (spatial loops outside, lanes innermost:
            # what TVM's cross-thread reduction lowering needs), then bias (+ GELU), cast, one store
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for r in T.serial(RY):
                    for tx in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("row_sum"):
                            vj = T.axis.spatial(NP, bx * R + ty * RY + r)
                            vt = T.axis.reduce(TX, tx)
                            with T.init():
                                row_acc[vj] = T.float32(0)
                            row_acc[vj] = row_acc[vj] + partial[vj, vt]
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for r in T.serial(RY):
                    for tx in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("epilogue"):
                            vj = T.axis.spatial(N, bx * R + ty * RY + r)
                            T.where(tx == T.int64(0) and bx * R + ty * RY + r < N)
                            y[0, vj] = T.Cast(dtype, epilogue(row_acc[vj] + T.Cast(ACC, b[vj])))

    return ln_linear_decode


def ln_linear_ref(x, gamma, beta, w, b, eps=1e-5, gelu=False):
    """The two unfused kernels' references in sequence: layernorm (rounded to x's dtype), then linear."""
    h = layernorm_ref(x, gamma, beta, eps)
    return linear_gelu_ref(h, w, b) if gelu else linear_ref(h, w, b)
