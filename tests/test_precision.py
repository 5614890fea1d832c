"""Precision chosen per device: ``amp="auto"`` is bf16 only where the hardware runs it natively."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import TRAIN
from monai.bundle import ConfigParser

from monai_vqbrain.engines import ReconstructionInferer, precision, resolve_amp
from monai_vqbrain.engines.precision import describe_precision, native_bf16, needs_grad_scaler, precision_name

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["native_bf16", "no_native_bf16"])
def cpu_bf16(request, monkeypatch):
    """Pretend the CPU does (or does not) run bf16 natively."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: request.param)
    return request.param


def test_auto_on_cpu_follows_native_bf16(cpu_bf16):
    assert resolve_amp("auto", CPU) is cpu_bf16
    assert resolve_amp("AUTO", "cpu") is cpu_bf16
    assert precision_name(CPU, resolve_amp("auto", CPU)) == ("bf16" if cpu_bf16 else "fp32")


@pytest.mark.parametrize(("setting", "expected"), [(True, True), (False, False), ("true", True), ("False", False)])
def test_true_and_false_force_the_choice(cpu_bf16, setting, expected):
    assert resolve_amp(setting, CPU) is expected


def test_bad_setting_names_the_key():
    with pytest.raises(ValueError, match="eval_amp must be auto, true or false, got 'maybe'"):
        resolve_amp("maybe", CPU, name="eval_amp")


def test_auto_on_cuda_is_bf16_or_fp16_with_loss_scaling(monkeypatch):
    cuda = torch.device("cuda")
    assert resolve_amp("auto", cuda) is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert precision_name(cuda, True) == "bf16" and not needs_grad_scaler(cuda, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert precision_name(cuda, True) == "fp16" and needs_grad_scaler(cuda, True)


def test_choice_and_reason_are_logged(monkeypatch, caplog):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        resolve_amp("auto", CPU, log=True)
    assert "precision: fp32 on cpu" in caplog.text and "no native bf16; bf16 would be ~9x slower" in caplog.text
    assert "expect ~9x slower" in describe_precision(True, CPU, True)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert describe_precision("auto", CPU, True).startswith("precision: bf16 on cpu (this CPU")


def test_inferer_resolves_auto_on_the_inputs_device(monkeypatch):
    seen = []

    class Recorder(torch.nn.Module):
        def reconstruct(self, images):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
            return images

    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        ReconstructionInferer(amp="auto")(torch.zeros(1, 1, 4, 4), Recorder())
        assert seen[-1] == dtype
    with pytest.raises(ValueError, match="amp must be auto"):
        ReconstructionInferer(amp="sometimes")


def test_bundle_default_is_auto_everywhere(cpu_bf16, tmp_path):
    """The training config resolves ``amp: auto`` once; trainer and validation inferer follow it."""
    parser = ConfigParser()
    parser.read_config(TRAIN)
    assert parser["amp"] == "auto"
    parser["bundle_root"] = str(tmp_path)
    parser["device"] = "cpu"
    assert parser.get_parsed_content("use_amp") is cpu_bf16
    inferer = parser.get_parsed_content("validate#inferer")
    assert resolve_amp(inferer.amp, CPU) is cpu_bf16


def test_capped_cpu_dispatch_reads_as_no_native_bf16():
    """``ONEDNN_MAX_CPU_ISA=AVX2`` emulates a CPU without AVX-512: the probe must then say no native bf16."""
    code = "import torch; from monai_vqbrain.engines import native_bf16; print(native_bf16(torch.device('cpu')))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert isinstance(native_bf16(CPU), bool)
