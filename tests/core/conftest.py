"""The devices the core's tests run on: the CPU, and CUDA where torch sees a GPU (skipped with the
reason otherwise, so the suite stays green on a machine without one).

``device`` runs a test once per device; on CUDA it makes it torch's default device for the test
(``torch.set_default_device``), so the tensors and layers a test creates live there; generators
stay on the CPU (tests draw there and copy).
"""
import pytest
import torch

from layer_helpers import cuda_unavailable


@pytest.fixture(params=['cpu', 'cuda'])
def device(request):
    """Run a test on the CPU, and again on CUDA as the default device."""
    if request.param == 'cuda':
        reason = cuda_unavailable()
        if reason:
            pytest.skip(reason)
        torch.set_default_device('cuda')
        request.addfinalizer(lambda: torch.set_default_device('cpu'))
    return request.param
