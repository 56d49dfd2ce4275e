#!/usr/bin/env bash
# Build TensorRT engines from an engines/<model> folder with trtexec, on the Jetson that will run them.
#
#   jetson/build_engines.sh [--engines-dir engines] [--model cxr-default] [--precision int8|fp16|fp32]
#                           [--out DIR] [--workspace-mib 1024] [--max-batch 8] [--opt-batch 1]
#
# The service builds and caches its own engines (`xraysr build-engines`, run by the container's entrypoint);
# this script is the same build through NVIDIA's trtexec, without Python's TensorRT bindings: to check that
# every ONNX file parses and builds on this board, to read trtexec's latency report (in the .log beside each
# plan), and on JetPack 4, whose TensorRT bindings exist only for Python 3.6.
#
# Every component is built, whatever happened to the one before, and a table says which built (with
# trtexec's median GPU compute time) and which failed (with the log's last error); the exit status is 1 if
# any failed. The components are the service's (served_components, service/manifest.py): encoder, decoder and,
# where the model has one, the step graph unet_step in place of the unet. The shipped encoder's bicubic is two
# constant MatMuls, not a cubic Resize, so the original Nano's TensorRT 8.2 (JetPack 4.6) builds it too.
#
# Shapes: the dynamic batch axis runs from 1 to --max-batch, 8 by default, the server's: `xraysr serve`
# gathers up to max_batch (8) samples into one engine batch, and a samples=8 request is a batch of 8
# (MAX_SAMPLES, service/manifest.py). trtexec tunes for and times --opt-batch, 1 by default as the service's
# optimisation profile does.
#
# Precision: int8 builds the quantized model of manifest.int8.json (`xraysr quantize`) as the service does:
# the components the manifest marks int8 (Q/DQ files) with --int8 --fp16 (FP16 between the Q/DQ pairs), the
# others at FP32, the precision quantize kept them at. fp16 and fp32 build the ONNX of manifest.json. A GPU
# below compute capability 6.1 has no INT8 in TensorRT (the original Jetson Nano is 5.3), so int8 falls back
# to fp16 there, with a message. The layers the service pins to FP32 in an FP16 build (service/runtimes)
# are not pinned here: this is a build check and a latency estimate, not the served engine.
#
# Compute capability, in this order (nvidia-smi does not exist on a Jetson):
#   1. XRAYSR_COMPUTE_CAPABILITY, e.g. 8.7, if set;
#   2. the SoC named in /proc/device-tree/compatible (tegra234 Orin 8.7, tegra194 Xavier 7.2, tegra186 TX2
#      6.2, tegra210 Nano/TX1 5.3): present on every L4T release, no library needed;
#   3. /sys/devices/soc0/soc_id, the Tegra chip id (35, 25, 24, 33 for the same SoCs), for containers where
#      Docker masks the device tree;
#   4. nvidia-smi --query-gpu=compute_cap, for a discrete GPU.
# DEVICE_TREE_COMPATIBLE and SOC_ID_FILE override the two paths (the tests use them).
set -euo pipefail

engines_dir=engines
model=cxr-default
precision=int8
out=""
workspace_mib=1024
max_batch=8
opt_batch=1

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --engines-dir) engines_dir="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --precision) precision="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --workspace-mib) workspace_mib="$2"; shift 2 ;;
        --max-batch) max_batch="$2"; shift 2 ;;
        --opt-batch) opt_batch="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build_engines.sh: error: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

fail() { echo "build_engines.sh: error: $*" >&2; exit 1; }

case "${precision}" in int8 | fp16 | fp32) ;; *) fail "--precision must be int8, fp16 or fp32, got ${precision}" ;; esac
[[ "${max_batch}" =~ ^[1-9][0-9]*$ ]] || fail "--max-batch must be a positive integer, got ${max_batch}"
if [[ ! "${opt_batch}" =~ ^[1-9][0-9]*$ ]] || ((opt_batch > max_batch)); then
    fail "--opt-batch must be between 1 and --max-batch (${max_batch}), got ${opt_batch}"
fi
[[ "${workspace_mib}" =~ ^[1-9][0-9]*$ ]] || fail "--workspace-mib must be a positive integer, got ${workspace_mib}"
model_dir="${engines_dir}/${model}"
out="${out:-${model_dir}/trtexec}"

compute_capability() {
    if [[ -n "${XRAYSR_COMPUTE_CAPABILITY:-}" ]]; then
        echo "${XRAYSR_COMPUTE_CAPABILITY}"
        return
    fi
    local compatible="${DEVICE_TREE_COMPATIBLE:-/proc/device-tree/compatible}"
    if [[ -r "${compatible}" ]]; then
        case "$(tr '\0' '\n' <"${compatible}")" in
            *tegra234*) echo 8.7; return ;;
            *tegra194*) echo 7.2; return ;;
            *tegra186*) echo 6.2; return ;;
            *tegra210*) echo 5.3; return ;;
        esac
    fi
    local soc_id_file="${SOC_ID_FILE:-/sys/devices/soc0/soc_id}"
    if [[ -r "${soc_id_file}" ]]; then
        case "$(tr -d '[:space:]' <"${soc_id_file}")" in
            35) echo 8.7; return ;;
            25) echo 7.2; return ;;
            24) echo 6.2; return ;;
            33) echo 5.3; return ;;
        esac
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1
        return
    fi
    fail "cannot tell this GPU's compute capability; set XRAYSR_COMPUTE_CAPABILITY (8.7 on Orin)"
}

capability="$(compute_capability)"
[[ "${capability}" =~ ^[0-9]+\.[0-9]+$ ]] || fail "compute capability must look like 8.7, got ${capability}"
major="${capability%%.*}"
minor="${capability#*.}"
effective="${precision}"
if [[ "${effective}" == int8 ]] && ((major * 10 + minor < 61)); then
    echo "build_engines.sh: compute capability ${capability} has no INT8 in TensorRT: building fp16 instead" >&2
    effective=fp16
fi

manifest="${model_dir}/manifest.json"
if [[ "${effective}" == int8 ]]; then
    manifest="${model_dir}/manifest.int8.json"
    [[ -f "${manifest}" ]] || fail "${manifest} does not exist: quantize the model first (xraysr quantize)" \
        "or build --precision fp16"
fi
[[ -f "${manifest}" ]] || fail "${manifest} does not exist"

trtexec="$(command -v trtexec || true)"
if [[ -z "${trtexec}" && -x /usr/src/tensorrt/bin/trtexec ]]; then
    trtexec=/usr/src/tensorrt/bin/trtexec # where JetPack installs it, off PATH
fi
[[ -n "${trtexec}" ]] || fail "trtexec not found on PATH or in /usr/src/tensorrt/bin (JetPack's tensorrt package)"

# The help text is read whole before it is searched: `trtexec --help | grep -q` lets grep exit at the first
# match while trtexec is still writing its ~26 KB, trtexec dies of SIGPIPE, and pipefail turns the match false.
help_text="$("${trtexec}" --help 2>&1 || true)"
# TensorRT 8.4 replaced --workspace with --memPoolSize (both in MiB); JetPack 4 ships TensorRT 8.2.
if [[ "${help_text}" == *--memPoolSize* ]]; then
    workspace_flag="--memPoolSize=workspace:${workspace_mib}"
else
    workspace_flag="--workspace=${workspace_mib}"
fi
# "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] ...": a timing cache per TensorRT version and GPU, since
# another version's cache fails to load (or is silently ignored).
trt_version=""
if [[ "${help_text}" =~ \[TensorRT\ v([0-9]+)\] ]]; then
    trt_version="${BASH_REMATCH[1]}"
fi
timing_cache="${out}/timing${trt_version:+-trt${trt_version}}-sm${major}${minor}.cache"

# One line per component: name, ONNX file, the precision it is built at, then the min/opt/max shapes of
# every input with the manifest's dynamic "batch" axis set to 1, opt_batch and max_batch (trtexec's
# name:AxBxC,name:D syntax).
components="$(
    python3 - "${manifest}" "${effective}" "${opt_batch}" "${max_batch}" <<'PYTHON'
import json
import sys

manifest_path, effective, opt_batch, max_batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(manifest_path) as handle:
    manifest = json.load(handle)


def shapes(inputs, batch):
    return ",".join(
        spec["name"] + ":" + "x".join(str(batch if axis == "batch" else axis) for axis in spec["shape"])
        for spec in inputs
    )


components = manifest["components"]
for name, component in components.items():
    # As service/manifest.py's served_components: the TensorRT loop runs unet_step in place of unet.
    if name == "unet" and "unet_step" in components:
        continue
    # As service/runtimes/trt_build.py's component_precision: an int8 build is INT8 for the Q/DQ files only.
    built_at = effective
    if effective == "int8":
        built_at = "int8" if component.get("precision", "fp32") == "int8" else "fp32"
    inputs = component["inputs"]
    print(name, component["path"], built_at, shapes(inputs, 1), shapes(inputs, opt_batch), shapes(inputs, max_batch))
PYTHON
)"

mkdir -p "${out}"
echo "build_engines.sh: ${model} at ${effective} (requested ${precision}) for compute capability ${capability}" \
    "with ${trtexec}${trt_version:+ (TensorRT ${trt_version})}, batch 1..${max_batch} (opt ${opt_batch}), into ${out}" >&2
results=()
failed=0
while read -r name onnx built_at min_shapes opt_shapes max_shapes; do
    plan="${out}/${name}-${built_at}.plan"
    log="${out}/${name}-${built_at}.log"
    case "${built_at}" in
        int8) precision_flags=(--int8 --fp16) ;;
        fp16) precision_flags=(--fp16) ;;
        fp32) precision_flags=() ;;
    esac
    echo "build_engines.sh: ${name} (${onnx}, ${built_at})..." >&2
    if "${trtexec}" \
        --onnx="${model_dir}/${onnx}" \
        --saveEngine="${plan}" \
        ${precision_flags[@]+"${precision_flags[@]}"} \
        "${workspace_flag}" \
        --timingCacheFile="${timing_cache}" \
        --minShapes="${min_shapes}" \
        --optShapes="${opt_shapes}" \
        --maxShapes="${max_shapes}" </dev/null >"${log}" 2>&1; then
        # "[I] GPU Compute Time: min = 1.2 ms, max = ..., mean = ..., median = 1.3 ms, ...", at --opt-batch.
        median="$(sed -n 's/.*GPU Compute Time: .*median = \([0-9.]*\) ms.*/\1/p' "${log}" | tail -n 1)"
        results+=("${name}|${built_at}|built|${median:+${median} ms}|${plan}")
    else
        failed=1
        error="$(grep -E '\[E\]|ERROR|Error' "${log}" | tail -n 1 || true)"
        results+=("${name}|${built_at}|FAILED||${log}${error:+: ${error}}")
        echo "build_engines.sh: trtexec failed on ${onnx}; the end of ${log}:" >&2
        tail -n 20 "${log}" >&2
    fi
done <<<"${components}"

# The table, on stdout: one row per component.
# Columns are at least two spaces apart; "gpu median" is trtexec's median GPU compute time at --opt-batch.
printf '%-10s  %-9s  %-6s  %-10s  %s\n' component precision result "gpu median" "plan or log"
for row in "${results[@]}"; do
    IFS='|' read -r name built_at result median file <<<"${row}"
    printf '%-10s  %-9s  %-6s  %-10s  %s\n' "${name}" "${built_at}" "${result}" "${median:--}" "${file}"
done
if ((failed)); then
    echo "build_engines.sh: error: not every component built; see the FAILED rows and their logs" >&2
    exit 1
fi
