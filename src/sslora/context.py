"""Routing state shared by the SSLoRA layers of one wrapped model, kept per thread.

Two things travel from the wrapped model's call to its layers: the padding mask of the call (which
tokens count in the balance loss and the routing statistics) and the list the layers append their
balance losses to. Both live in thread-local storage, so that two threads running one model neither
see each other's mask nor mix their losses, and both are scoped to one call of the wrapped model:
a layer that did not run in a forward contributes nothing to it, whatever ran before.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Iterator

import torch
from torch import nn


def in_backward() -> bool:
    """Is the autograd engine running a backward pass in this thread (e.g. recomputing layers under
    gradient checkpointing)? Those recomputations are not new forwards: nothing is recorded."""
    task = getattr(torch._C, "_current_graph_task_id", None)  # private; without it, assume not
    return task is not None and task() != -1


def call_mask(kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The (B, q) padding mask of one call of a Hugging Face style model from its keyword arguments.

    `attention_mask` (B, M) covers the cached positions too when `input_ids` / `inputs_embeds` hold
    only the q < M new ones (KV-cached decoding in `generate`): the new positions are its last q.
    """
    mask = kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    for key in ("input_ids", "inputs_embeds"):
        tokens = kwargs.get(key)
        if isinstance(tokens, torch.Tensor) and tokens.dim() >= 2 and tokens.shape[0] == mask.shape[0]:
            if tokens.shape[1] < mask.shape[1]:
                return mask[:, -tokens.shape[1]:]
            break
    return mask


class _ThreadState(threading.local):
    def __init__(self):
        self.explicit_mask: torch.Tensor | None = None  # padding_mask() blocks: wins over call masks
        self.call_masks: list[torch.Tensor | None] = []  # one per nested call of the wrapped model
        self.depth = 0  # nested calls of the wrapped model in progress
        self.collecting: list[torch.Tensor] | None = None  # balance losses of the forward in progress
        self.aux_losses: list[torch.Tensor] = []  # those of the last finished forward


class RoutingContext:
    """Per-thread state of one wrapped model: the padding mask and the balance losses of the current
    forward. Layers built without a model get a private one; `collect_aux_losses()` scopes a forward."""

    def __init__(self):
        self._state = _ThreadState()
        # routing statistics are summed in place by every thread running the model
        self.stats_lock = threading.Lock()
        # layers using this context and the modules carrying its hooks: when the last layer is
        # unwrapped (unload, or a failed load rolled back) the hooks come off too
        self._layers = 0
        self._roots: list[weakref.ref] = []

    def __reduce__(self):  # thread-local state and locks do not pickle or deepcopy: start empty
        return (type(self), ())

    def register_layer(self) -> None:
        self._layers += 1

    def release_layer(self) -> None:
        if self._layers == 0:  # a copy of a model (fresh context): its wrapper removes the hooks
            return
        self._layers -= 1
        if self._layers == 0:
            for ref in self._roots:
                root = ref()
                if root is not None:
                    remove_scope_hooks(root, self)
            self._roots = []

    # ------------------------------------------------------------------ padding mask
    @property
    def attention_mask(self) -> torch.Tensor | None:
        """(B, L) mask of this thread's current call: a `padding_mask` block's, else the call's own."""
        state = self._state
        if state.explicit_mask is not None:
            return state.explicit_mask
        return state.call_masks[-1] if state.call_masks else None

    @attention_mask.setter
    def attention_mask(self, mask: torch.Tensor | None) -> None:
        self._state.explicit_mask = mask

    @contextlib.contextmanager
    def padding_mask(self, mask: torch.Tensor | None) -> Iterator[None]:
        """Inside the block this thread's layers use `mask` (2-d, else ignored), whatever the calls pass."""
        state = self._state
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        previous, state.explicit_mask = state.explicit_mask, mask
        try:
            yield
        finally:
            state.explicit_mask = previous

    def valid_tokens(self, leading_shape: torch.Size) -> torch.Tensor | None:
        """(T,) bool for inputs whose leading dims are the mask's (B, L); None when they differ
        (vision-tower tokens, a mask of another call), in which case every token counts."""
        mask = self.attention_mask
        if mask is None or tuple(mask.shape) != tuple(leading_shape):
            return None
        return mask.reshape(-1).bool()

    # ------------------------------------------------------------------ forward scopes
    def begin_call(self, kwargs: dict[str, Any] | None = None) -> None:
        """A call of the wrapped model starts: the outermost one starts a new balance-loss list
        (unless it is a recomputation inside backward) and every one pushes its padding mask."""
        state = self._state
        if state.depth == 0:
            state.collecting = None if in_backward() else []
        state.depth += 1
        if kwargs is None:  # a scope without a call of its own (collect_aux_losses): the mask goes on
            state.call_masks.append(state.call_masks[-1] if state.call_masks else None)
        else:
            state.call_masks.append(call_mask(kwargs))

    def end_call(self) -> None:
        state = self._state
        state.call_masks.pop()
        state.depth -= 1
        if state.depth == 0 and state.collecting is not None:
            state.aux_losses, state.collecting = state.collecting, None

    @contextlib.contextmanager
    def collect_aux_losses(self) -> Iterator[list[torch.Tensor]]:
        """One forward scope: yields the list the layers run inside the block append their balance loss to."""
        self.begin_call()
        collected = self._state.collecting  # an enclosing scope's list when nested
        try:
            yield collected if collected is not None else []
        finally:
            self.end_call()

    @property
    def collecting(self) -> bool:
        """Does a forward scope in this thread collect balance losses now?"""
        return self._state.collecting is not None

    def add_aux_loss(self, loss: torch.Tensor) -> None:
        collecting = self._state.collecting
        if collecting is not None:
            collecting.append(loss)

    def aux_losses(self) -> list[torch.Tensor]:
        """The balance losses (scalars, possibly on several devices) of the last finished forward in
        this thread, one per layer call in that forward."""
        return list(self._state.aux_losses)


class ForwardScopeHooks:
    """Forward hooks on the wrapped model's root module: each call of it (the wrapper's `forward`,
    every step of `generate`, a direct call of the base model) is one forward scope of `context`,
    with the padding mask of its own keyword arguments. Holds nothing but the context, so a deep
    copy of the model gets hooks of its own copied context."""

    def __init__(self, context: RoutingContext):
        self.context = context

    def before(self, module, args, kwargs):
        self.context.begin_call(kwargs)

    def after(self, module, args, kwargs, output):
        # registered with always_call: also runs after an exception in forward, which must end the call
        if self.context._state.depth > 0:
            self.context.end_call()


def attach_scope_hooks(root: nn.Module, context: RoutingContext) -> None:
    """Install the forward-scope hooks of `context` on `root` (once)."""
    remove_scope_hooks(root, context)
    hooks = ForwardScopeHooks(context)
    root.register_forward_pre_hook(hooks.before, with_kwargs=True)
    root.register_forward_hook(hooks.after, with_kwargs=True, always_call=True)
    context._roots.append(weakref.ref(root))


def remove_scope_hooks(root: nn.Module, context: RoutingContext | None = None) -> None:
    """Take the forward-scope hooks (of `context`, or any) off `root`. By identity rather than by
    handle: a deep copy of the model holds copies of the hooks but no handles to them."""
    tables = {
        "_forward_pre_hooks": ("_forward_pre_hooks_with_kwargs",),
        "_forward_hooks": ("_forward_hooks_with_kwargs", "_forward_hooks_always_called"),
    }
    for name, extras in tables.items():
        table = getattr(root, name)
        for key, hook in list(table.items()):
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, ForwardScopeHooks) and (context is None or owner.context is context):
                del table[key]
                for extra in extras:  # torch keeps the hook's flags in side tables keyed alike
                    getattr(root, extra, {}).pop(key, None)
