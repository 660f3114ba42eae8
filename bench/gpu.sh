#!/usr/bin/env bash
# One command for a GPU session: the cuda backend's build, the test suite on the GPU, one untimed pass over the benchmarks
# (GPU shapes), then the full frame-count profile (bf16, L=32, H=12, d=64, B·T = 2048, T = 4 … 1024),
# written to bench/results/<date>-<device>/profile.{json,md,png}.
#
#   bench/gpu.sh                   # everything
#   bench/gpu.sh tests             # tests + benchmark smoke run only
#   bench/gpu.sh profile [ARGS…]   # the profile only; ARGS go to `stquery profile`
#                                  # (e.g. --cases temporal,temporal-mix to split a long run)
#   SUFFIX=-b bench/gpu.sh profile --cases topk,st_pool   # a second part, without overwriting the first
#   python -m stquery.cli profile --from-json A/profile.json B/profile.json --out M   # merge parts
#
# The full profile takes roughly 10 minutes on an H100 (FlexAttention compiles included); where one
# command may run at most 10 minutes, run it in two parts as above and merge.
# PYTHON picks the interpreter (default: python). Exit status: non-zero if any stage failed; the
# profile still runs after failing tests, so a session always leaves numbers behind.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
stage=${1:-all}
[ $# -gt 0 ] && shift

"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device visible to torch')" || exit 2
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

status=0
echo "== building the cuda backend (nvcc, once per source hash; its rows in the profile are stquery-cuda)"
"$PY" -c "from stquery.backends import cuda_backend; cuda_backend.module()" || status=1
if [ "$stage" = all ] || [ "$stage" = tests ]; then
    echo "== tests (GPU)"
    "$PY" -m pytest tests -q -ra || status=1
    echo "== benchmarks, one untimed run each (GPU shapes)"
    "$PY" -m pytest bench --benchmark-disable -q -ra || status=1
fi
if [ "$stage" = all ] || [ "$stage" = profile ]; then
    device=$("$PY" -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())")
    mkdir -p bench/results
    out="bench/results/$(date +%Y-%m-%d)-${device}${SUFFIX:-}"
    echo "== profile -> ${out}/profile.{json,md,png}"
    "$PY" -m stquery.cli profile --out "$out" "$@" || status=1
fi
exit $status
