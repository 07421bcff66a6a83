"""The machine a benchmark ran on, printed with every table: the CPU and the flags that decide
its speed (vector width, bfloat16 and int8 dot products), read from Linux's /proc/cpuinfo."""

from __future__ import annotations

import os

# x86: vector width and FMA, bfloat16/float16 and int8 dot products, AMX tiles. ARM: NEON, the
# dot-product (asimddp), 8-bit matrix-multiply (i8mm), bfloat16 and SVE.
X86_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
)
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve")


def cpu_description() -> str:
    """E.g. "CPU: Intel(R) Xeon(R) Processor, 2 logical cores; flags: avx2 fma avx512f ..."."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return f"CPU: unknown (no /proc/cpuinfo), {os.cpu_count()} logical cores"
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fields.get("CPU part", "unknown CPU")
    flags = set((fields.get("flags") or fields.get("Features", "")).split())
    wanted = ARM_FLAGS if "asimd" in flags else X86_FLAGS
    present = " ".join(flag for flag in wanted if flag in flags) or "none of " + " ".join(wanted)
    return f"CPU: {name}, {os.cpu_count()} logical cores; flags: {present}"
