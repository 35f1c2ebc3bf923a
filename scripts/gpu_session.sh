#!/usr/bin/env bash
# On the lent GPU machine (see scripts/device_prepare.sh for getting TVM there): one measured step,
#   bash scripts/gpu_session.sh verify|table|all-sizes [dtype]|profile|check|check-tuned|check-fused|trace|round|flash|bench-flash|flash-round|pdl|trace-pdl|pdl-round|bench-pdl|bench-gpt2|bench-xl|
#                               bench-xl-tuned|bench-fused|bench-mm|flash-mma|linear-mma|linear-wgmma|tiles-check|tiles|bench-vs-base|mm|sampling|weight-stream|ring|mlp-layers|decode-layers|head-cluster|side-prefetch|pipe|pipe-bench|pipe-sweep|proj|preload-pick|variants|bench-variant|bench-decode|bench-xl-pair|bench-xl-once|side|trace-side|trace-one|trace-vs-base|<any tinygpt2 args>
# writes its table(s) under $OUT (the device tool's output folder).
set -euo pipefail
. scripts/device_env.sh
OUT=$(realpath -m "${OUT:-out}"); mkdir -p "$OUT"
# from the checkout's root, `python3 -m tinygpt2` would import ./tinygpt2 without kernels/ beside it
tg() { (cd /tmp && python3 -m tinygpt2 "$@"); }
# `fused` (which has pdl-decode) spelt out, and without pdl-decode
PDL=pdl-decode,fused-decode,flash-prefill,hand-softmax,tensor-core-matmul-async,tensor-core-matmul,matmul,small-block-gemv,gemv,reduction,general-reduction,fallback
NOPDL=${PDL#pdl-decode,}
# preset `fused` as tinygpt2.rules has it now, without the entry $1 (whether it holds it or not)
fused_without() { python3 -c "from tinygpt2.rules import GPU_FUSED; print(','.join(r for r in GPU_FUSED if r != '$1'))"; }
# the model (MODELS, gpt2-xl by default) with `fused` and the entry $1, then without it, HF eager beside the first;
# the rest of the arguments go to `tinygpt2 bench`; tables under $OUT/bench-with, $OUT/bench-without
with_without() {
  local entry=$1 rest; shift; rest=$(fused_without "$entry"); PEERS=hf-eager
  for r in "with $entry,$rest" "without $rest"; do (cd /tmp && timeout 200 python3 -m tinygpt2 bench --target cuda \
    --models ${MODELS:-random:gpt2-xl} --dtypes float16 --rules ${r#* } --peers $PEERS --repeats 3 "$@" \
    --out "$OUT/bench-${r%% *}") || true; PEERS=none; done
}
# variants of `fused`, by sed on this tree (all timed in the twenty-eighth session, docs/results/trigger_prefetch_h100.md):
# the MLP's c_proj launching qkv at its last group, as before that session (kernels/ln_linear.py's PIPE_TRIGGER
# "last"; last), its epilogue operands loaded early (model.py's PRELOAD_LINEARS; pre)
last() { sed -i 's/^PIPE_TRIGGER = "before-last"/PIPE_TRIGGER = "last"/' kernels/ln_linear.py; }
pre() { sed -i 's/^PRELOAD_LINEARS = (/PRELOAD_LINEARS = ("linear_mlp_proj", /' tinygpt2/model.py; }
# ... and c_fc bringing the first 1/N of the MLP c_proj's weights into L2 (model.py's FC_PREFETCH_PROJ; nxN, nx0 off), from
# the end of its blocks instead of right after the PDL wait (kernels/ln_linear.py's NEXT_PREFETCH_AT; end)
nx() { sed -i "s/^FC_PREFETCH_PROJ = .*/FC_PREFETCH_PROJ = $1/" tinygpt2/model.py; }
end() { sed -i 's/^NEXT_PREFETCH_AT = "wait"/NEXT_PREFETCH_AT = "end"/' kernels/ln_linear.py; }
# ... and attention_cluster handing rank 0 its parts through a cluster barrier, as before the twenty-ninth session,
# instead of by st.async on rank 0's mbarrier (kernels/decode_cluster.py's MERGE_BY_ASYNC_STORES; abar)
abar() { sed -i 's/^MERGE_BY_ASYNC_STORES = True/MERGE_BY_ASYNC_STORES = False/' kernels/decode_cluster.py; }
# ... and ln_f and the head as two launches, the layernorm and DLight's GEMV, as before the thirtieth session (model.py's
# LN_F_IN_HEAD; lmsep), or the fused head's grid at up to 7 blocks an SM instead of 4 (kernels/lm_head.py's
# HEAD_BLOCKS; lmb7), or decode_greedy's argmax over the whole vocabulary's logits rather than the head's blocks'
# candidates (model.py's HEAD_ARGMAX; lmfull)
lmsep() { sed -i 's/^LN_F_IN_HEAD = True/LN_F_IN_HEAD = False/' tinygpt2/model.py; }
lmb7() { sed -i 's/^HEAD_BLOCKS = PIPE_BLOCKS/HEAD_BLOCKS = 7 * 132/' kernels/lm_head.py; }
lmfull() { sed -i 's/^HEAD_ARGMAX = True/HEAD_ARGMAX = False/' tinygpt2/model.py; }
# ... and (timed in the thirty-first session, docs/results/pipe_blocks_h100.md) the MLP's c_proj as a pipelined grid
# of 256 threads a block, 2 rows a group (model.py's PIPE_THREADS_OF; pt256)
pt256() { sed -i 's/^PIPE_THREADS_OF: dict\[str, int\] = {}/PIPE_THREADS_OF: dict[str, int] = {"linear_mlp_proj": 256}/' tinygpt2/model.py; }
# ... or qkv so (pt256q; after pt256 in a +-joined combination: pt256+pt256q for both)
pt256q() { sed -i 's/^PIPE_THREADS_OF: dict\[str, int\] = {/PIPE_THREADS_OF: dict[str, int] = {"ln_linear_qkv": 256, /' tinygpt2/model.py; }
# ... or the MLP's c_proj over more or fewer blocks (model.py's PIPE_BLOCKS_OF; cpbN: at most N an SM, as few as give
# each the same number of groups: 5 -> 534 blocks of 3 groups, the default since; 3 -> 320 of 5; 4 -> 400 of 4, as
# before), or c_fc letting it launch once c_fc's loads are used (fcl), or qkv so (qpbN, after cpbN in a combination;
# qpb5's 2 groups a block are under model.PIPE_MIN_GROUPS now, so that pipe-decode builds nothing: timed, it was not)
cpb() { sed -i 's/^PIPE_BLOCKS_OF: dict\[str, int\] = {.*}/PIPE_BLOCKS_OF: dict[str, int] = {"linear_mlp_proj": '"$1"' * 132}/' tinygpt2/model.py; }
fcl() { sed -i 's/ln_fc_gelu = decode_linear("ln_linear_fc_gelu", C, F, True, gelu=True)/ln_fc_gelu = decode_linear("ln_linear_fc_gelu", C, F, True, gelu=True, mode="loaded" if pdl else pdl)/' tinygpt2/model.py; }
qpb() { sed -i 's/^PIPE_BLOCKS_OF: dict\[str, int\] = {/PIPE_BLOCKS_OF: dict[str, int] = {"ln_linear_qkv": '"$1"' * 132, /' tinygpt2/model.py; }
variant() { local v; for v in "$@"; do case $v in nx*) nx "${v#nx}" ;; cpb*) cpb "${v#cpb}" ;; qpb*) qpb "${v#qpb}" ;; *) $v ;; esac; done; }
# the files those variants edit, kept as /tmp/*.TAG and put back
EDITED="kernels/ln_linear.py tinygpt2/model.py kernels/decode_cluster.py kernels/lm_head.py"
keep() { local f; for f in $EDITED; do cp $f /tmp/$(basename $f .py).$1; done; }
back() { local f; for f in $EDITED; do cp /tmp/$(basename $f .py).$1 $f; done; }
# VARIANT="last pre nx8 end abar lmsep lmb7 lmfull pt256 pt256q cpb3 qpb3 fcl" (any of them): applied before MODE,
# restored on exit
if [ -n "${VARIANT:-}" ] && [ "$1" != bench-variant ] && [ "$1" != bench-xl-pair ]; then
  keep var; trap 'back var' EXIT; variant $VARIANT; fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
case "$1" in
  # this checkout on the GPU, before anything is timed: the WMMA flash tests (skipped without a GPU), the logits
  # check for `default` and `fused`, and the README's CUDA example (shakespeare, greedy and sampled on the device)
  # (not the file's WebGPU tests: wgpu is not installed there; nor its SASS test: no cuobjdump wheel there)
  verify)     (cd /tmp && timeout 150 python3 -m pytest -q -p no:cacheprovider -k "not webgpu and not keeps_a_lanes" \
                "$OLDPWD/tests/test_flash_attention.py") \
                | tail -3 | tee "$OUT/test_flash.txt" || true
              # the cluster kernels against numpy at gpt2-xl's shapes (the attention's st.async merge, pos 0 included)
              (cd /tmp && timeout 200 python3 -m pytest -q -p no:cacheprovider -k "cluster and on_the_gpu" \
                "$OLDPWD/tests/test_cuda_compile.py") | tail -3 | tee "$OUT/test_cluster.txt" || true
              for r in fused default; do timeout 150 python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 \
                --rules $r | tee "$OUT/gpu_check_$r.md" || true; done
              # gpt2-xl's widths (4 layers): where fused's pipe-decode pipelines qkv and the MLP's c_proj
              timeout 150 python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules fused \
                --n-layer 4 --n-embd 1600 --n-head 25 | tee "$OUT/gpu_check_fused_xl.md" || true
              (cd /tmp && timeout 60 python3 "$OLDPWD/examples/generate.py" --model shakespeare --target cuda \
                --prompt "ROMEO:" --max-new-tokens 48 && timeout 60 python3 "$OLDPWD/examples/generate.py" --model shakespeare \
                --target cuda --dtype float16 --prompt "ROMEO:" --max-new-tokens 48 --temperature 0.8 --seed 1) \
                2>&1 | tee "$OUT/generate.txt" || true ;;
  # the issue's headline run: both aims' models beside both HF peers in one process (the closing note's table)
  table)      (cd /tmp && timeout ${T:-500} python3 -m tinygpt2 bench --target cuda --models random:gpt2,random:gpt2-xl \
                --dtypes float16 --rules fused --peers hf-eager,hf-compiled --repeats 3 --out "$OUT/bench-table") || true ;;
  # `tinygpt2 bench --target cuda` with its defaults (every Hub size, rules auto, both HF peers), one dtype a call
  # (each fits a call's 600 s on an H100: ~290 s fp16 with install, ~195 s fp32): all-sizes float16, all-sizes float32
  all-sizes)  (cd /tmp && timeout ${T:-500} python3 -m tinygpt2 bench --target cuda --dtypes ${2:-float16} --repeats 3 \
                --out "$OUT/bench-${2:-float16}") || true ;;
  # where gpt2-xl's decode and 1024-token prefill spend their time, per kernel: the bench's profile, then decode's
  # kernels as they run in the CUDA graph (CUPTI), then this GPU's one-kernel-per-matrix ceiling
  # (scripts/bench_weight_stream.py's first two sections)
  profile)    (cd /tmp && timeout 150 python3 -m tinygpt2 bench --target cuda --models random:gpt2-xl \
                --dtypes float16 --rules fused --peers none --prompt-lens 1024 --decode-tokens 64 --repeats 3 --profile \
                --profile-prefill-len 1024 --out "$OUT/bench-profile") || true
              timeout 100 python3 scripts/trace_decode.py random:gpt2-xl float16 fused 20 --out="$OUT/trace" \
                | tee "$OUT/trace.md" || true
              timeout 150 python3 scripts/bench_weight_stream.py --reads --out="$OUT" || true ;;
  check)      python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 | tee "$OUT/gpu_check.md" ;;
  check-tuned) python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules tuned | tee "$OUT/gpu_check_tuned.md" ;;
  check-fused) python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules fused | tee "$OUT/gpu_check_fused.md" ;;
  bench-xl-tuned) tg bench --target cuda --models random:gpt2-xl --dtypes float16 --rules tuned --peers hf-eager \
                --decode-tokens 64 --repeats 3 --profile --profile-prefill-len 1024 --out "$OUT/bench-xl-tuned" ;;
  # decode, plain graph vs the hand-scheduled fused kernels, in one loan (docs/results/README.md)
  bench-fused) for r in default fused; do tg bench --target cuda --models random:gpt2,random:gpt2-xl --dtypes float16 \
                --rules $r --peers none --decode-tokens 64 --repeats 3 --profile --out "$OUT/bench-$r"; done ;;
  # decode's kernels as they run inside the CUDA graph (CUPTI), plain graph vs fused kernels
  trace)      for r in ${2:-default fused}; do python3 scripts/trace_decode.py ${MODEL:-random:gpt2} float16 $r 20 \
                --out="$OUT/trace" | tee -a "$OUT/trace.md"; done ;;
  # sampling on the device (kernels/sample.py, decode_sample): the logits check with its sampled column, decode's
  # kernels in the graph with the sampler, and sampled decode on the device against the host (bench's notes)
  sampling)   timeout 120 python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules fused \
                | tee "$OUT/gpu_check_sampling.md" || true
              for m in random:gpt2 random:gpt2-xl; do timeout 70 python3 scripts/trace_decode.py $m float16 fused 20 --sampled \
                --out="$OUT/trace" | tee -a "$OUT/trace_sampled.md" || true; done
              (cd /tmp && timeout 200 python3 -m tinygpt2 bench --target cuda --models random:gpt2,random:gpt2-xl \
                --dtypes float16 --rules fused --prompt-lens 128 --peers none --repeats 3 --out "$OUT/bench-sampling") || true ;;
  # one loan's whole round for preset `fused` (about 530 s at most: with install.sh, under a call's 600): decode's kernels in the
  # graph for gpt2 and gpt2-xl, the logits check, then the bench of each beside its peers
  round)      for m in random:gpt2 random:gpt2-xl; do MODEL=$m timeout 70 bash "$0" trace fused || true; done
              timeout 100 python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules fused \
                | tee "$OUT/gpu_check_fused.md" || true
              (cd /tmp && timeout 110 python3 -m tinygpt2 bench --target cuda --models random:gpt2 --dtypes float16 \
                --rules fused --out "$OUT/bench-gpt2") || true
              (cd /tmp && timeout 180 python3 -m tinygpt2 bench --target cuda --models random:gpt2-xl --dtypes float16 \
                --rules fused --prompt-lens 1024 --peers hf-eager --repeats 3 --out "$OUT/bench-xl") || true ;;
  # prefill's one-kernel attention (flash-prefill, in `fused` since): its tests on the GPU and its tile table
  # (scripts/bench_flash.py); `check-fused` is its logits check
  flash)      (cd /tmp && timeout 120 python3 -m pytest -q -p no:cacheprovider -k "tensor_core or layouts" \
                "$OLDPWD/tests/test_flash_attention.py") | tail -3 | tee "$OUT/test_flash.txt" || true
              timeout 60 python3 scripts/bench_flash.py | tee "$OUT/bench_flash_kernel.md" || true ;;
  # `fused` against the same list without flash-prefill (gpt2-xl unless MODELS says), HF eager beside the first
  bench-flash) without=fused-decode,hand-softmax,tensor-core-matmul,matmul,small-block-gemv,gemv,reduction,general-reduction,fallback
              for r in fused $without; do
                (cd /tmp && timeout 280 python3 -m tinygpt2 bench --target cuda --models ${MODELS:-random:gpt2-xl} --dtypes float16 \
                  --rules $r --peers ${PEERS:-hf-eager} --decode-tokens 16 --repeats 3 --profile --profile-prefill-len 1024 \
                  --out "$OUT/bench-flash-$(echo $r | cut -c1-12)") || true; PEERS=none; done ;;
  # flash-prefill's kept tiles in one short loan: `flash`, then gpt2-xl and gpt2 with `fused` beside HF eager
  flash-round) bash "$0" flash
              (cd /tmp && timeout 150 python3 -m tinygpt2 bench --target cuda --models random:gpt2-xl --dtypes float16 \
                --rules fused --prompt-lens 128,512,1024 --peers hf-eager --decode-tokens 64 --repeats 3 --profile \
                --profile-prefill-len 1024 --out "$OUT/bench-xl") || true
              (cd /tmp && timeout 100 python3 -m tinygpt2 bench --target cuda --models random:gpt2 --dtypes float16 \
                --rules fused --peers hf-eager --decode-tokens 64 --out "$OUT/bench-gpt2") || true ;;
  # decode's hand kernels launched with PDL (pdl-decode) against `fused` without it: logits, traces, benches
  pdl)        for m in random:gpt2 random:gpt2-xl; do for r in $NOPDL $PDL; do
                timeout 100 python3 scripts/trace_decode.py $m float16 $r 20 --out="$OUT/trace" | tee -a "$OUT/trace_pdl.md" \
                  || true; done; done
              timeout 120 python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules $PDL \
                | tee "$OUT/gpu_check_pdl.md" || true ;;
  # gpt2-xl's decode kernels in the graph for each place a kernel lets the next launch (kernels/_pdl.py)
  trace-pdl)  for r in $NOPDL $PDL ${PDL/pdl-decode/pdl-decode-loaded} ${EARLY:+${PDL/pdl-decode/pdl-decode-early}}; do
                timeout 120 python3 scripts/trace_decode.py ${MODEL:-random:gpt2-xl} float16 $r 20 --out="$OUT/trace" \
                  | tee -a "$OUT/trace_pdl.md" || true; done ;;
  # one loan: trace-pdl, the logits check of pdl-decode, its bench (gpt2, gpt2-xl)
  pdl-round)  bash "$0" trace-pdl
              timeout 120 python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules $PDL \
                | tee "$OUT/gpu_check_pdl.md" || true
              (cd /tmp && timeout 150 python3 -m tinygpt2 bench --target cuda --models random:gpt2,random:gpt2-xl \
                --dtypes float16 --rules $PDL --peers none --prompt-lens 128 --decode-tokens 256 --repeats 3 \
                --out "$OUT/bench-pdl") || true ;;
  bench-pdl)  for r in $PDL $NOPDL; do (cd /tmp && timeout 200 python3 -m tinygpt2 bench --target cuda \
                --models ${MODELS:-random:gpt2,random:gpt2-xl} --dtypes float16 --rules $r --peers none --prompt-lens 128 \
                --decode-tokens 256 --repeats 3 --profile --out "$OUT/bench-pdl-$(echo $r | cut -c1-5)") || true; done ;;
  # prefill's linears per tensor-core schedule (scripts/bench_matmul.py), cuBLAS beside them
  bench-mm)   timeout 300 python3 scripts/bench_matmul.py ${MM_ARGS:-} | tee "$OUT/bench_matmul.md" || true ;;
  # prefill's attention as FlashAttention-2 lays it out (mma.sync): its tests on the GPU (the lane layouts alone, then
  # the TVMScript kernel against numpy), the raw and TVMScript kernels beside the model's and torch's SDPA at 1024 and
  # 128 tokens (scripts/bench_flash_mma.py), gpt2 and gpt2-xl's prefill with `flash-prefill-mma` (in `fused`) and
  # without it, HF eager beside (a loan's host moves HF's figure), then the tile knobs of bench-mm on this GPU
  flash-mma)  (cd /tmp && timeout 200 python3 -m pytest -q -p no:cacheprovider -k "fragments or mma" \
                "$OLDPWD/tests/test_cuda_compile.py" "$OLDPWD/tests/test_flash_attention_mma.py") | tail -4 \
                | tee "$OUT/tests.txt" || true
              for n in 1024 128; do timeout 200 python3 scripts/bench_flash_mma.py --n=$n \
                --out="$OUT/flash-mma-$n" || true; done
              MODELS=random:gpt2,random:gpt2-xl with_without flash-prefill-mma --decode-tokens 16 --profile \
                --profile-prefill-len 1024
              timeout 250 python3 scripts/bench_matmul.py --variants w8-64x32,w8-32x64,w4-64x64,w4-64x32-128x64 \
                | tee "$OUT/bench_matmul.md" || true ;;
  # prefill's linears on mma.sync (kernels/linear_mma.py): its numpy tests on the GPU, its tiles beside WMMA's and
  # cuBLAS (bench_matmul.py), then gpt2-xl's prefill with and without `matmul-mma`, HF eager beside the first
  linear-mma) (cd /tmp && timeout 100 python3 -m pytest -q -p no:cacheprovider -k numpy "$OLDPWD/tests/test_linear_mma.py") \
                | tail -3 | tee "$OUT/tests.txt" || true
              timeout 150 python3 scripts/bench_matmul.py --variants ${VARIANTS:-w8-64x32,mma-128x128-w2x4-k32-s4,mma-128x128-w2x4-k32-s4-b1,mma-128x128-w2x4-k64-s3,mma-128x192-w2x4-k32-s4,mma-128x256-w2x4-k32-s3-b1,mma-64x128-w2x4-k32-s4,mma-64x128-w2x4-k64-s3,mma-256x128-w4x2-k32-s3-b1} \
                | tee "$OUT/bench_matmul_mma.md" || true
              with_without matmul-mma --prompt-lens 128,1024 --decode-tokens 16 ;;
  # kernels/linear_wgmma.py on the GPU: its numpy cases, its tiles beside WMMA's (tensor-core-matmul-async), mma.sync's
  # best and cuBLAS, gpt2's logits with it (fp16, against transformers), then gpt2-xl with `matmul-wgmma` in front of `fused` and without (HF eager beside the first)
  linear-wgmma) (cd /tmp && timeout 150 python3 -m pytest -q -p no:cacheprovider -k numpy "$OLDPWD/tests/test_linear_wgmma.py") \
                | tail -3 | tee "$OUT/tests.txt" || true
              timeout 200 python3 scripts/bench_matmul.py --variants ${VARIANTS:-w8-64x32,mma-128x128-w2x4-k32-s4-b1,wg-auto,wg-128-g2-s4,wg-256-g2-s4,wg-192-g2-s4,wg-160-g2-s4,wg-64-g2-s4,wg-128-g1-s6,wg-160-g1-s5,wg-256-g1-s4} \
                | tee "$OUT/bench_matmul_wgmma.md" || true
              timeout 120 python3 scripts/gpu_check.py --targets cuda --dtypes float16 --rules "matmul-wgmma,$(fused_without none)" \
                | tee "$OUT/gpu_check_wgmma.md" || true
              with_without matmul-wgmma --prompt-lens 128,1024 --decode-tokens 16 ;;
  # linear_wgmma.tile_for's cost model on the GPU: the numpy cases of two widths it picks (192, 64; new to them), the logits
  # (fp16, against transformers) with the model's tiles and this checkout's decode kernels
  tiles-check) (cd /tmp && timeout 150 python3 -m pytest -q -p no:cacheprovider -k "numpy and (tiles2 or tiles3)" \
                "$OLDPWD/tests/test_linear_wgmma.py") | tail -3 | tee "$OUT/tests.txt" || true
              timeout 150 python3 scripts/gpu_check.py --targets cuda --dtypes float16 --rules fused \
                | tee "$OUT/gpu_check.md" || true ;;
  # ... and every 2-warpgroup width for gpt2, gpt2-medium and gpt2-large's linears at 1024 tokens (gpt2-xl's:
  # bench_matmul_wgmma_h100.md)
  tiles)      for m in gpt2 gpt2-medium gpt2-large; do timeout 150 python3 scripts/bench_matmul.py --model $m \
                --variants wg-auto,wg-256-g2-s4,wg-192-g2-s4,wg-160-g2-s4,wg-128-g2-s4,wg-64-g2-s4 \
                | tee "$OUT/bench_matmul_$m.md" || true; done ;;
  # prefill (preset fused) at an older checkout (.base, made as trace-vs-base says) and at this one, back to back
  bench-vs-base) ln -sfn "$PWD/tinygpt2/assets" .base/tinygpt2/assets   # each call's tree may lie elsewhere
              for side in base this; do d=.; [ $side = base ] && d=.base
                (cd $d && . scripts/device_env.sh && export TINYGPT2_CACHE=/tmp/tgc_$side && cd /tmp && timeout 240 \
                  python3 -m tinygpt2 bench --target cuda --models ${MODELS:-random:gpt2,random:gpt2-xl} --dtypes float16 \
                  --rules fused --peers none --prompt-lens ${LENS:-128,512,1024} --decode-tokens 16 --repeats 5 \
                  --out "$OUT/bench-$side") || true; done ;;
  # how fast one kernel per weight matrix can stream gpt2-xl's decode weights (raw CUDA beside ours; no TVM)
  weight-stream) timeout 300 python3 scripts/bench_weight_stream.py --out="$OUT" || true ;;
  # the MLP and the bare ring in raw CUDA (sections 3-4), then the same TMA ring written in TVMScript, one loan
  ring)       timeout 300 python3 scripts/bench_weight_stream.py --mlp-only --out="$OUT" || true
              timeout 200 python3 scripts/bench_tvm_ring.py | tee "$OUT/bench_tvm_ring.md" || true ;;
  # every layer's MLP in one launch: the raw CUDA rows (--layers, with their two-kernel baseline), then the TVMScript
  # kernel (scripts/bench_tvm_mlp_layers.py), one loan
  mlp-layers) timeout 250 python3 scripts/bench_weight_stream.py --layers --out="$OUT" || true
              timeout 150 python3 scripts/bench_tvm_mlp_layers.py | tee "$OUT/bench_tvm_mlp_layers.md" || true ;;
  # a whole decode layer (attention and MLP) for every layer in one launch, raw CUDA (scripts/bench_decode_layers.py)
  decode-layers) timeout 250 python3 scripts/bench_decode_layers.py --out="$OUT" || true ;;
  # c_attn and the decode attention as one kernel, a thread-block cluster per head, raw CUDA (scripts/bench_head_cluster.py;
  # torch and nvcc only: runs without the TVM install)
  head-cluster) timeout 300 python3 scripts/bench_head_cluster.py --out="$OUT" || true ;;
  # side-prefetch in front of `fused`: gpt2's logits (gpu_check), then gpt2-xl's decode with and without it, in turn
  side)       SIDE=side-prefetch,$(fused_without none)
              timeout 200 python3 scripts/gpu_check.py --targets cuda --dtypes float16 --rules $SIDE \
                | tee "$OUT/gpu_check_side.md" || true
              i=0; for r in fused $SIDE fused $SIDE; do i=$((i + 1))
                (cd /tmp && timeout 200 python3 -m tinygpt2 bench --target cuda --models ${MODELS:-random:gpt2-xl} \
                  --dtypes float16 --rules $r --peers none --prompt-lens 128 --repeats 3 --out "$OUT/bench-side-$i") \
                  || true; done ;;
  # gpt2-xl's decode kernels in the graph: fused, then side-prefetch with its prefetcher only polling, then prefetching
  trace-side) SIDE=side-prefetch,$(fused_without none)
              for v in "fused:" "$SIDE:--side-idle" "$SIDE:"; do r=${v%:*}; f=${v##*:}
                timeout 170 python3 scripts/trace_decode.py ${2:-random:gpt2-xl} float16 $r 20 $f --out="$OUT/trace" \
                  2>/dev/null | tee -a "$OUT/trace_side.md" || true; done ;;
  # a prefetcher on a second stream beside a gpt2-xl layer's skeleton, raw CUDA (scripts/bench_side_prefetch.py)
  side-prefetch) timeout 200 python3 scripts/bench_side_prefetch.py --out="$OUT" || true ;;
  # the same skeleton's chain of persistent GEMVs (W's first rows before the PDL wait) beside its baselines; then the
  # model's (pipe-decode, in `fused`): its logits at gpt2-xl's widths, and gpt2-xl's step traced against fused's
  # without it, first and last (docs/results/pipe_decode_h100.md)
  pipe)       timeout 200 python3 scripts/bench_side_prefetch.py --pipe-only --out="$OUT" || true
              NOPIPE=$(fused_without pipe-decode)
              timeout 150 python3 scripts/gpu_check.py --targets cuda --dtypes float16 --rules fused --n-layer 4 \
                --n-embd 1600 --n-head 25 | tee "$OUT/gpu_check_pipe.md" || true
              for r in $NOPIPE fused $NOPIPE; do
                timeout 100 python3 scripts/trace_decode.py ${2:-random:gpt2-xl} float16 $r 20 --out="$OUT/trace" \
                  2>/dev/null | tee -a "$OUT/trace_pipe.md" || true; done ;;
  # pipe-decode as the benchmark sees it: fused's logits at gpt2-xl's widths (where it pipelines qkv and the MLP's
  # c_proj), then decode of gpt2-xl and gpt2 with `fused`, then without pipe-decode (docs/results/pipe_decode_h100.md)
  pipe-bench) timeout 120 python3 scripts/gpu_check.py --targets cuda --dtypes float16,float32 --rules fused \
                --n-layer 4 --n-embd 1600 --n-head 25 | tee "$OUT/gpu_check_pipe.md" || true
              MODELS=random:gpt2-xl,random:gpt2 with_without pipe-decode --prompt-lens 128 --decode-tokens 128 ;;
  # attention-proj (the attention's c_proj inside the cluster kernel, by atomics): the numpy checks of its kernel on
  # this GPU, fused's logits with it at gpt2-xl's widths, gpt2-xl's step traced with, without, with it, then with
  # c_fc launched late; the benchmark with and without it (~8 min)
  proj)       WITH=attention-proj,$(fused_without none)
              (cd /tmp && timeout 120 python3 -m pytest -q -p no:cacheprovider -k "attention_proj" \
                "$OLDPWD/tests/test_cuda_compile.py") | tail -3 | tee "$OUT/test_proj.txt" || true
              timeout 150 python3 scripts/gpu_check.py --targets cuda --dtypes float16 --rules $WITH --n-layer 4 \
                --n-embd 1600 --n-head 25 | tee "$OUT/gpu_check_proj.md" || true
              for r in $WITH fused $WITH; do
                timeout 80 python3 scripts/trace_decode.py random:gpt2-xl float16 $r 20 --out="$OUT/trace" \
                  2>/dev/null | tee -a "$OUT/trace_proj.md" || true; done
              # ... and with c_fc launched as the attention completes (PROJ_LAUNCH_EARLY, kernels/decode_cluster.py)
              cp kernels/decode_cluster.py /tmp/decode_cluster.orig
              sed -i 's/^PROJ_LAUNCH_EARLY = .*/PROJ_LAUNCH_EARLY = False/' kernels/decode_cluster.py
              timeout 80 python3 scripts/trace_decode.py random:gpt2-xl float16 $WITH 20 --out="$OUT/trace-late" \
                2>/dev/null | sed "s/^#### /#### c_fc launched late: /" | tee -a "$OUT/trace_proj.md" || true
              cp /tmp/decode_cluster.orig kernels/decode_cluster.py
              MODELS=random:gpt2-xl with_without attention-proj --prompt-lens 128 --decode-tokens 128 ;;
  # the epilogue preloads linear by linear (kernels/ln_linear.py's preload=, picked by tinygpt2/model.py's
  # PRELOAD_LINEARS, set by sed, restored between; every linear at once in docs/results/attention_proj_preload_h100.md):
  # fused's logits at gpt2-xl's widths with the MLP's and the attention's c_proj preloaded, gpt2-xl's step traced with
  # neither, both, each alone, neither, both; then the benchmark with both and with neither (~8 min)
  preload-pick) md=tinygpt2/model.py; cp $md /tmp/model.orig
              pick() { cp /tmp/model.orig $md; sed -i "s/^PRELOAD_LINEARS = .*/PRELOAD_LINEARS = ($1)/" $md; }
              both='"linear_mlp_proj", "linear_attn_proj"'
              pick "$both"; timeout 150 python3 scripts/gpu_check.py --targets cuda --dtypes float16 --rules fused \
                --n-layer 4 --n-embd 1600 --n-head 25 | tee "$OUT/gpu_check_preload.md" || true
              for v in none both mlp attn none both; do
                case $v in none) pick "" ;; both) pick "$both" ;; mlp) pick '"linear_mlp_proj",' ;;
                  attn) pick '"linear_attn_proj",' ;; esac
                timeout 80 python3 scripts/trace_decode.py random:gpt2-xl float16 fused 20 --out="$OUT/trace-$v" \
                  2>/dev/null | sed "s/^#### /#### preload $v: /" | tee -a "$OUT/trace_preload.md" || true; done
              for v in both none; do [ $v = both ] && pick "$both" || pick ""
                (cd /tmp && timeout 200 python3 -m tinygpt2 bench --target cuda --models random:gpt2-xl,random:gpt2 \
                  --dtypes float16 --rules fused --peers none --repeats 3 --prompt-lens 128 --decode-tokens 128 \
                  --out "$OUT/bench-$v") || true; done
              cp /tmp/model.orig $md ;;
  # the variants above, gpt2-xl's step traced for each (~40 s a variant), `fused` first and last; first, fused's logits
  # at gpt2-xl's widths with the variants VCHECK (default: c_fc's prefetch and the MLP c_proj's preload) (V: the
  # variants, one word a variant, +-joined for several at once)
  variants)   keep orig; variant ${VCHECK:-nx8 pre}; timeout 150 python3 scripts/gpu_check.py --targets cuda --dtypes float16 --rules fused \
                --n-layer 4 --n-embd 1600 --n-head 25 | tee "$OUT/gpu_check_variants.md" || true
              for v in fused ${V:-last pre nx16 pre+nx16} fused; do back orig; [ $v = fused ] || variant ${v//+/ }
                timeout 80 python3 scripts/trace_decode.py random:gpt2-xl float16 fused 20 --out="$OUT/trace-$v" \
                  2>/dev/null | sed "s/^#### /#### $v: /" | tee -a "$OUT/trace_variants.md" || true; done
              back orig ;;
  # decode's benchmark (gpt2-xl, gpt2; fused; prompt 128, 128 decoded) with VARIANT and without, twice, alternating
  bench-variant) for i in 1 2; do for v in "$VARIANT" ""; do t=${v// /-}
                VARIANT="$v" OUT="$OUT/bench-${t:-fused}-$i" bash "$0" bench-decode || true; done; done ;;
  # gpt2-xl alone at the issue's workload (prefill 128/512/1024, 256 decoded after 128), `fused` then VARIANT, twice,
  # one process each (~25 s each once compiled): the twenty-ninth session's back-to-back pairs
  bench-xl-pair) for i in 1 2; do for v in "" "$VARIANT"; do t=${v// /-}
                VARIANT="$v" OUT="$OUT/bench-${t:-fused}-$i" bash "$0" bench-xl-once | grep "^| tinygpt2.*%\|one decode call" \
                  | sed "s/^/${t:-fused} $i: /" | tee -a "$OUT/bench_pairs.md" || true; done; done ;;
  bench-xl-once) (cd /tmp && timeout 120 python3 -m tinygpt2 bench --target cuda --models random:gpt2-xl --dtypes float16 \
                  --peers none --repeats 3 --out "$OUT") || true ;;
  bench-decode) (cd /tmp && timeout 200 python3 -m tinygpt2 bench --target cuda --models random:gpt2-xl,random:gpt2 \
                  --dtypes float16 --rules fused --peers none --repeats 3 --prompt-lens 128 --decode-tokens 128 \
                  --out "$OUT") || true ;;
  # pipe-decode's neighbours, gpt2-xl's step traced for each (~40 s a variant): `fused` (which has it), then each
  # variant made by sed expressions on kernels/ln_linear.py and tinygpt2/model.py (restored between), `fused`
  # without it last (the twenty-sixth session's sweep: docs/results/pipe_decode_h100.md)
  pipe-sweep) ln=kernels/ln_linear.py; md=tinygpt2/model.py; keep orig
              sweep() { local tag=$1; shift; back orig
                for e in "$@"; do sed -i "$e" $ln $md; done
                timeout 80 python3 scripts/trace_decode.py random:gpt2-xl float16 fused 20 --out="$OUT/trace-$tag" \
                  2>/dev/null | sed "s/^#### .*in the CUDA graph/#### $tag: in the CUDA graph/" \
                  | tee -a "$OUT/pipe_sweep.md" || true; }
              blocks() { echo "s/^PIPE_BLOCKS = .*/PIPE_BLOCKS = $1 * 132/"; }
              sweep defaults
              sweep 3-an-sm "$(blocks 3)"
              sweep 2-in-flight 's/^PIPE_IN_FLIGHT = .*/PIPE_IN_FLIGHT = 2/'
              sweep all-four 's/^PIPE_DECODE_LINEARS = .*/PIPE_DECODE_LINEARS = {"ln_linear_qkv": (1, 3), '\
'"linear_attn_proj": (1, 1), "ln_linear_fc_gelu": (1, 4), "linear_mlp_proj": (4, 1)}/'
              back orig
              timeout 80 python3 scripts/trace_decode.py random:gpt2-xl float16 $(fused_without pipe-decode) 20 \
                --out="$OUT/trace" 2>/dev/null | tee -a "$OUT/pipe_sweep.md" || true ;;
  # gpt2-xl's prefill with `fused`, then the same list without tensor-core-matmul-async, HF eager beside the first
  mm)         i=0; for r in $PDL ${PDL/tensor-core-matmul-async,/}; do i=$((i + 1))
                (cd /tmp && timeout 250 python3 -m tinygpt2 bench --target cuda --models ${MODELS:-random:gpt2-xl} \
                  --dtypes float16 --rules $r --peers ${PEERS:-hf-eager} --prompt-lens ${LENS:-512,1024} --decode-tokens 16 \
                  --repeats 3 --profile --profile-prefill-len 1024 --out "$OUT/bench-mm-$i") || true; PEERS=none; done ;;
  # decode's kernels in the graph (preset fused), an older checkout against this one in the same loan. First, here:
  #   rm -rf .base && mkdir .base && git archive <rev> tinygpt2 kernels runtime scripts | tar -x -C .base
  #   rm -r .base/tinygpt2/assets                      (and carry ".base": .gitignore keeps it out of the tree)
  trace-vs-base) ln -sfn "$PWD/tinygpt2/assets" .base/tinygpt2/assets   # each call's tree may lie elsewhere
              for m in ${MODELS:-random:gpt2-xl random:gpt2}; do
                (cd .base && TG_CACHE=/tmp/tgc_base timeout 120 bash ../scripts/gpu_session.sh trace-one $m \
                  | sed "s/^#### /#### base: /") | tee -a "$OUT/trace_vs_base.md" || true
                TG_CACHE=/tmp/tgc_this timeout 120 bash "$0" trace-one $m | sed "s/^#### /#### this checkout: /" \
                  | tee -a "$OUT/trace_vs_base.md" || true; done ;;
  # one model's decode kernels in the graph with preset `fused` (or RULES); TG_CACHE: a compile cache of its own
  trace-one)  TINYGPT2_CACHE=${TG_CACHE:-$TINYGPT2_CACHE} python3 scripts/trace_decode.py $2 float16 ${RULES:-fused} 20 \
                --out="${OUT}/trace" 2>/dev/null ;;
  bench-gpt2) tg bench --target cuda --models random:gpt2 --dtypes float16,float32 --profile \
                --out "$OUT/bench-gpt2" ;;
  bench-xl)   tg bench --target cuda --models random:gpt2-xl --dtypes float16 --profile \
                --repeats 3 --out "$OUT/bench-xl" ;;
  *)          tg "$@" ;;
esac
