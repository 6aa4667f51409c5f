"""What this CPU is: its name and the instruction sets that decide how fast a model runs on it.

The speed of the same ONNX model differs by CPU far more than by anything RoadSeg does: int8
convolutions run 2-2.5x faster than fp32 with AVX-512 VNNI (one instruction per 4-way int8 dot
product), much less with AVX2 alone. The benchmark prints these flags beside its figures, and
the automatic backend choice (`choice.py`) keys its measurements on them.

Linux: /proc/cpuinfo (every flag, AMX included). Elsewhere: numpy's own CPU dispatch table
(AVX2, AVX-512, AVX-512 VNNI; AMX and AVX-VNNI unknown).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# name shown to people -> /proc/cpuinfo flags (all needed) | numpy's __cpu_features__ key
FEATURES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "AVX2": (("avx2", "fma"), "AVX2"),
    "AVX-512": (("avx512f", "avx512bw", "avx512vl"), "AVX512_SKX"),
    "AVX-512 VNNI": (("avx512_vnni",), "AVX512VNNI"),
    "AVX-VNNI": (("avx_vnni",), None),
    "AVX-512 BF16": (("avx512_bf16",), None),
    "AMX": (("amx_tile", "amx_int8"), None),
}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", empty) when absent."""
    try:
        text = CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return "", frozenset()
    name, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name, flags


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found  # type: ignore[attr-defined]
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found  # numpy 1.x
        except ImportError:
            return {}
    return dict(found)


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, bool | None]:
    """Each of `FEATURES` -> True / False, or None where this platform cannot tell."""
    _, flags = _cpuinfo()
    if flags:
        return {name: all(f in flags for f in needed) for name, (needed, _) in FEATURES.items()}
    found = _numpy_features()
    return {name: (bool(found.get(key)) if key and key in found else None) for name, (_, key) in FEATURES.items()}


def cpu_name() -> str:
    """The processor's model name ("AMD EPYC 7763 64-Core Processor"), or the best this platform gives."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def describe_cpu() -> str:
    """One line for people: name, then each instruction set present or absent."""
    features = cpu_features()
    shown = ", ".join(f"{name} {'yes' if have else 'no' if have is False else '?'}" for name, have in features.items())
    return f"{cpu_name()}: {shown}"


def cpu_signature(threads: int) -> dict[str, object]:
    """What makes measured model speeds transferable: the CPU, its instruction sets, the
    threads a session runs on and the ONNX Runtime build that picks its kernels."""
    try:
        import onnxruntime

        runtime = onnxruntime.__version__
    except ImportError:
        runtime = None
    return {"cpu": cpu_name(), "features": sorted(k for k, v in cpu_features().items() if v),
            "threads": threads, "onnxruntime": runtime}
