"""Which float precision a CPU run trains and samples in: bf16 where the CPU computes it natively."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from alignlab.utils.runtime import get_logger

log = get_logger(__name__)

# x86 flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpuinfo_field(name: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The first ``name : value`` line the kernel reports about the CPU (None where there is none)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no ``/proc/cpuinfo``)."""
    return set((cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), and torch's CPU kernels use it."""
    import torch

    flags = cpu_flags() if flags is None else flags
    if not any(f in flags for f in _BF16_FLAGS):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


@functools.cache
def cpu_precision() -> str:
    """``bf16-mixed`` on a CPU with native bf16, else ``32-true`` (said once in the log): the value of
    ``trainer=cpu``'s ``precision`` (the ``${cpu_precision:}`` resolver). ``$ALIGNLAB_CPU_PRECISION``
    overrides the detection (the test suite pins ``32-true``)."""
    forced = os.environ.get("ALIGNLAB_CPU_PRECISION")
    if forced:
        return forced
    if cpu_has_bf16():
        return "bf16-mixed"
    log.info(
        "this CPU (%s) has no native bf16 (avx512_bf16 / amx_bf16): training in fp32 (trainer.precision=32-true)",
        platform.processor() or platform.machine(),
    )
    return "32-true"


def cpu_inference_dtype() -> str:
    """The weights' dtype of CPU inference (pair sampling, judge labelling, evaluation): ``bfloat16``
    where ``trainer=cpu`` trains in bf16 (``cpu_precision``: the CPU's native bf16 or
    ``$ALIGNLAB_CPU_PRECISION=bf16-*``), else ``float32``; so ``ALIGNLAB_CPU_PRECISION=32-true`` is fp32
    everywhere."""
    return "bfloat16" if cpu_precision().startswith("bf16") else "float32"
