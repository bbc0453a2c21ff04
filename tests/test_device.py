"""Device-dependent choices, forced on the CPU: bf16 where it is native, non-blocking copies on CUDA only."""

import pytest
import torch

from src.device import choose_bf16, to_device

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def cpu_flags(monkeypatch, **flags):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: {"avx2": True, **flags}, raising=False)


@pytest.mark.parametrize("flags, isa, expected", [
    ({"avx512_bf16": True}, None, True),               # Zen 4, Sapphire Rapids
    ({"amx_bf16": True}, None, True),
    ({}, None, False),                                 # a typical laptop: AVX2 only
    ({"avx512_bf16": True}, "AVX2", False),            # native, but oneDNN is capped below bf16
    ({"avx512_bf16": True}, "avx512_core_bf16", True),
])
def test_auto_bf16_on_the_cpu_only_where_it_is_native(monkeypatch, flags, isa, expected):
    cpu_flags(monkeypatch, **flags)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    use, why = choose_bf16("auto", CPU)
    assert use is expected and why.startswith("auto: this CPU " + ("has" if expected else "lacks"))


def test_true_and_false_force_it_and_mps_runs_in_float32(monkeypatch):
    cpu_flags(monkeypatch)
    assert choose_bf16(True, CPU) == (True, "train.bf16=true")
    assert choose_bf16(False, CPU) == (False, "train.bf16=false")
    assert choose_bf16("auto", MPS) == (False, "mps runs in float32")
    assert choose_bf16(True, MPS)[0] is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_bf16_on_cuda_asks_for_native_support(monkeypatch, native):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert choose_bf16("auto", CUDA)[0] is native and asked["emulation"] is False


def test_copies_are_non_blocking_on_cuda_only(monkeypatch):
    calls = []

    def spy_to(self, device, non_blocking=False):
        calls.append((torch.device(device).type, non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    x = torch.zeros(2)
    for device in (CUDA, MPS, CPU):
        to_device(x, device)
    assert calls == [("cuda", True), ("mps", False), ("cpu", False)]


def test_the_training_startup_line_says_what_bf16_does_and_why(tmp_path, monkeypatch, capsys):
    import train
    from tests.conftest import tiny_config
    cpu_flags(monkeypatch)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    tiny_config(tmp_path, train={"bf16": "auto"})
    train.main(["--config", str(tmp_path / "config.json")])
    assert "bf16 False (auto: this CPU lacks native bf16" in capsys.readouterr().out
