"""``compile=true``: torch.compile a module's method so that copies of the module stay right.

Assigning ``module.forward_features = torch.compile(module.forward_features)`` keeps the
checkpoint keys (the module itself is not wrapped) but breaks every deep copy: the compiled
function closes over the ORIGINAL module, and ``copy.deepcopy`` copies functions by reference, so
a momentum network (BYOL, MoCo), a Mean Teacher teacher or the EMA callback's copy would run the
online weights. :class:`CompiledMethod` rebinds itself to the copy when its module is copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class CompiledMethod:
    """A compiled bound method of ``owner`` that follows deep copies of ``owner``.

    Stored as an instance attribute (``owner.<name>``), it shadows the class's method; a deep copy
    of the owner gets a fresh ``CompiledMethod`` bound to the copy (compiled on its first call).
    """

    def __init__(self, owner: nn.Module, name: str, **compile_kwargs: Any) -> None:
        self.owner = owner
        self.name = name
        self.compile_kwargs = compile_kwargs
        method = getattr(type(owner), name).__get__(owner, type(owner))
        self.compiled = torch.compile(method, **compile_kwargs)
        # what torch.compile marks its results with; kept for callers that look for it
        self._torchdynamo_orig_callable = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledMethod:
        # The owner's copy is in the memo when the owner is what is being copied (deepcopy
        # registers a new object before copying its attributes); else copy the owner too.
        owner = memo.get(id(self.owner))
        if owner is None:
            owner = copy.deepcopy(self.owner, memo)
        return CompiledMethod(owner, self.name, **self.compile_kwargs)


def compile_method(module: nn.Module, name: str = "forward_features", **kwargs: Any) -> None:
    """Replace ``module.<name>`` with its compiled version, deep-copy safe (see the module doc)."""
    setattr(module, name, CompiledMethod(module, name, **kwargs))
