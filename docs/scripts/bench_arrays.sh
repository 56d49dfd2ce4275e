#!/usr/bin/env bash
# docs/BENCHMARKS.md, "Many images": N real 64×64 films as one .npz, upscaled (the default answer) in one process,
# in 2 worker processes, on a local Ray instance with 2 actors, and through a per-request server with 1 and 4
# clients, back to back. Each batch run is also timed on 16 images, the fixed cost (start, model load, Ray).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source "${VENV:-.venv}/bin/activate"
xraysr() { python -m xraysr.service.cli "$@"; }  # this checkout's xraysr, whichever one the venv installed
N=${N:-512}
WORK=${TMPDIR:-/tmp}/xraysr_bench_arrays
rm -rf "$WORK" && mkdir -p "$WORK"
uptime
lscpu | grep -E 'Model name|^CPU\(s\)'
python - "$WORK" "$N" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
files = sorted(Path("../shared/data/cxr/LR_64").glob("*.png"))
for count in (16, int(sys.argv[2])):
    films = np.stack([np.asarray(Image.open(files[i % len(files)]).convert("L")) for i in range(count)])
    np.savez_compressed(f"{sys.argv[1]}/films_{count}.npz", train_images=films, train_labels=np.zeros((count, 14), np.uint8))
Image.open(files[0]).convert("L").save(f"{sys.argv[1]}/film.png")
PY
# CPU seconds beside wall seconds: on a shared machine the wall time says how much of the CPU a run got, the
# CPU time what its images cost. Worker processes are waited for, so their CPU counts; Ray's actors (children of
# Ray's raylet) do not, so a Ray run has wall time only.
TIMEFORMAT="%R %U %S"
batch() {  # name, then the flags
  local name=$1; shift
  for count in 16 "$N"; do
    local times
    times=$( { time xraysr upscale "$WORK/films_$count.npz" -o "$WORK/${name}_$count.npz" "$@" \
      2>"$WORK/${name}_$count.log" >/dev/null; } 2>&1 )
    echo "$times" | awk -v n="$count" -v name="$name" '{printf "%s: %d images in %.1f s wall, %.2f images/s; " \
      "%.1f CPU s, %.0f CPU ms per image\n", name, n, $1, n / $1, $2 + $3, 1000 * ($2 + $3) / n}'
  done
}
cpu_seconds() {  # utime + stime of a process, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
batch one_process
batch two_workers --workers 2
batch ray_two_actors --ray --workers 2
cmp "$WORK/one_process_$N.npz" "$WORK/two_workers_$N.npz" && cmp "$WORK/one_process_$N.npz" "$WORK/ray_two_actors_$N.npz" \
  && echo "the three outputs are byte-identical"
python -m xraysr.service.cli serve --port 8799 > "$WORK/serve.log" 2>&1 &
pid=$!  # the server's own process (not a shell function's subshell), for its CPU time
until curl -sf localhost:8799/readyz >/dev/null; do sleep 0.2; done
xraysr loadtest --url http://127.0.0.1:8799 --image "$WORK/film.png" --clients 1 --requests 4 > /dev/null  # warm-up
for clients in 1 4; do
  echo "== server, $clients client(s)"
  before=$(cpu_seconds $pid)
  xraysr loadtest --url http://127.0.0.1:8799 --image "$WORK/film.png" --clients "$clients" --requests "$N"
  awk -v a="$before" -v b="$(cpu_seconds $pid)" -v n="$N" \
    'BEGIN {printf "server process: %.1f CPU s, %.0f CPU ms per image\n", b - a, 1000 * (b - a) / n}'
done
kill -TERM $pid; wait $pid || true
# The deflated output's serial tail: the one-process run's 512 answers compressed again, timed.
python - "$WORK/one_process_$N.npz" <<'PY'
import io, sys, time
import numpy as np
answers = np.load(sys.argv[1])["train_images"]
buffer, started = io.BytesIO(), time.perf_counter()
np.savez_compressed(buffer, train_images=answers)
seconds = time.perf_counter() - started
print(f"zlib: {answers.nbytes / 2**20:.1f} MiB -> {buffer.tell() / 2**20:.1f} MiB in {seconds:.2f} s, "
      f"{answers.nbytes / 2**20 / seconds:.1f} MiB/s")
PY
