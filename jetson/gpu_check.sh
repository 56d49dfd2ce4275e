#!/usr/bin/env bash
# The first check on a new Jetson, about 15 minutes on an Orin Nano: does the TensorRT path work end to end?
#
#   jetson/gpu_check.sh [--image PNG] [--seed 7] [--steps 25] [--precisions "fp16 int8"] [--expect-tensorrt 10.3]
#                       [--min-psnr-fp16 35] [--min-psnr-int8 30] [--engines-dir DIR --model NAME] [--keep]
#                       [--ready-timeout-s 900] [--versions-only]
#   docker run --rm --runtime nvidia --entrypoint xraysr-gpu-check xraysr:jetson         (the image carries it)
#
# What it checks, in order (the first-board checklist of the TensorRT review):
#   1. versions: the L4T release (/etc/nv_tegra_release) and its JetPack; TensorRT, which must be the
#      expected major.minor (--expect-tensorrt, else XRAYSR_EXPECTED_TENSORRT, which the image sets, else
#      what the L4T release ships: r36.4 10.3, r36.2/r36.3 8.6, r35 8.5, r32.7 8.2); CUDA (the driver, and
#      the GPU opened through pycuda as this user: the GPU nodes are root:video); numpy (below 2 under
#      JetPack's TensorRT, whose bindings were built against NumPy 1); xraysr.
#   2. `xraysr build-engines` at each precision, into a cache folder of its own.
#   3. per precision, `xraysr serve --backend tensorrt` in a NEW process on a free loopback port: it loads
#      the plans step 2 built, so a plugin or deserialization problem shows here and not at the first real
#      start; one upscale through curl (fixed seed, 1 sample), compared with `xraysr upscale --backend
#      onnxruntime` of the same seed: the PSNR between the two must reach --min-psnr-<precision> (35 dB for
#      fp16 against the fp32 model; 30 dB for int8 against ONNX Runtime's run of the same Q/DQ model, as
#      TensorRT's INT8 kernels round differently). Then SIGTERM: exit status 0, and no error, traceback or
#      segfault in its log.
#   4. tegrastats, once before any load and once under load (SKIP where it is not on PATH: in a container,
#      mount it: -v /usr/bin/tegrastats:/usr/bin/tegrastats:ro).
# --versions-only stops after 1 (seconds: what to run after changing the base image).
# One table (check | result | detail) at the end, on stdout; the exit status is 1 if any row is FAIL, 2 on a
# wrong argument. Logs stay in the work folder it names; the engines are deleted unless --keep.
#
# Without Docker, put the virtual environment first on PATH (PATH=.venv/bin:$PATH jetson/gpu_check.sh):
# `xraysr` and `python3` are taken from PATH. NV_TEGRA_RELEASE overrides /etc/nv_tegra_release (the tests).
set -euo pipefail

image=""
seed=7
steps=25
precisions="fp16 int8"
expect_tensorrt="${XRAYSR_EXPECTED_TENSORRT:-}"
declare -A min_psnr=([fp16]=35 [fp32]=35 [int8]=30)
model_flags=()
keep=0
versions_only=0
ready_timeout_s=900

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
say() { echo "gpu_check.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
    [[ "$1" == --keep || "$1" == --versions-only || "$1" == -h || "$1" == --help || $# -ge 2 ]] ||
        die "$1 needs a value"
    case "$1" in
        --image) image="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --precisions) precisions="$2"; shift 2 ;;
        --expect-tensorrt) expect_tensorrt="$2"; shift 2 ;;
        --min-psnr-fp16) min_psnr[fp16]="$2"; shift 2 ;;
        --min-psnr-int8) min_psnr[int8]="$2"; shift 2 ;;
        --engines-dir | --model) model_flags+=("$1" "$2"); shift 2 ;;
        --ready-timeout-s) ready_timeout_s="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --versions-only) versions_only=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument $1" ;;
    esac
done
[[ "${seed}" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got ${seed}"
[[ "${steps}" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got ${steps}"
[[ "${ready_timeout_s}" =~ ^[0-9]+$ ]] || die "--ready-timeout-s must be a whole number of seconds"
for precision in ${precisions}; do
    case "${precision}" in fp32 | fp16 | int8) ;; *) die "--precisions takes fp32, fp16 and int8, got ${precision}" ;; esac
    [[ "${min_psnr[${precision}]}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--min-psnr-${precision} must be a number of dB"
done
[[ -z "${image}" || -r "${image}" ]] || die "--image ${image} is not a readable file"
command -v xraysr >/dev/null || die "xraysr is not on PATH (without Docker: PATH=.venv/bin:\$PATH $0)"
command -v curl >/dev/null || die "curl is not on PATH"

# Everything here runs on this machine's loopback, with its own flags: the image's XRAYSR_HOST=0.0.0.0 would
# ask for an API key, and its XRAYSR_PRECISION, XRAYSR_TRT_CACHE_DIR, ... are the served configuration's.
export XRAYSR_HOST=127.0.0.1
unset XRAYSR_PORT XRAYSR_BACKEND XRAYSR_PRECISION XRAYSR_TRT_CACHE_DIR XRAYSR_MAX_BATCH

work="$(mktemp -d "${TMPDIR:-/tmp}/xraysr-gpu-check.XXXXXX")"
cache="${work}/engines-cache"
server_pid=""
load_flag="${work}/loading"

cleanup() {
    rm -f "${load_flag}"
    if [[ -n "${server_pid}" ]] && kill -0 "${server_pid}" 2>/dev/null; then
        kill -KILL "${server_pid}" 2>/dev/null || true
    fi
    if ((!keep)); then
        rm -rf "${cache}"
    fi
}
trap cleanup EXIT

# --- the table -------------------------------------------------------------------------------------------------
rows=()
failures=0
row() { # check result detail
    rows+=("$1"$'\t'"$2"$'\t'"$3")
    [[ "$2" != FAIL ]] || failures=$((failures + 1))
    say "$1: $2${3:+ ($3)}"
}

print_table() {
    local width=5 check result detail dashes
    for entry in "${rows[@]}"; do
        check="${entry%%$'\t'*}"
        ((${#check} <= width)) || width=${#check}
    done
    printf -v dashes '%*s' $((width + 2)) ''
    printf "| %-${width}s | %-6s | %s |\n" check result detail
    printf "|%s|--------|--------|\n" "${dashes// /-}"
    for entry in "${rows[@]}"; do
        IFS=$'\t' read -r check result detail <<<"${entry}"
        printf "| %-${width}s | %-6s | %s |\n" "${check}" "${result}" "${detail//|//}"
    done
}

last_line() { # the last non-blank line of a file, for a detail column
    grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c 1-200 || true
}

# --- 1. versions -----------------------------------------------------------------------------------------------
release_file="${NV_TEGRA_RELEASE:-/etc/nv_tegra_release}"
l4t=""
if [[ -r "${release_file}" ]]; then
    # "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ..."
    l4t="$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\),.*/\1.\2/p' "${release_file}" | head -n 1)"
fi
jetpack="$(dpkg-query --show --showformat='${Version}' nvidia-jetpack 2>/dev/null || true)"
if [[ -z "${jetpack}" ]]; then
    case "${l4t}" in
        36.4.[3-9]*) jetpack="6.2" ;;
        36.4*) jetpack="6.1" ;;
        36.3*) jetpack="6.0" ;;
        36.2*) jetpack="6.0 DP" ;;
        35.*) jetpack="5.1" ;;
        32.7*) jetpack="4.6" ;;
    esac
fi
# Inside a container the file is the image's unless the NVIDIA runtime mounts the host's: the detail names it.
if [[ -n "${l4t}" ]]; then
    row l4t PASS "r${l4t}, JetPack ${jetpack:-unknown} (${release_file})"
else
    row l4t WARN "no L4T release in ${release_file}: not a Jetson, or a container without it"
fi
if [[ -z "${expect_tensorrt}" ]]; then
    case "${l4t}" in
        36.4*) expect_tensorrt=10.3 ;;
        36.2* | 36.3*) expect_tensorrt=8.6 ;;
        35.*) expect_tensorrt=8.5 ;;
        32.7*) expect_tensorrt=8.2 ;;
    esac
fi

# key<TAB>value per line; a value starting with "!" is the error that stopped it.
versions="$(
    python3 - <<'PYTHON' 2>&1 || true
def show(key, value):
    print(f"{key}\t{value}")


def failed(key, error):
    show(key, f"!{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


try:
    import numpy

    show("numpy", numpy.__version__)
except Exception as error:
    failed("numpy", error)
try:
    import tensorrt

    show("tensorrt", tensorrt.__version__)
    try:
        # Through the bindings' NumPy boundary and back: bindings built against NumPy 1 (JetPack 6's) break
        # here under NumPy 2, where a version rule could only guess.
        import numpy

        given = numpy.arange(4, dtype=numpy.float32)
        weights = tensorrt.Weights(given)
        if weights.size != 4 or not numpy.array_equal(weights.numpy(), given):
            raise ValueError("tensorrt.Weights did not hold the array it was given")
        show("tensorrt-numpy", "ok")
    except Exception as error:
        failed("tensorrt-numpy", error)
except Exception as error:
    failed("tensorrt", error)
try:
    import pycuda
    import pycuda.driver as cuda

    show("pycuda", pycuda.VERSION_TEXT)
    try:
        cuda.init()
        driver = cuda.get_driver_version()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        built_for = ".".join(str(part) for part in cuda.get_version()[:2])
        show(
            "cuda",
            f"driver {driver // 1000}.{driver % 1000 // 10} (pycuda built for {built_for}), "
            f"{device.name()}, compute capability {major}.{minor}",
        )
    except Exception as error:
        failed("cuda", error)
except Exception as error:
    failed("pycuda", error)
PYTHON
)"
version_of() { awk -F '\t' -v key="$1" '$1 == key { print $2; exit }' <<<"${versions}"; }

tensorrt_version="$(version_of tensorrt)"
if [[ -z "${tensorrt_version}" || "${tensorrt_version}" == !* ]]; then
    row tensorrt FAIL "import tensorrt: ${tensorrt_version:+${tensorrt_version#!}}${tensorrt_version:-no answer}"
elif [[ -z "${expect_tensorrt}" ]]; then
    row tensorrt WARN "${tensorrt_version}; which one this release ships is unknown here (--expect-tensorrt X.Y)"
elif [[ "${tensorrt_version}" == "${expect_tensorrt}" || "${tensorrt_version}" == "${expect_tensorrt}".* ]]; then
    row tensorrt PASS "${tensorrt_version} (expected ${expect_tensorrt})"
else
    row tensorrt FAIL "${tensorrt_version}, expected ${expect_tensorrt}: a base image or JetPack other than the one intended"
fi

pycuda_version="$(version_of pycuda)"
if [[ -z "${pycuda_version}" || "${pycuda_version}" == !* ]]; then
    row pycuda FAIL "import pycuda.driver: ${pycuda_version#!}"
else
    row pycuda PASS "${pycuda_version}"
    cuda_detail="$(version_of cuda)"
    if [[ "${cuda_detail}" == !* ]]; then
        row cuda FAIL "${cuda_detail#!} (as uid $(id -u), groups $(id -Gn | tr ' ' ,); docker: --runtime nvidia)"
    else
        row cuda PASS "${cuda_detail}"
    fi
fi

numpy_version="$(version_of numpy)"
boundary="$(version_of tensorrt-numpy)"
if [[ -z "${numpy_version}" || "${numpy_version}" == !* ]]; then
    row numpy FAIL "import numpy: ${numpy_version#!}"
elif [[ "${boundary}" == !* ]]; then
    row numpy FAIL "${numpy_version}: tensorrt.Weights refused a numpy array (${boundary#!}); JetPack's TensorRT bindings were built against NumPy 1: pip install 'numpy<2'"
elif [[ "${boundary}" == ok ]]; then
    row numpy PASS "${numpy_version}, and TensorRT's bindings take its arrays"
else
    row numpy PASS "${numpy_version}"
fi

if xraysr_version="$(xraysr --version 2>&1)"; then
    row xraysr PASS "${xraysr_version#xraysr }"
else
    row xraysr FAIL "xraysr --version: $(tail -n 1 <<<"${xraysr_version}")"
fi

if ((versions_only)); then
    print_table
    exit $((failures > 0))
fi

# --- the test image --------------------------------------------------------------------------------------------
if [[ -z "${image}" ]]; then
    # A smooth synthetic 64x64: a vertical ramp with a soft bright disc, no noise, so it is the same everywhere.
    image="${work}/input-64.png"
    python3 - "${image}" <<'PYTHON'
import sys

import numpy as np
from PIL import Image

y, x = np.mgrid[0:64, 0:64].astype(np.float64)
pixels = 40 + 1.5 * y + 110 * np.exp(-((x - 30) ** 2 + (y - 26) ** 2) / 300.0)
Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").save(sys.argv[1])
PYTHON
fi

# --- 4a. tegrastats at rest ------------------------------------------------------------------------------------
tegrastats_bin="$(command -v tegrastats || true)"
tegrastats_sample() { # name: two seconds of tegrastats into the work folder, its last line on stdout
    local file="${work}/tegrastats-$1.txt" pid
    "${tegrastats_bin}" --interval 500 >"${file}" 2>&1 &
    pid=$!
    sleep 2
    kill "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
    last_line "${file}"
}
tegrastats_summary() { # a tegrastats line → "GR3D_FREQ 61%@[1020] VDD_IN 7480mW/7480mW"
    grep -oE '(GR3D_FREQ [^ ]+|VDD_IN [^ ]+|POM_5V_IN [^ ]+|RAM [0-9]+/[0-9]+MB)' <<<"$1" | paste -sd ' ' - || true
}
tegrastats_row() { # check line
    if [[ -z "$2" ]]; then
        row "$1" FAIL "no line in 2 s from tegrastats --interval 500 (buffered output?); see ${work}"
    else
        row "$1" PASS "$(tegrastats_summary "$2")"
    fi
}
idle_line=""
if [[ -n "${tegrastats_bin}" ]]; then
    idle_line="$(tegrastats_sample idle)"
    tegrastats_row "tegrastats idle" "${idle_line}"
else
    row "tegrastats idle" SKIP "tegrastats is not on PATH (in a container: -v /usr/bin/tegrastats:/usr/bin/tegrastats:ro)"
fi

# --- 2. engines ------------------------------------------------------------------------------------------------
built=()
for precision in ${precisions}; do
    log="${work}/build-${precision}.log"
    say "building ${precision} engines into ${cache} (minutes on an Orin Nano; log: ${log})"
    started=${SECONDS}
    if xraysr build-engines ${model_flags[@]+"${model_flags[@]}"} --precision "${precision}" \
        --trt-cache-dir "${cache}" >"${log}" 2>&1; then
        row "build ${precision}" PASS "$((SECONDS - started)) s; $(last_line "${log}")"
        built+=("${precision}")
    else
        row "build ${precision}" FAIL "exit $?: $(last_line "${log}")"
    fi
done

# --- 3. serve, compare, stop -----------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
auth=()
if [[ -n "${XRAYSR_API_KEY:-}" ]]; then
    auth=(-H "Authorization: Bearer ${XRAYSR_API_KEY}")
fi
psnr() { # a.png b.png minimum → "41.20 dB" and status 0 when it reaches the minimum, 1 below it, 2 unreadable
    python3 - "$@" <<'PYTHON'
import sys

import numpy as np
from PIL import Image

first, second = (np.asarray(Image.open(path).convert("L"), dtype=np.float64) for path in sys.argv[1:3])
if first.shape != second.shape:
    print(f"the images differ in size: {first.shape} and {second.shape}")
    sys.exit(2)
mse = float(np.mean((first - second) ** 2))
value = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
print(f"{value:.2f} dB" if mse else "identical")
sys.exit(0 if value >= float(sys.argv[3]) else 1)
PYTHON
}

loaded=0
for precision in ${precisions}; do
    if [[ " ${built[*]-} " != *" ${precision} "* ]]; then
        row "serve ${precision}" SKIP "its engines did not build"
        continue
    fi
    port="$(free_port)"
    url="http://127.0.0.1:${port}"
    log="${work}/serve-${precision}.log"
    say "serving ${precision} from the cache in a new process on ${url} (log: ${log})"
    xraysr serve ${model_flags[@]+"${model_flags[@]}"} --host 127.0.0.1 --port "${port}" --backend tensorrt \
        --precision "${precision}" --trt-cache-dir "${cache}" >"${log}" 2>&1 &
    server_pid=$!
    started=${SECONDS}
    ready=0
    while ((SECONDS - started < ready_timeout_s)) && kill -0 "${server_pid}" 2>/dev/null; do
        if curl --silent --fail --max-time 2 --output /dev/null "${url}/readyz"; then
            ready=1
            break
        fi
        sleep 0.5
    done
    if ((!ready)); then
        if kill -0 "${server_pid}" 2>/dev/null; then
            kill -KILL "${server_pid}" 2>/dev/null || true
            detail="not ready after ${ready_timeout_s} s"
        else
            status=0
            wait "${server_pid}" || status=$?
            detail="exited ${status} before it was ready: $(last_line "${log}")"
        fi
        server_pid=""
        row "serve ${precision}" FAIL "${detail}"
        continue
    fi
    row "serve ${precision}" PASS "ready in $((SECONDS - started)) s from the cached plans"

    served="${work}/tensorrt-${precision}.png"
    code="$(curl --silent --show-error --max-time 300 --output "${served}" --write-out '%{http_code}' \
        ${auth[@]+"${auth[@]}"} -H 'Content-Type: image/png' --data-binary "@${image}" \
        "${url}/upscale?seed=${seed}&steps=${steps}&samples=1" 2>&1 || true)"
    reference_precision="${precision/fp16/fp32}"
    reference="${work}/onnxruntime-${reference_precision}.png"
    check="match ${precision}"
    if [[ "${code}" != 200 ]]; then
        row "${check}" FAIL "POST /upscale answered ${code}: $(head -c 200 "${served}" 2>/dev/null || true)"
    elif [[ ! -s "${reference}" ]] &&
        ! xraysr upscale ${model_flags[@]+"${model_flags[@]}"} "${image}" --backend onnxruntime \
            --precision "${reference_precision}" --seed "${seed}" --steps "${steps}" --samples 1 \
            --output "${reference}" >"${work}/onnxruntime-${reference_precision}.log" 2>&1; then
        row "${check}" FAIL "the ONNX Runtime reference failed: $(last_line "${work}/onnxruntime-${reference_precision}.log")"
    else
        status=0
        comparison="$(psnr "${served}" "${reference}" "${min_psnr[${precision}]}" 2>&1)" || status=$?
        detail="${comparison} against onnxruntime ${reference_precision} (seed ${seed}, ${steps} steps)"
        if ((status == 0)); then
            row "${check}" PASS "${detail}, at least ${min_psnr[${precision}]} dB"
        else
            row "${check}" FAIL "${detail}, below ${min_psnr[${precision}]} dB"
        fi
    fi

    # --- 4b. tegrastats under load: upscales back to back on this server while it samples
    if ((!loaded)); then
        loaded=1
        if [[ -n "${tegrastats_bin}" ]]; then
            touch "${load_flag}"
            (
                while [[ -e "${load_flag}" ]]; do
                    curl --silent --fail --max-time 120 --output /dev/null ${auth[@]+"${auth[@]}"} \
                        -H 'Content-Type: image/png' --data-binary "@${image}" \
                        "${url}/upscale?seed=${seed}&steps=${steps}&samples=1" || break
                done
            ) &
            load_pid=$!
            sleep 1
            busy_line="$(tegrastats_sample load)"
            rm -f "${load_flag}"
            wait "${load_pid}" || true
            tegrastats_row "tegrastats load" "${busy_line}"
        else
            row "tegrastats load" SKIP "tegrastats is not on PATH"
        fi
    fi

    # SIGTERM, as docker stop and systemd send it: a clean drain exits 0; TensorRT or pycuda objects freed
    # without their CUDA context log errors (or segfault) here.
    kill -TERM "${server_pid}" 2>/dev/null || true
    stopped=${SECONDS}
    while kill -0 "${server_pid}" 2>/dev/null && ((SECONDS - stopped < 60)); do
        sleep 0.2
    done
    if kill -0 "${server_pid}" 2>/dev/null; then
        kill -KILL "${server_pid}" 2>/dev/null || true
    fi
    status=0
    wait "${server_pid}" || status=$?
    server_pid=""
    problem="$(grep -E -m 1 'Traceback|Segmentation fault|core dumped|\[TRT\] \[E\]|\bERROR\b|could not be cleaned up' \
        "${log}" | cut -c 1-200 || true)"
    if ((status != 0)); then
        row "stop ${precision}" FAIL "exit status ${status} after SIGTERM: $(last_line "${log}")"
    elif [[ -n "${problem}" ]]; then
        row "stop ${precision}" FAIL "exit 0, but its log has: ${problem}"
    else
        row "stop ${precision}" PASS "exit 0 $((SECONDS - stopped)) s after SIGTERM, nothing wrong in its log"
    fi
done

if ((!loaded)) && [[ -n "${tegrastats_bin}" ]]; then
    row "tegrastats load" SKIP "no server came up to put under load"
fi

# --- the summary ---------------------------------------------------------------------------------------------
print_table
if ((failures)); then
    say "${failures} check(s) failed; logs in ${work}"
    exit 1
fi
say "every check passed; logs in ${work}"
