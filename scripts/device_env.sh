#!/usr/bin/env bash
# Source on the lent GPU machine (after ../shared/device's install.sh): makes this checkout importable
# as the installed package would be (tinygpt2, tinygpt2.kernels, tinygpt2.runtime) without pip,
# which reaches no registry there.
. /root/device.env
pp=/root/tinygpt2-pp
rm -rf "$pp" && mkdir -p "$pp/tinygpt2"
cp -rs "$PWD/tinygpt2/." "$pp/tinygpt2/"
ln -sfn "$PWD/kernels" "$pp/tinygpt2/kernels"
ln -sfn "$PWD/runtime" "$pp/tinygpt2/runtime"
export PYTHONPATH="$pp:$PYTHONPATH"
export TINYGPT2_CACHE=/root/tinygpt2-cache
tinygpt2() { python3 -m tinygpt2 "$@"; }
