"""A stand-in accelerator for tests on machines without a GPU.

Inside ``FakeDevice()``, tensors moved to ``FAKE`` (and a model's parameters after ``place``) keep
their data on the CPU but report ``device == FAKE``. Like CUDA or MPS, mixing them with host
tensors in one operation raises, and ``.numpy()`` refuses them until they are copied back with
``.cpu()`` / ``.to("cpu")``. So device mistakes crash here exactly as they would on a GPU.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

FAKE = torch.device("meta")
_TAG = "_on_fake_device"


def on_fake(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _TAG, False)


def _tag(out, value: bool = True):
    if isinstance(out, torch.Tensor):
        setattr(out, _TAG, value)
    elif isinstance(out, (tuple, list)):
        for o in out:
            _tag(o, value)
    return out


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _is_fake(d) -> bool:
    return isinstance(d, (str, torch.device)) and torch.device(d).type == FAKE.type


def _is_host(d) -> bool:
    return isinstance(d, (str, torch.device)) and torch.device(d).type == "cpu"


def place(model: torch.nn.Module) -> torch.nn.Module:
    """Put ``model``'s parameters and buffers on the fake device (data stays where it is)."""
    for t in list(model.parameters()) + list(model.buffers()):
        _tag(t)
    return model


class FakeDevice(TorchFunctionMode):
    """Simulate a separate accelerator: see the module docstring."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None)
        if name == "__get__" and getattr(owner, "__name__", "") == "device" and on_fake(args[0]):
            return FAKE
        if name == "numpy" and on_fake(args[0]):
            raise TypeError("can't convert fake-device tensor to numpy; use .cpu() first")
        if name in ("cpu", "to", "cuda"):
            return self._move(func, name, args, kwargs)
        if _is_fake(kwargs.get("device")):  # factories such as torch.zeros(..., device=FAKE)
            kwargs["device"] = "cpu"
            return _tag(func(*args, **kwargs))
        tensors = [t for t in _tensors((args, kwargs)) if t.ndim > 0]
        fake = [on_fake(t) for t in tensors]
        if any(fake) and not all(fake):
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two "
                f"devices, {FAKE.type} and cpu! ({name})"
            )
        out = func(*args, **kwargs)
        return _tag(out) if any(fake) else out

    @staticmethod
    def _move(func, name, args, kwargs):
        source, rest = args[0], list(args[1:])
        target = kwargs.pop("device", None)
        if target is None and rest and isinstance(rest[0], (str, torch.device)):
            target = rest.pop(0)
        if name == "cpu":
            target = "cpu"
        if name == "cuda" or _is_fake(target):
            out = source.to(*rest, **kwargs)
            return _tag(out.clone() if out is source else out)
        if _is_host(target):
            out = source.to(*rest, **kwargs) if name == "to" else source
            return _tag(out.clone() if out is source else out, False)
        return _tag(func(*args, **kwargs), on_fake(source))
