"""`--device auto` becomes a concrete device in one place (core.devices.resolve_device), and the
sweep's choices, the local backend and re-evaluation all take it from there."""

import pytest
import torch

from mixopt.backends import _on_cuda
from mixopt.config.runtime import Runtime
from mixopt.core.devices import resolve_device
from mixopt.sweep import reeval


@pytest.mark.parametrize("has_cuda", [False, True])
def test_auto_is_a_gpu_where_there_is_one_and_a_named_device_stays(monkeypatch, has_cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    assert resolve_device("auto") == ("cuda" if has_cuda else "cpu")
    for named in ("cpu", "cuda", "cuda:1"):
        assert resolve_device(named) == named
    # the callers agree with it: local tasks run in processes on CUDA; stacked re-evaluation across GPUs
    assert _on_cuda("auto") is has_cuda and _on_cuda("cpu") is False and _on_cuda("cuda:0") is True
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(reeval, "IN_PROCESS_FLOP", -1)
    monkeypatch.setattr(reeval, "_eval_tokens", lambda plan, measures: 0)
    monkeypatch.setattr(reeval, "param_count", lambda spec: 0)

    class Plan:
        spec = None

    assert reeval._worth_processes(Plan(), [], Runtime(device="auto")) is has_cuda
    assert reeval._worth_processes(Plan(), [], Runtime(device="cpu")) is False
