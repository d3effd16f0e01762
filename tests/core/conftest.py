"""The devices the core's tests run on: the CPU, and CUDA where torch sees a GPU (skipped with the
reason otherwise, so the suite stays green on a machine without one).

``device`` runs a test once per device; ``composition`` once per way the composition runs (the
compiled CPU form, PyTorch operators on the CPU, PyTorch operators on CUDA). On CUDA both make it
torch's default device for the test (``torch.set_default_device``), so the tensors and layers a
test creates live there; generators stay on the CPU (tests draw there and copy).
"""
import pytest
import torch

from doconv_mm.core import _ext
from layer_helpers import cuda_unavailable


def _use(device, request):
    if device == 'cuda':
        reason = cuda_unavailable()
        if reason:
            pytest.skip(reason)
        torch.set_default_device('cuda')
        request.addfinalizer(lambda: torch.set_default_device('cpu'))
    return device


@pytest.fixture(params=['cpu', 'cuda'])
def device(request):
    """Run a test on the CPU, and again on CUDA as the default device."""
    return _use(request.param, request)


@pytest.fixture(params=['cpu-compiled', 'cpu-pytorch', 'cuda'])
def composition(request, monkeypatch):
    """Run a test with the compiled CPU composition, with PyTorch ops on the CPU, and with
    PyTorch ops on CUDA (the compiled form is the CPU's alone)."""
    if request.param == 'cpu-pytorch':
        monkeypatch.setattr(_ext, 'applies', lambda *args: None)
    elif request.param == 'cpu-compiled' and _ext.load() is None:
        pytest.skip(f'compiled composition unavailable: {_ext.unavailable_reason()}')
    _use(request.param.split('-')[0], request)
    return request.param
