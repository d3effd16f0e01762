"""Walking the nested dicts and lists of an mmengine config."""
from typing import Any, Iterator


def config_dicts(node: Any) -> Iterator[dict]:
    """Every dict in ``node`` (a config or any part of one), each before those inside it.

    A dict's children are read when the walk moves on from it, so the caller may change the dict
    it was given (a key removed is then not walked into).
    """
    if isinstance(node, dict):
        yield node
        children = list(node.values())
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return
    for child in children:
        yield from config_dicts(child)
