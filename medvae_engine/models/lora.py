"""LoRA on convolutions: training wrappers and exact merging into plain weights.

A wrapped conv ``X`` keeps the official checkpoint layout: ``X.conv`` (the frozen base conv),
``X.lora_down`` (rank-r conv with the base kernel size, stride and padding) and ``X.lora_up`` (1x1 conv
r -> out), output = conv(x) + scale * up(down(x)). Because both branches are linear in x the
merge W' = W + scale * (up.flatten(1) @ down.flatten(1)).reshape(W.shape) is exact.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .autoencoder import AttnBlock, ResnetBlock, conv_nd

LORA_PARENTS = (ResnetBlock, AttnBlock)
_LORA_KEY = re.compile(
    r"^(?P<prefix>.*)\.(?P<part>conv|lora_down|lora_up)\.(?P<param>weight|bias)$"
)


class LoRAConv(nn.Module):
    """A frozen conv plus a trainable low-rank update of rank ``r``."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, r: int = 4, scale: float = 1.0):
        super().__init__()
        dims = conv.weight.ndim - 2
        self.conv = conv
        self.conv.requires_grad_(False)
        self.lora_down = conv_nd(
            dims,
            conv.in_channels,
            r,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=False,
        )
        self.lora_up = conv_nd(dims, r, conv.out_channels, 1, bias=False)
        self.scale = scale
        nn.init.normal_(self.lora_down.weight, std=1.0 / r)
        nn.init.zeros_(self.lora_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.scale * self.lora_up(self.lora_down(x))

    def merged(self) -> nn.Module:
        """A plain conv equal to this wrapper."""
        conv = self.conv
        out = conv_nd(
            conv.weight.ndim - 2,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=conv.bias is not None,
        ).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(
                merge_weight(conv.weight, self.lora_down.weight, self.lora_up.weight, self.scale)
            )
            if conv.bias is not None:
                out.bias.copy_(conv.bias)
        return out


def merge_weight(
    weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """W + scale * up @ down, reshaped to W's kernel shape."""
    delta = up.flatten(1).double() @ down.flatten(1).double()
    return (weight.double() + scale * delta.reshape(weight.shape)).to(weight.dtype)


def inject_lora(model: nn.Module, r: int = 4, scale: float = 1.0) -> list[nn.Parameter]:
    """Wrap every conv inside a ResnetBlock or AttnBlock; freeze everything else; return LoRA params."""
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for parent in [m for m in model.modules() if isinstance(m, LORA_PARENTS)]:
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv2d, nn.Conv3d)):
                wrapped = LoRAConv(child, r, scale).to(child.weight.device)
                setattr(parent, name, wrapped)
                params += [wrapped.lora_down.weight, wrapped.lora_up.weight]
    return params


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRAConv in ``model`` by its merged plain conv (in place) and return the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRAConv):
                setattr(parent, name, child.merged())
    return model


def has_lora_keys(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(".lora_down." in k for k in state_dict)


def lora_rank(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Rank r of the LoRA tensors in a checkpoint, or None without LoRA."""
    for key, value in state_dict.items():
        if key.endswith(".lora_down.weight"):
            return int(value.shape[0])
    return None


def merge_lora_state_dict(
    state_dict: dict[str, torch.Tensor], scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Official LoRA checkpoint keys -> plain keys with the low-rank updates merged exactly."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    merged: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _LORA_KEY.match(key)
        if m and (m["prefix"] + ".lora_down.weight") in state_dict:
            groups.setdefault(m["prefix"], {})[f"{m['part']}.{m['param']}"] = value
        else:
            merged[key] = value
    for prefix, parts in groups.items():
        if "conv.weight" not in parts or "lora_up.weight" not in parts:
            raise KeyError(f"incomplete LoRA tensors for {prefix}: {sorted(parts)}")
        merged[f"{prefix}.weight"] = merge_weight(
            parts["conv.weight"], parts["lora_down.weight"], parts["lora_up.weight"], scale
        )
        if "conv.bias" in parts:
            merged[f"{prefix}.bias"] = parts["conv.bias"]
    return merged
