"""2D KL-autoencoder inference over tiles with whole-image GroupNorm statistics: linear in pixels.

The encoder and decoder run stage by stage, a stage being what lies between two GroupNorms (a norm,
swish and one convolution, plus a residual). Every stage runs over a grid of tiles whose cores
partition the feature map; each tile is read with a halo as wide as the stage's convolution reaches,
so its core equals the whole-image result. Every GroupNorm uses the whole map's statistics: the
per-channel sum and sum of squares of the cores (float64), accumulated as the previous stage writes
them. Only the current map, its residual input and (in the mid block) q, k, v live on the host.

The mid-block self-attention is the one non-local layer. Global attention over the latent is
quadratic (a 2048^2 image at f=4 has 262k tokens), so queries run in blocks of half the attention
window that attend to the keys of the window centred on them (clamped to the map): linear in
pixels, and exactly global attention when the latent fits in one window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator

import torch
import torch.nn.functional as F
from torch import nn

from ..models.autoencoder import LOGVAR_RANGE, AutoencoderKL, chunked_attention, with_shortcut

ATTENTION_WINDOW = 64  # latent tokens a side that a query block attends to (256 px at f=4)

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 of a tile's core


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: optional GroupNorm (+ swish) on the input, then ``body`` over tiles.

    ``halo``: input pixels a core needs on each side; ``scale``: output/input size (2 upsamples,
    1/2 downsamples); ``keep``: this stage's input is the residual of the next; ``add``: add the
    kept residual (through ``shortcut``) to the output.
    """

    body: Callable[[torch.Tensor], torch.Tensor]
    norm: nn.GroupNorm | None = None
    act: bool = True
    halo: int = 1
    scale: float = 1.0
    keep: bool = False
    add: bool = False
    shortcut: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclasses.dataclass
class Map:
    """A feature map on the host (B, C, H, W) with its per-channel sum and sum of squares."""

    data: torch.Tensor
    sums: torch.Tensor | None = None  # (2, B, C) float64


def supports(model) -> bool:
    """True for the 2D autoencoders this module can run (ours, official or starter, LoRA or not;
    not one with a learned latent refiner, which needs whole decoder passes while encoding)."""

    return (isinstance(model, AutoencoderKL) and model.spatial_dims == 2
            and not hasattr(model, "refiner"))


def encode_steps(
    model: nn.Module, x: torch.Tensor, tile: int, window: int | None = ATTENTION_WINDOW,
    sample: bool = False, generator: torch.Generator | None = None,
) -> Generator[tuple[int, int], None, torch.Tensor]:
    """Latent of a (B, C, H, W) image batch (H, W multiples of the factor), tile by tile; yields
    (done, total) after every tile. ``tile``: core side in image pixels; ``window``: attention
    window in latent tokens (None: global attention, quadratic)."""
    stages = _encoder_stages(model)
    grid = tile_grid(x.shape[-2:], model.factor, tile)
    moments = yield from _run(stages, x, grid, model.factor, window, _model_device(model))

    mean, logvar = moments.chunk(2, dim=1)
    mean = with_shortcut(mean, model.latent_shortcut(x.detach().cpu()))
    return model.posterior(mean, logvar.clamp(*LOGVAR_RANGE), sample, generator)


def decode_steps(
    model: nn.Module, z: torch.Tensor, tile: int, window: int | None = ATTENTION_WINDOW
) -> Generator[tuple[int, int], None, torch.Tensor]:
    """Image of a latent batch (B, C, h, w), tile by tile; ``tile`` in image pixels."""
    f = model.factor
    grid = tile_grid(tuple(s * f for s in z.shape[-2:]), f, tile)
    image = yield from _run(_decoder_stages(model), z, grid, 1, window, _model_device(model))
    return with_shortcut(image, model.image_shortcut(z.detach().cpu()))


def tile_grid(image_shape, factor: int, tile: int) -> list[Box]:
    """Tile cores in latent units: side tile/factor, the last of each axis ends at the edge."""
    side = max(1, tile // factor)
    h, w = (s // factor for s in image_shape)
    return [(y, min(y + side, h), x, min(x + side, w))
            for y in range(0, h, side) for x in range(0, w, side)]


def _encoder_stages(model: nn.Module) -> list[Stage | nn.Module]:
    enc = model.encoder
    stages: list[Stage | nn.Module] = [Stage(enc.conv_in, act=False)]
    for level in enc.down:
        for block in level.block:
            stages += _resnet(block)
        if hasattr(level, "downsample"):
            stages.append(Stage(level.downsample, halo=2, scale=0.5))
    stages += _mid(enc.mid)
    stages.append(Stage(lambda t: model.quant_conv(enc.conv_out(t)), enc.norm_out))
    return stages


def _decoder_stages(model: nn.Module) -> list[Stage | nn.Module]:
    dec = model.decoder
    stages: list[Stage | nn.Module] = [Stage(lambda t: dec.conv_in(model.post_quant_conv(t)))]
    stages += _mid(dec.mid)
    for level in reversed(dec.up):
        for block in level.block:
            stages += _resnet(block)
        if hasattr(level, "upsample"):
            stages.append(Stage(level.upsample, scale=2.0))
    stages.append(Stage(dec.conv_out, dec.norm_out))
    return stages


def _resnet(block: nn.Module) -> list[Stage]:
    shortcut = getattr(block, "nin_shortcut", None)
    return [Stage(block.conv1, block.norm1, keep=True),
            Stage(block.conv2, block.norm2, add=True, shortcut=shortcut)]


def _mid(mid) -> list[Stage | nn.Module]:
    return [*_resnet(mid.block_1), mid.attn_1, *_resnet(mid.block_2)]


def _run(stages, x: torch.Tensor, grid: list[Box], scale: float, window: int | None, device):
    """Run the stages over the grid (latent units; ``scale``: input map / grid); yields (done,
    total) per tile and attention block, returns the last map's data."""
    total = sum(len(grid) if isinstance(s, Stage) else _attention_ticks(grid, window)
                for s in stages)
    done = 0
    current, skip = Map(x.detach()), None
    for stage in stages:
        if isinstance(stage, Stage):
            skip = current if stage.keep else skip
            steps = _stage(stage, current, grid, scale, device, skip if stage.add else None)
        else:  # the mid block's AttnBlock
            steps = _attention(stage, current, grid, scale, window, device)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                current = stop.value
                break
            done += 1
            yield done, total
        if isinstance(stage, Stage):
            scale *= stage.scale
    return current.data


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _stage(stage: Stage, src: Map, grid: list[Box], scale: float, device, residual: Map | None):
    """Apply one stage to every tile of ``src``; returns the output Map with its statistics."""
    data = src.data
    h, w = data.shape[-2:]
    a, b = _norm_affine(stage.norm, src) if stage.norm is not None else (None, None)
    out = sums = None
    for box in grid:
        y0, y1, x0, x1 = (round(v * scale) for v in box)
        cy0, cy1 = max(0, y0 - stage.halo), min(h, y1 + stage.halo)
        cx0, cx1 = max(0, x0 - stage.halo), min(w, x1 + stage.halo)
        t = data[..., cy0:cy1, cx0:cx1].to(device)
        if a is not None:  # GroupNorm with the map's statistics, then swish: two passes
            t = torch.addcmul(b[..., None, None].to(device), t.float(), a[..., None, None].to(device))
            t = F.silu(t, inplace=True) if stage.act else t
        y = stage.body(t)
        s = stage.scale
        oy, ox = round((y0 - cy0) * s), round((x0 - cx0) * s)
        y = y[..., oy : oy + round((y1 - y0) * s), ox : ox + round((x1 - x0) * s)]
        region = (..., slice(round(y0 * s), round(y1 * s)), slice(round(x0 * s), round(x1 * s)))
        if residual is not None:
            r = residual.data[region].to(device)
            y = y + (stage.shortcut(r) if stage.shortcut is not None else r)
        y = y.cpu()
        if out is None:
            out = torch.empty((*y.shape[:2], round(h * s), round(w * s)), dtype=y.dtype)
            sums = torch.zeros(2, *y.shape[:2], dtype=torch.float64)
        out[region] = y
        sums += _channel_sums(y)
        del t
        yield
    return Map(out, sums)


def _attention(block: nn.Module, src: Map, grid: list[Box], scale: float, window: int | None,
               device):
    """x + proj_out(attention(norm(x))) with queries in blocks attending to the keys of a window
    around them; global (exact) where the map fits in the window."""
    data = src.data
    n, c, h, w = data.shape
    a, b = _norm_affine(block.norm, src)
    qkv = torch.empty((n, 3 * c, h, w), dtype=data.dtype)
    for box in grid:  # q, k, v are pointwise: computed per tile, kept for the whole map
        y0, y1, x0, x1 = (round(v * scale) for v in box)
        t = data[..., y0:y1, x0:x1].to(device).float()
        t = torch.addcmul(b[..., None, None].to(device), t, a[..., None, None].to(device))
        qkv[..., y0:y1, x0:x1] = torch.cat([block.q(t), block.k(t), block.v(t)], 1).cpu()
        yield
    out = torch.empty_like(data)
    sums = torch.zeros(2, n, c, dtype=torch.float64)
    for (y0, y1), (ky0, ky1) in _blocks(h, window):
        for (x0, x1), (kx0, kx1) in _blocks(w, window):
            q = qkv[:, :c, y0:y1, x0:x1].to(device)
            k, v = qkv[:, c:, ky0:ky1, kx0:kx1].to(device).split(c, 1)
            att = _attend(*(u.reshape(n, 1, c, -1).transpose(-1, -2) for u in (q, k, v)))
            att = att.transpose(-1, -2).reshape(n, c, y1 - y0, x1 - x0)
            y = (data[..., y0:y1, x0:x1].to(device) + block.proj_out(att)).cpu()
            out[..., y0:y1, x0:x1] = y
            sums += _channel_sums(y)
            yield
    return Map(out, sums)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(c)) v: the fused kernel, except for half precision on the CPU (there
    the kernel AttnBlock uses). A block's matrix is small (window^2 x window^2 / 4 at most), so the
    fused kernel's fallback cannot exhaust memory as it can on a whole latent; in fp32 it is 2.5-3.5x
    faster than query chunks here, equal to 1e-7."""

    if q.device.type == "cpu" and q.dtype != torch.float32:
        return chunked_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def _blocks(size: int, window: int | None) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(query range, key range) along one axis: the whole axis when it fits the window, else query
    blocks of window/2 with the window centred on them, clamped to the axis."""
    if window is None or size <= window:
        return [((0, size), (0, size))]
    step = max(1, window // 2)
    out = []
    for q0 in range(0, size, step):
        q1 = min(q0 + step, size)
        k0 = min(max(0, (q0 + q1) // 2 - window // 2), size - window)
        out.append(((q0, q1), (k0, k0 + window)))
    return out


def keys_per_query(latent_shape: tuple[int, int], window: int | None) -> int:
    """How many keys each query attends to on a latent of this shape."""
    h, w = latent_shape
    return (h if window is None else min(h, window)) * (w if window is None else min(w, window))


def _attention_ticks(grid: list[Box], window: int | None) -> int:
    """Progress ticks of one attention stage: the q/k/v tiles plus the query blocks."""
    h, w = grid[-1][1], grid[-1][3]  # the latent grid's extent
    return len(grid) + len(_blocks(h, window)) * len(_blocks(w, window))


def _channel_sums(y: torch.Tensor) -> torch.Tensor:
    """Per-(sample, channel) sum and sum of squares, float64, from one fused float32 pass."""
    var, mean = torch.var_mean(y.float(), dim=(-2, -1), correction=0)
    n, mean = y.shape[-2] * y.shape[-1], mean.double()
    return torch.stack([n * mean, n * (var.double() + mean * mean)])


def _norm_affine(norm: nn.GroupNorm, src: Map) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) scale and shift equal to ``norm`` with the whole map's statistics."""
    sums = src.sums if src.sums is not None else _channel_sums(src.data)
    n, c = sums.shape[1:]
    g = norm.num_groups
    count = src.data.shape[-2] * src.data.shape[-1] * (c // g)
    group = sums.reshape(2, n, g, c // g).sum(-1) / count  # E[x], E[x^2] per group
    mean, var = group[0], (group[1] - group[0] ** 2).clamp_min(0)
    inv = torch.rsqrt(var + norm.eps).repeat_interleave(c // g, dim=1)
    weight = norm.weight.detach().double().cpu() if norm.affine else 1.0
    bias = norm.bias.detach().double().cpu() if norm.affine else 0.0
    scale = inv * weight
    shift = bias - mean.repeat_interleave(c // g, dim=1) * scale
    return scale.float(), shift.float()
