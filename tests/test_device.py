import pytest
import torch

from dpo_toolkit.core.device import resolve_device


def test_cpu_is_the_default_and_bad_names_are_refused():
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_and_absent_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device=.cuda. asks for CUDA, but torch .* sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="cuda:1"):
        resolve_device("cuda:1")
