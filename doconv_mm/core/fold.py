"""Model-level folding: replace every DO-Conv layer by the equivalent plain ``nn.Conv2d``."""
import torch.nn as nn

from .do_conv import DOConv2d


def fold_model(model: nn.Module) -> nn.Module:
    """Fold every :class:`DOConv2d` in ``model`` in place and return the model.

    The result's state dict has exactly the keys and shapes of the same network built with plain
    convolutions. A bare ``DOConv2d`` cannot be replaced in place; its folded conv is returned.
    """
    if isinstance(model, DOConv2d):
        return model.fold()
    for name, child in list(model.named_children()):
        if isinstance(child, DOConv2d):
            setattr(model, name, child.fold())
        else:
            fold_model(child)
    return model


def count_do_convs(model: nn.Module) -> int:
    """How many DO-Conv layers ``model`` holds (a 1x1 ``DOConv2d`` has no ``D``: not counted)."""
    return sum(isinstance(m, DOConv2d) and m.D is not None for m in model.modules())
