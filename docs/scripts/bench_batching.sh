#!/usr/bin/env bash
# docs/BENCHMARKS.md, dynamic batching: 8 concurrent clients against the default model, batching on (max_batch 8) and off (max_batch 1), back to back.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source .venv/bin/activate
IMAGE=../shared/data/cxr/LR_64/$(ls ../shared/data/cxr/LR_64 | head -1)
for samples in 1 4; do
  for batch in 1 8; do
    XRAYSR_MAX_BATCH=$batch XRAYSR_MAX_QUEUED_REQUESTS=16 xraysr serve --port 8799 > "${TMPDIR:-/tmp}/xraysr_serve_$batch.log" 2>&1 &
    pid=$!
    until curl -sf localhost:8799/readyz >/dev/null; do sleep 0.2; done
    xraysr loadtest --url http://127.0.0.1:8799 --image "$IMAGE" --clients 1 --requests 2 --samples $samples > /dev/null
    echo "== samples=$samples max_batch=$batch"
    xraysr loadtest --url http://127.0.0.1:8799 --image "$IMAGE" --clients 8 --requests $((64 / samples)) --samples $samples --steps 25
    kill -TERM $pid; wait $pid || true
  done
done
