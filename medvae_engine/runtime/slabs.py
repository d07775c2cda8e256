"""Large tensor operations in slabs with a cancel check between slabs, the results unchanged.

One convolution of the official 3D model over a 160^3 window takes a minute on a 2-core CPU, and a
GroupNorm or swish over its full-resolution maps several seconds (most of it first-touch page
faults of the output), so a check between modules cannot stop a job within a second.
``SlabMode``, a torch function mode active only inside ``cancel_scope`` (in that thread), checks
before every torch call and runs the large ones as slabs along the first spatial axis:

- convolutions over blocks of output rows (in groups of output channels when a block is still too
  much work), each reading the input rows it needs, with the zero padding at the borders only;
- float32 GroupNorm from per-slab statistics combined in float64, then applied slab by slab;
- elementwise maps (swish, residual adds), nearest upsampling and constant padding row by row;
- matrix products (the mid-block attention's query blocks) in blocks of rows.

Every output element is computed by the same kernel from the same inputs, so results equal the
single call up to the kernels' float rounding (tests: ``tests/engine/test_slabs.py``). Calls that
need gradients are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SLAB_FLOPS = 3e10  # float32 work per slab (convolution, matrix product): about 0.3 s on one core
REDUCED_SPEEDUP = 3.5  # bf16/fp16 run about this much faster here, so their slabs hold more work:
# a 512^2 image's convolutions (at most 8e10) then run whole (slabbing them cost 15% of the run)
MIN_ROWS = 4  # output rows of a convolution block
SPLIT_ABOVE = 2  # only operations above twice a slab's work are split (slabs cost some speed)
SLAB_ELEMENTS = 2**22  # per slab of a memory-bound operation: 16 MB in float32, below glibc's mmap
# threshold, so its temporaries are reused rather than page-faulted afresh (slow on this machine)

Check = Callable[[], None]


class SlabMode(TorchFunctionMode):
    """Calls ``check`` before every torch function on tensors and runs large ones in slabs (see
    module doc)."""

    def __init__(self, check: Check):
        super().__init__()
        self.check = check

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _computes(args, kwargs):  # never before a state call: the exits of no_grad and autocast
            self.check()  # that run while Cancelled unwinds must restore their state
        handler = _HANDLERS.get(func)
        if handler is not None and not _needs_grad(args, kwargs):
            result = handler(self.check, func, *args, **kwargs)
            if result is not NotImplemented:
                return result
        return func(*args, **kwargs)


def _computes(args, kwargs) -> bool:
    """True for a call on tensors (grad-mode and autocast switches take none)."""
    return any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values()))


def _needs_grad(args, kwargs) -> bool:
    if not torch.is_grad_enabled():
        return False
    values = list(args) + list(kwargs.values())
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)


def slab_flops(dtype: torch.dtype) -> float:
    """Work per slab for this dtype: about the same time per slab in every precision."""
    reduced = dtype in (torch.bfloat16, torch.float16)
    return SLAB_FLOPS * (REDUCED_SPEEDUP if reduced else 1.0)


def _ranges(size: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, size)) for a in range(0, size, step)]


def _rows(shape: tuple[int, ...], per_slab: int) -> int:
    """Rows of dim 2 per slab so that a slab holds at most ``per_slab`` elements (at least one)."""
    per_row = math.prod(shape) // max(1, shape[2])
    return max(1, per_slab // max(1, per_row))


_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def _layout(x: torch.Tensor) -> torch.memory_format:
    """Channels-last if ``x`` is stored so (and has several channels), else contiguous."""
    channels_last = _CHANNELS_LAST.get(x.dim() - 2)
    if (channels_last is not None and x.shape[1] > 1 and not x.is_contiguous()
            and x.is_contiguous(memory_format=channels_last)):
        return channels_last
    return torch.contiguous_format


def _empty_like(first: torch.Tensor, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` on the device and in the memory format of ``first``,
    with ``first``'s dtype unless given."""
    dtype = first.dtype if dtype is None else dtype
    return torch.empty(shape, dtype=dtype, device=first.device, memory_format=_layout(first))


def _tuple(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _conv(check: Check, func, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Blocks of output rows (at least MIN_ROWS: oneDNN runs thinner ones markedly slower), split
    into groups of output channels when a block is still too much work. Blocks keep the input's
    memory format (channels-last in bf16, ``codec.pipeline.fast_layout``): the same kernel and
    summation order as the whole call."""
    n = input.dim() - 2
    if n not in (2, 3) or weight.dim() != n + 2 or isinstance(padding, str) or groups != 1:
        return NotImplemented
    stride, padding, dilation = (_tuple(v, n) for v in (stride, padding, dilation))
    reach = dilation[0] * (weight.shape[2] - 1) + 1
    depth = input.shape[2]
    out_sizes = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
                 zip(input.shape[2:], padding, dilation, weight.shape[2:], stride)]
    flops = 2.0 * weight.numel() * input.shape[0] * math.prod(out_sizes)
    budget = slab_flops(input.dtype)
    if flops <= SPLIT_ABOVE * budget or min(out_sizes) < 1:
        return NotImplemented
    channels = weight.shape[0]
    per_row = flops / out_sizes[0]
    rows, width = int(budget // per_row), channels
    if rows < MIN_ROWS:
        rows = min(MIN_ROWS, out_sizes[0])
        groups_needed = math.ceil(per_row * rows / budget)
        width = min(channels, max(16, math.ceil(channels / groups_needed / 16) * 16))
        if per_row * rows * width / channels > budget:  # even 16 channels: fewer rows
            rows = max(1, int(budget // (per_row * width / channels)))
    layout = _layout(input)
    block_padding = (0, *padding[1:])
    out = None
    for a, b in _ranges(out_sizes[0], rows):
        lo = a * stride[0] - padding[0]
        hi = (b - 1) * stride[0] - padding[0] + reach
        piece = input[:, :, max(lo, 0):min(hi, depth)]
        if lo < 0 or hi > depth:  # zero padding at the borders only; F.pad lists the last axis first
            piece = F.pad(piece, [0, 0] * (n - 1) + [max(0, -lo), max(0, hi - depth)])
        piece = piece.contiguous(memory_format=layout)
        for c0, c1 in _ranges(channels, width):
            check()
            y = func(piece, weight[c0:c1], None if bias is None else bias[c0:c1], stride,
                     block_padding, dilation, 1)
            if out is None:  # in the memory format the whole call would have returned
                like = input if input.shape[1] > 1 else y
                out = _empty_like(like, (y.shape[0], channels, *out_sizes), y.dtype)
            out[:, c0:c1, a:b] = y
    return out


def _group_norm(check: Check, func, input, num_groups, weight=None, bias=None, eps=1e-5):
    """Float32/64 maps (bf16 ones run whole: the native kernel is fast there, the cost of a
    large float32 GroupNorm is mostly its output's page faults). Group means and variances slab
    by slab (the native kernel's), merged in float64; then each slab normalised as the native
    kernel does, ``x * scale + shift`` with ``scale = rstd * gamma`` and
    ``shift = beta - mean * scale``, in one pass into the output."""
    if (input.dim() < 3 or input.numel() <= SPLIT_ABOVE * SLAB_ELEMENTS
            or input.shape[1] % num_groups or input.dtype in (torch.bfloat16, torch.float16)):
        return NotImplemented  # bf16: the native kernel is ~10x faster than slabs, 1 s per 0.6G
    batch, channels = input.shape[:2]
    compute = torch.float64 if input.dtype == torch.float64 else torch.float32
    rows = _rows(tuple(input.shape), SLAB_ELEMENTS)
    per_group = channels // num_groups
    count = 0
    mean = torch.zeros(batch, num_groups, dtype=torch.float64, device=input.device)
    m2 = torch.zeros_like(mean)  # sums of squared deviations, merged slab by slab (Chan et al.)
    for a, b in _ranges(input.shape[2], rows):
        check()
        piece = input[:, :, a:b].to(compute).contiguous(memory_format=_layout(input))
        n_s = piece[0, 0].numel() * per_group
        _, mean_s, rstd = torch.ops.aten.native_group_norm(piece, None, None, batch, channels,
                                                           n_s // per_group, num_groups, 0.0)
        mean_s, var_s = mean_s.double(), rstd.double() ** -2
        delta = mean_s - mean
        total = count + n_s
        mean = mean + delta * (n_s / total)
        m2 = m2 + var_s * n_s + delta**2 * (count * n_s / total)
        count = total
    rstd = torch.rsqrt(m2 / count + eps).repeat_interleave(per_group, dim=1)
    scale = rstd if weight is None else rstd * weight.double()
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    shift = shift if bias is None else shift + bias.double()
    view = (batch, channels) + (1,) * (input.dim() - 2)
    scale, shift = scale.to(compute).reshape(view), shift.to(compute).reshape(view)
    out = _empty_like(input, input.shape)
    for a, b in _ranges(input.shape[2], rows):
        check()  # one fused pass per slab, x * scale + shift, into the output when types agree
        if input.dtype == compute:
            torch.addcmul(shift, input[:, :, a:b], scale, out=out[:, :, a:b])
        else:
            out[:, :, a:b] = torch.addcmul(shift, input[:, :, a:b].to(compute), scale)
    return out


def _elementwise(check: Check, func, *args, **kwargs):
    """A map applied element by element (broadcasting allowed except along the first spatial
    axis): row slabs of every argument that spans that axis."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or "out" in kwargs:
        return NotImplemented
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    if len(shape) < 3 or math.prod(shape) <= SPLIT_ABOVE * SLAB_ELEMENTS:
        return NotImplemented
    depth = shape[2]
    for t in tensors:  # each spans the axis, is constant along it, or is a scalar
        if not (t.numel() == 1 or (t.dim() == len(shape) and t.shape[2] in (1, depth))):
            return NotImplemented
    inplace = func in _INPLACE or kwargs.get("inplace", False)
    if inplace and tuple(args[0].shape) != tuple(shape):
        return NotImplemented

    def rows_of(x, a, b):
        spans = isinstance(x, torch.Tensor) and x.dim() == len(shape) and x.shape[2] == depth > 1
        return x[:, :, a:b] if spans else x

    writer = _OUT_FORMS.get(func)  # the torch function that writes into a given output
    out = None
    if writer is not None and not inplace:
        like = next(t for t in tensors if tuple(t.shape) == tuple(shape))
        dtype = torch.result_type(*args[:2]) if len(args) > 1 else like.dtype
        out = _empty_like(like, shape, dtype)
    for a, b in _ranges(depth, _rows(tuple(shape), SLAB_ELEMENTS)):
        check()
        pieces = [rows_of(x, a, b) for x in args]
        if out is not None and writer is not None:
            writer(*pieces, **kwargs, out=out[:, :, a:b])
            continue
        y = func(*pieces, **kwargs)
        if inplace:
            continue
        if out is None:
            out = _empty_like(y, (*y.shape[:2], *shape[2:]))
        out[:, :, a:b] = y
    return args[0] if inplace else out


def _interpolate(check: Check, func, input, size=None, scale_factor=None, mode="nearest", **kwargs):
    """Nearest upsampling by integer factors: output rows [a f, b f) come from input rows [a, b)."""
    n = input.dim() - 2
    factors = _tuple(scale_factor, n) if scale_factor is not None else ()
    if (mode != "nearest" or size is not None or n < 1 or not factors
            or any(float(f) != int(f) or f < 1 for f in factors) or kwargs.get("antialias")):
        return NotImplemented
    f = int(factors[0])
    out_per_row = input.numel() // max(1, input.shape[2]) * math.prod(int(x) for x in factors)
    if out_per_row * input.shape[2] <= SPLIT_ABOVE * SLAB_ELEMENTS:
        return NotImplemented
    out = None
    for a, b in _ranges(input.shape[2], max(1, SLAB_ELEMENTS // out_per_row)):
        check()
        y = func(input[:, :, a:b], scale_factor=scale_factor, mode=mode, **kwargs)
        if out is None:
            out = _empty_like(y, (*y.shape[:2], input.shape[2] * f, *y.shape[3:]))
        out[:, :, a * f:b * f] = y
    return out


def _pad(check: Check, func, input, pad, mode="constant", value=None):
    """Constant padding (non-negative): output rows filled slab by slab."""
    pad = list(pad)
    n = input.dim() - 2
    if (mode != "constant" or n < 1 or any(p < 0 for p in pad) or len(pad) > 2 * n
            or input.numel() <= SPLIT_ABOVE * SLAB_ELEMENTS):
        return NotImplemented
    pad += [0] * (2 * n - len(pad))
    lo, hi = pad[2 * n - 2], pad[2 * n - 1]  # the first spatial axis is the last pair
    inner = pad[: 2 * n - 2] + [0, 0]
    depth = input.shape[2]
    out_depth = depth + lo + hi
    out = None
    for a, b in _ranges(out_depth, _rows(tuple(input.shape), SLAB_ELEMENTS)):
        check()
        src_a, src_b = min(max(a - lo, 0), depth), min(max(b - lo, 0), depth)
        inner[-2] = min(max(lo - a, 0), b - a)  # padding rows of this slab before the input's
        inner[-1] = (b - a) - inner[-2] - (src_b - src_a)
        y = func(input[:, :, src_a:src_b], inner, mode="constant", value=value)
        if out is None:
            out = _empty_like(y, (*y.shape[:2], out_depth, *y.shape[3:]))
        out[:, :, a:b] = y
    return out


def _matmul(check: Check, func, a, b):
    """A large batched matrix product (an attention block's q k^T or its weights times v) in
    blocks of rows of ``a``: each row of the result is the same product."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or min(a.dim(), b.dim()) < 2:
        return NotImplemented
    rows, inner, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    per_row = 2.0 * batch * inner * cols
    budget = slab_flops(a.dtype)
    if per_row * rows <= SPLIT_ABOVE * budget:
        return NotImplemented
    step = max(1, int(budget // per_row))
    out = None
    for r0, r1 in _ranges(rows, step):
        check()
        y = torch.matmul(a[..., r0:r1, :], b)
        if out is None:
            out = torch.empty((*y.shape[:-2], rows, cols), dtype=y.dtype, device=y.device)
        out[..., r0:r1, :] = y
    return out


_OUT_FORMS = {
    torch.sigmoid: torch.sigmoid, torch.Tensor.sigmoid: torch.sigmoid,
    torch.mul: torch.mul, torch.Tensor.mul: torch.mul,
    torch.add: torch.add, torch.Tensor.add: torch.add,
    torch.sub: torch.sub, torch.Tensor.sub: torch.sub,
}
_INPLACE = {torch.Tensor.mul_, torch.Tensor.add_, torch.Tensor.sub_, torch.Tensor.sigmoid_}
_HANDLERS: dict[object, Callable] = {
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.group_norm: _group_norm,
    F.interpolate: _interpolate,
    F.pad: _pad,
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,
    **dict.fromkeys(
        (torch.sigmoid, torch.Tensor.sigmoid, F.silu, torch.mul, torch.Tensor.mul, torch.add,
         torch.Tensor.add, torch.sub, torch.Tensor.sub, *_INPLACE),
        _elementwise,
    ),
}
