"""The wrapper's `forward` shows the wrapped model's parameter names, as PEFT's wrappers do.

The Hugging Face `Trainer` keeps only the dataset columns that `inspect.signature(model.forward)`
names (`remove_unused_columns`, on by default); a bare `forward(*args, **kwargs)` names none of
them, so every column was dropped ("The batch received was empty").
"""

from __future__ import annotations

import inspect
import types

from torch import nn


def expose_forward_signature(wrapper: nn.Module) -> None:
    """Give `wrapper` an instance attribute `forward`: its class's forward, bound to it, with the
    signature (and docstring) of `wrapper.base_model.forward`. Per instance, so that two wrappers of
    different models show their own; an ordinary bound method, so that tools which rewrap
    `model.forward.__func__` (accelerate's mixed precision) keep working."""
    try:
        signature = inspect.signature(wrapper.base_model.forward)
    except (TypeError, ValueError):  # a builtin or C forward without a signature: keep (*args, **kwargs)
        return
    class_forward = type(wrapper).forward

    def forward(self, *args, **kwargs):
        return class_forward(self, *args, **kwargs)

    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    forward.__signature__ = signature.replace(parameters=[this, *signature.parameters.values()])
    forward.__doc__ = class_forward.__doc__
    forward.__qualname__ = class_forward.__qualname__
    object.__setattr__(wrapper, "forward", types.MethodType(forward, wrapper))


def state_without_forward(wrapper: nn.Module) -> dict:
    """The wrapper's __dict__ for pickling / deepcopy, minus the per-instance forward (a local
    function does not pickle; `expose_forward_signature` rebuilds it on the copy)."""
    state = dict(wrapper.__dict__)
    state.pop("forward", None)
    return state
