#!/usr/bin/env bash
# The container's entrypoint: on the tensorrt backend, build the TensorRT engines for this GPU into the
# cache volume (or find them there from an earlier start), then become `xraysr serve`.
#
# Configure through XRAYSR_* environment variables (docker run -e ...): they reach both build-engines and
# serve. Arguments after the image name are passed to `xraysr serve` only.
set -euo pipefail

backend="${XRAYSR_BACKEND:-onnxruntime}"

if [[ "${backend}" == "tensorrt" ]]; then
    engines_dir="${XRAYSR_ENGINES_DIR:-/opt/xraysr/engines}"
    model="${XRAYSR_MODEL:-cxr-default}"
    precision="${XRAYSR_PRECISION:-int8}"
    # The same folder the TensorRT runtime reads (XRAYSR_TRT_CACHE_DIR), so serve finds what was built here.
    cache_dir="${XRAYSR_TRT_CACHE_DIR:-/var/lib/xraysr/engines-cache}"
    if ! xraysr build-engines --help >/dev/null 2>&1; then
        echo "xraysr-entrypoint: error: this xraysr has no working 'build-engines' command;" \
            "cannot prepare TensorRT engines (run with XRAYSR_BACKEND=onnxruntime to serve on the CPU)" >&2
        exit 1
    fi
    if [[ ! -w "${cache_dir}" ]]; then
        echo "xraysr-entrypoint: error: the engine cache ${cache_dir} is not writable by uid $(id -u);" \
            "mount a volume there (-v xraysr-engines:${cache_dir})" >&2
        exit 1
    fi
    echo "xraysr-entrypoint: TensorRT engines for ${model} (${precision}) in ${cache_dir}:" \
        "built on the first start (minutes), loaded afterwards" >&2
    xraysr build-engines --engines-dir "${engines_dir}" --model "${model}" --precision "${precision}" \
        --cache-dir "${cache_dir}"
fi

exec xraysr serve "$@"
