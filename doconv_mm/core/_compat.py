"""What the layer needs from torch, for every torch it supports (1.13 and newer).

torch 2.4 made the autocast queries device-generic (``torch.is_autocast_enabled(device_type)``,
``torch.get_autocast_dtype(device_type)``); older releases have one query per device. torch 2.3
made ``torch.compiler.is_compiling`` public; torch 1.13 has no compiler.
"""
import sys
from typing import Optional

import torch


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast runs ``device_type``'s ops in, or None where autocast is off."""
    if hasattr(torch, 'get_autocast_dtype'):  # torch >= 2.4
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    if device_type == 'cpu':
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    if device_type == 'cuda':
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    return None


def is_compiling() -> bool:
    """Whether torch.compile (dynamo) is tracing the caller (torch >= 2.0; never before)."""
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):  # torch >= 2.3
        return compiler.is_compiling()
    dynamo = sys.modules.get('torch._dynamo')  # not imported: not compiling
    return bool(dynamo is not None and getattr(dynamo, 'is_compiling', lambda: False)())
