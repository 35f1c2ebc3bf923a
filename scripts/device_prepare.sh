#!/usr/bin/env bash
# Here, before using the lent GPU machine: ../shared/device/prepare, re-packed for this project.
#
#   bash scripts/device_prepare.sh
#
# then three device calls back to back (the machine goes back after 30 s idle):
#   1. bash .device/c1/stage.sh                          carry [".device/c1"]
#   2. bash .device/c2/stage.sh                          carry [".device/c2"]
#   3. bash .device/c3/install.sh && bash scripts/gpu_session.sh <mode>    carry [".device/c3"]
#
# Why not the shared two halves: a call carries the work tree too (27 MB with the Shakespeare model),
# and tree + half a wheel (53 MB) is over the 64 MiB a call may carry; so the wheel travels in three
# parts. And the shared script fetches the newest apache-tvm-ffi, whose 0.1.15 segfaults in every
# tensorize (tvm_shim.py): this pins pyproject's 0.1.14.post1. wgpu is left out (WebGPU is not run
# there by these scripts), which keeps the last part under the limit.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
bash ../shared/device/prepare >/dev/null
ffi=$(grep -o 'apache-tvm-ffi==[^"]*' pyproject.toml)
d=.device
cat $d/a/tvm.part0 $d/b/tvm.part1 >$d/tvm.whl
rm -rf $d/c1 $d/c2 $d/c3 && mkdir -p $d/c1 $d/c2 $d/c3
split -b 34000000 -d -a 1 $d/tvm.whl $d/tvm.split.
mv $d/tvm.split.0 $d/c1/p && mv $d/tvm.split.1 $d/c2/p && mv $d/tvm.split.2 $d/c3/tvm.part1
# call 1 starts the staged wheel afresh (">"), call 2 appends to it (">>")
for c in "c1 >" "c2 >>"; do
  set -- $c
  printf '#!/usr/bin/env bash\n# device call: this part of the TVM wheel where install.sh looks for it\nset -eu\nmkdir -p /root/stage\ncat "$(dirname "$0")/p" %s/root/stage/tvm.part0\n' "$2" >$d/$1/stage.sh
done
cp $d/b/tvm.name $d/b/*.deb $d/b/ml_dtypes-*.whl $d/c3/
pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --no-deps \
  -d $d/c3 "$ffi" 2>&1 | grep -v -i warning || true
# the shared install.sh, minus its wgpu check; a fresh machine starts with no /root/stage
sed -e 's/python3 -c "import tvm, wgpu.*$/python3 -c "import tvm, tvm_ffi; print(tvm.__version__, tvm_ffi.__version__, tvm.cuda(0).exist)"/' \
  $d/b/install.sh >$d/c3/install.sh
rm -rf $d/a $d/b $d/tvm.whl
du -sh $d/c1 $d/c2 $d/c3
