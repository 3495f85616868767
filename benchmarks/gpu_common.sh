# Sourced by the benchmarks/gpu_*.sh device scripts: environment, $O (the output folder: $OUT
# on the device machine), a `python` for the image that has only python3, and
#   step SECONDS CMD...   run CMD under a timeout (SIGABRT: faulthandler dumps a hang's stacks),
#                         appending its output to $O/log.txt and echoing the tail.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
step() {
    local t=$1; shift
    echo "== $*" | tee -a "$O/log.txt"
    timeout --signal=SIGABRT "$t" "$@" 2>&1 | tee -a "$O/log.txt" | grep -v -e "^\s*$" -e Warn | tail -45
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$O/log.txt"
