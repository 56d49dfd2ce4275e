#!/usr/bin/env bash
# The container's entrypoint: check what restarting cannot fix, then become `xraysr serve`. On the tensorrt
# backend, serve builds the TensorRT engines for this GPU into the cache volume on the first start (minutes)
# and loads them from there afterwards; it listens meanwhile, so /readyz answers 503 "loading" during the
# build instead of the port refusing connections.
#
# Configure through XRAYSR_* environment variables (docker run -e ...); arguments after the image name are
# passed to `xraysr serve`. Without XRAYSR_ENGINES_DIR serve uses the model the installed package carries;
# mount another engines/ folder and set it to serve that.
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
    # The folder the TensorRT runtime builds into and loads from (XRAYSR_TRT_CACHE_DIR, set by the image).
    cache_dir="${XRAYSR_TRT_CACHE_DIR:-/var/lib/xraysr/engines-cache}"
    if [[ ! -w "${cache_dir}" ]]; then
        echo "xraysr-entrypoint: error: the engine cache ${cache_dir} is not writable by uid $(id -u);" \
            "mount a volume there (-v xraysr-engines:${cache_dir})" >&2
        exit "${EX_CONFIG}"
    fi
    echo "xraysr-entrypoint: TensorRT engines for ${XRAYSR_MODEL:-cxr-default} in ${cache_dir}: built by serve" \
        "on the first start (minutes; /readyz answers 503 until they are ready), loaded afterwards" >&2
fi

exec xraysr serve "$@"
