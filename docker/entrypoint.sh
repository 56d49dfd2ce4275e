#!/usr/bin/env bash
# The container's entrypoint: on the tensorrt backend, build the TensorRT engines for this GPU into the
# cache volume (or find them there from an earlier start), then become `xraysr serve`.
#
# Configure through XRAYSR_* environment variables (docker run -e ...): they reach both build-engines and
# serve. Arguments after the image name are passed to `xraysr serve` only. Without XRAYSR_ENGINES_DIR both
# use the model the installed package carries; mount another engines/ folder and set it to serve that.
#
# Exit status 78 (EX_CONFIG, sysexits.h) means this container cannot work as it was started, and starting
# it again will not help; jetson/xraysr.service does not restart on it (RestartPreventExitStatus), nor on
# xraysr's own 2 (a setting, file or model it refuses).
set -euo pipefail

readonly EX_CONFIG=78
backend="${XRAYSR_BACKEND:-onnxruntime}"

# Docker before 20.10.10 answers glibc's clone3 with EPERM instead of ENOSYS in its default seccomp profile
# (moby/moby#42680), and glibc >= 2.34 (this image's) starts every thread with clone3: Python then dies with
# "can't start new thread" somewhere inside the server. Old docker.io packages (JetPack 4's) are that old.
if ! thread_error="$(python3 -c 'import threading; t = threading.Thread(target=int); t.start(); t.join()' 2>&1)" &&
    [[ "${thread_error}" == *"can't start new thread"* ]]; then
    echo "xraysr-entrypoint: error: this container cannot start a thread: Docker older than 20.10.10 blocks" \
        "glibc's clone3 (moby/moby#42680); upgrade Docker on the host (docker version: Server 20.10.10 or later)" >&2
    exit "${EX_CONFIG}"
fi

if [[ "${backend}" == "tensorrt" ]]; then
    model="${XRAYSR_MODEL:-cxr-default}"
    precision="${XRAYSR_PRECISION:-int8}"
    # The same folder the TensorRT runtime reads (XRAYSR_TRT_CACHE_DIR), so serve finds what was built here.
    cache_dir="${XRAYSR_TRT_CACHE_DIR:-/var/lib/xraysr/engines-cache}"
    build=(--model "${model}" --precision "${precision}" --cache-dir "${cache_dir}")
    if [[ -n "${XRAYSR_ENGINES_DIR:-}" ]]; then
        build=(--engines-dir "${XRAYSR_ENGINES_DIR}" "${build[@]}")
    fi
    # serve builds its engines for max(XRAYSR_MAX_BATCH, 8) samples (service/engine.py, load_pipeline; 8 is
    # MAX_SAMPLES, build-engines' default): a larger max batch is passed on so the cache key is the same one.
    if [[ "${XRAYSR_MAX_BATCH:-}" =~ ^[0-9]+$ ]] && ((10#${XRAYSR_MAX_BATCH} > 8)); then
        build+=(--max-batch "$((10#${XRAYSR_MAX_BATCH}))")
    fi
    if ! xraysr build-engines --help >/dev/null 2>&1; then
        echo "xraysr-entrypoint: error: this xraysr has no working 'build-engines' command;" \
            "cannot prepare TensorRT engines (run with XRAYSR_BACKEND=onnxruntime to serve on the CPU)" >&2
        exit "${EX_CONFIG}"
    fi
    if [[ ! -w "${cache_dir}" ]]; then
        echo "xraysr-entrypoint: error: the engine cache ${cache_dir} is not writable by uid $(id -u);" \
            "mount a volume there (-v xraysr-engines:${cache_dir})" >&2
        exit "${EX_CONFIG}"
    fi
    echo "xraysr-entrypoint: TensorRT engines for ${model} (${precision}) in ${cache_dir}:" \
        "built on the first start (minutes), loaded afterwards" >&2
    xraysr build-engines "${build[@]}"
fi

exec xraysr serve "$@"
