"""Where the work runs: the device (CUDA, Apple's MPS or the CPU) and whether bf16 autocast pays on it."""

import os
from pathlib import Path

import torch

from src.errors import ConfigError

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 matrix work is still native
_BF16_ISAS = {"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
              "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}


def pick_device(name: str = "auto") -> torch.device:
    """'auto' prefers CUDA, then Apple's MPS, then the CPU; an unavailable choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if not available[name]:
        raise ConfigError(f"config key 'train.device' is '{name}' but no {name} device is available; "
                          "use train.device=auto or cpu")
    return torch.device(name)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x on `device`; non-blocking only on CUDA (from pageable memory it is reported to corrupt data on MPS)."""
    return x.to(device, non_blocking=device.type == "cuda")


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU, and not capped away by ONEDNN_MAX_CPU_ISA."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap not in _BF16_ISAS:
        return False
    try:
        flags = torch._C._cpu._get_cpu_capability()  # what PyTorch's cpuinfo found
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    except Exception:  # an older or newer PyTorch without this helper: read the kernel's flags
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in text or " amx_bf16" in text


def choose_bf16(setting: bool | str, device: torch.device) -> tuple[bool, str]:
    """(use bf16 autocast, why) for train.bf16 = true, false or "auto" (on where the hardware is native).

    Emulated bf16 is slower than float32 (2.5-4x on an AVX2 laptop CPU), so "auto" asks for the real thing.
    """
    if device.type not in ("cuda", "cpu"):
        return False, f"{device.type} runs in float32"
    if setting is not True and setting is not False:  # "auto"
        if device.type == "cuda":
            try:
                native = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # PyTorch < 2.4 has no including_emulation
                native = torch.cuda.is_bf16_supported()
            return native, "auto: this GPU " + ("has" if native else "lacks") + " native bf16"
        native = _cpu_has_native_bf16()
        return native, "auto: this CPU " + ("has native bf16 (AVX512-BF16 or AMX)" if native else
                                            "lacks native bf16 (no AVX512-BF16/AMX), float32 is faster")
    return setting, "train.bf16=" + ("true" if setting else "false")
