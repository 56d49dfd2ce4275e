"""Which precision runs fastest on this CPU: INT8 pays only where the CPU has 8-bit dot-product instructions.

ONNX Runtime's QDQ kernels run INT8 convolutions through VNNI (AVX-512 VNNI, AVX-VNNI) or AMX; without them it
widens the 8-bit values and multiplies in 16 bits, which on this project's AVX2 workstation made the INT8 UNet
slower than FP32, while on an AVX-512 VNNI CPU it was 1.7× faster (docs/BENCHMARKS.md). `auto_precision` picks by
that measurement; Linux's /proc/cpuinfo says which instructions there are, and elsewhere FP32 is the safe answer.
"""

from __future__ import annotations

from pathlib import Path

# The /proc/cpuinfo flags of instructions that make INT8 faster than FP32 in ONNX Runtime.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first processor's flags; empty where the file is absent or unreadable (not Linux, a sandbox)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def auto_precision(backend: str, has_int8: bool, flags: frozenset[str]) -> tuple[str, str]:
    """(precision, why) for ``precision: auto``: INT8 on a CPU with VNNI or AMX when the model has an INT8 manifest,
    else FP32. TensorRT keeps FP32 (its ONNX, built as TensorRT decides); a Jetson names int8 or fp16 itself."""
    if backend != "onnxruntime":
        return "fp32", f"auto: fp32 on {backend} (set --precision int8 or fp16 for a Jetson)"
    found = sorted(flag for flag in INT8_FLAGS if flag in flags)
    if not found:
        return "fp32", "auto: fp32, this CPU has no VNNI or AMX, where INT8 is slower than FP32"
    if not has_int8:
        return "fp32", f"auto: fp32, the CPU has {', '.join(found)} but the model has no manifest.int8.json"
    return "int8", f"auto: int8, this CPU has {', '.join(found)}"
