"""The MedVAE KL autoencoder, one implementation for 2D and 3D, with the official module and key names.

Reading order: building blocks (norm, resnet block, attention, resampling), then Encoder, Decoder and
the AutoencoderKL that ties them to the posterior, the stage-2 projection head and the public
encode / project / decode interface. Our starters may add a parameter-free interpolation shortcut
(latent += downsampled image, image += upsampled latent; the idea of DC-AE's residual autoencoding):
the network then learns only what interpolation misses, and starts equal to it.
Tensors are (B, C, H, W) or (B, C, D, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .refiner import LatentRefiner

LOGVAR_RANGE = (-30.0, 20.0)
PROJECTION_WIDTH = 64


def conv_nd(spatial_dims: int, *args, **kwargs) -> nn.Module:
    """nn.Conv2d or nn.Conv3d."""
    return (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(*args, **kwargs)


OFFICIAL_NORM_GROUPS = 32


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x). fp32 keeps the official code's two kernels (bit-identical results); lower
    precisions use the one-pass SiLU kernel, in place when no gradient is recorded (x is always a
    fresh GroupNorm output here): a third less time over GroupNorm + swish in bf16 on a CPU."""
    if x.dtype == torch.float32:
        return x * torch.sigmoid(x)
    return F.silu(x, inplace=not torch.is_grad_enabled())


def residual(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x + h, added into h (a fresh convolution output; autograd does not need it) when the dtypes
    agree: the same sum without allocating a third feature map."""
    return h.add_(x) if h.dtype == x.dtype else x + h


class ResnetBlock(nn.Module):
    """Two norm-swish-conv stages plus a residual (1x1 ``nin_shortcut`` where channels change)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = conv_nd(spatial_dims, in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = conv_nd(spatial_dims, out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = conv_nd(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return residual(x, h)


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions.

    Same result as the naive softmax(q k^T / sqrt(c)) v, in bounded memory: query blocks on CPU,
    the fused scaled-dot-product kernel on GPUs.
    """

    def __init__(self, spatial_dims: int, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = conv_nd(spatial_dims, channels, channels, 1)
        self.k = conv_nd(spatial_dims, channels, channels, 1)
        self.v = conv_nd(spatial_dims, channels, channels, 1)
        self.proj_out = conv_nd(spatial_dims, channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c = x.shape[:2]
        q, k, v = (
            layer(h).reshape(b, 1, c, -1).transpose(-1, -2) for layer in (self.q, self.k, self.v)
        )
        if q.device.type == "cpu":
            h = chunked_attention(q, k, v)
        else:
            h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(x.shape)
        return residual(x, self.proj_out(h))


ATTENTION_CHUNK_BYTES = 256 * 2**20


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(c)) v over blocks of queries, in memory bounded by ATTENTION_CHUNK_BYTES.

    On CPU the fused kernel may fall back to materialising the whole N x N matrix (17 GB at
    1024^2, f=4) and is about twice as slow in bf16 for the head size c=512 used here.
    """
    n, scale = q.shape[-2], q.shape[-1] ** -0.5
    rows = max(1, ATTENTION_CHUNK_BYTES // (k.shape[-2] * 4))
    kt = k.transpose(-1, -2)
    exact = q.dtype == torch.float32  # fp32: the official order (scale the scores), bit-identical
    out = []
    for i in range(0, n, rows):
        qi = q[..., i : i + rows, :]
        scores = qi @ kt * scale if exact else (qi * scale) @ kt  # else: scale c, not n, values
        out.append(torch.softmax(scores, dim=-1).to(v.dtype) @ v)
    return torch.cat(out, dim=-2)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one voxel at the end of every spatial axis."""

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        self.pad = (0, 1) * spatial_dims
        self.conv = conv_nd(spatial_dims, channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (unused, kept for the key layout)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()


class Mid(nn.Module):
    """Middle of encoder and decoder: ResnetBlock, attention, ResnetBlock."""

    def __init__(self, spatial_dims: int, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(spatial_dims, channels, channels, groups)
        self.attn_1 = AttnBlock(spatial_dims, channels, groups)
        self.block_2 = ResnetBlock(spatial_dims, channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image -> 2*z_channels moments at 1/2^(levels-1) resolution."""

    def __init__(self, spatial_dims, in_channels, ch, ch_mult, num_res_blocks, z_channels, groups):
        super().__init__()
        self.conv_in = conv_nd(spatial_dims, in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = ch
        for i, mult in enumerate(ch_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(spatial_dims, width, ch * mult, groups))
                width = ch * mult
            level = Level(blocks)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(spatial_dims, width)
            self.down.append(level)
        self.mid = Mid(spatial_dims, width, groups)
        self.norm_out = group_norm(width, groups)
        self.conv_out = conv_nd(spatial_dims, width, 2 * z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """z_channels latent -> image; ``up`` is stored finest-first as in the official layout."""

    def __init__(self, spatial_dims, out_channels, ch, ch_mult, num_res_blocks, z_channels, groups):
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = conv_nd(spatial_dims, z_channels, width, 3, padding=1)
        self.mid = Mid(spatial_dims, width, groups)
        levels: list[Level] = []
        for i in reversed(range(len(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(spatial_dims, width, ch * ch_mult[i], groups))
                width = ch * ch_mult[i]
            level = Level(blocks)
            if i != 0:
                level.upsample = Upsample(spatial_dims, width)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(width, groups)
        self.conv_out = conv_nd(spatial_dims, width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The interpolation baselines' downsampling: 2D antialiased bicubic, 3D block mean."""
    if x.dim() == 4:
        return F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    return F.avg_pool3d(x, factor)


def cubic_upsample(z: torch.Tensor, factor: int) -> torch.Tensor:
    """Cubic-convolution upsampling by ``factor`` (pixel centres as align_corners=False); 3D as a
    bicubic pass over (H, W) and one over (D, 1), which is separable tricubic."""
    if z.dim() == 4:
        return F.interpolate(z, scale_factor=factor, mode="bicubic", align_corners=False)
    b, c, d, h, w = z.shape
    hw = F.interpolate(z.reshape(b, c * d, h, w), scale_factor=factor, mode="bicubic",
                       align_corners=False)
    dz = F.interpolate(hw.reshape(b * c, 1, d, -1), size=(d * factor, h * w * factor**2),
                       mode="bicubic", align_corners=False)
    return dz.reshape(b, c, d * factor, h * factor, w * factor)


def with_shortcut(h: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
    """h plus the interpolation shortcut, if the model has one (summed in float32)."""
    return h if shortcut is None else (h.float() + shortcut).to(h.dtype)


class AutoencoderKL(nn.Module):
    """KL autoencoder with the optional stage-2 projection head (``channel_ds`` + ``channel_proj``).

    ``encode`` returns the posterior mean (or a sample), ``project`` the stage-2 latent, ``decode``
    always starts from the stage-1 latent z.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 1,
        projection: bool = True,
        norm_groups: int = OFFICIAL_NORM_GROUPS,
        shortcut: bool = False,
        refiner_steps: int = 0,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        out_channels = in_channels if out_channels is None else out_channels
        self.config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "ch": ch,
            "ch_mult": list(ch_mult),
            "num_res_blocks": num_res_blocks,
            "z_channels": z_channels,
            "projection": projection,
            "norm_groups": norm_groups,
            "shortcut": shortcut,
            "refiner_steps": refiner_steps,
        }
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_channels = z_channels
        self.factor = 2 ** (len(ch_mult) - 1)
        self.shortcut = shortcut
        args = (ch, ch_mult, num_res_blocks, z_channels, norm_groups)
        self.encoder = Encoder(spatial_dims, in_channels, *args)
        self.decoder = Decoder(spatial_dims, out_channels, *args)
        self.quant_conv = conv_nd(spatial_dims, 2 * z_channels, 2 * z_channels, 1)
        self.post_quant_conv = conv_nd(spatial_dims, z_channels, z_channels, 1)
        if projection:
            self.channel_ds = nn.Sequential(
                conv_nd(spatial_dims, z_channels, PROJECTION_WIDTH, 1),
                nn.ReLU(),
                conv_nd(spatial_dims, PROJECTION_WIDTH, PROJECTION_WIDTH, 3, padding=1),
                nn.ReLU(),
                conv_nd(spatial_dims, PROJECTION_WIDTH, z_channels, 1),
            )
            self.channel_proj = conv_nd(spatial_dims, z_channels, z_channels, 1)
        if shortcut:
            self.start_at_interpolation()
        if refiner_steps:
            self.refiner = LatentRefiner(spatial_dims, z_channels, self.factor, refiner_steps)

    def start_at_interpolation(self) -> None:
        """Zero the layers that write the latent mean and the image, so that a shortcut model
        reconstructs exactly like its interpolation baseline until training moves it away."""
        z = self.latent_channels
        with torch.no_grad():
            self.quant_conv.weight[:z].zero_()
            self.quant_conv.bias[:z].zero_()
            self.decoder.conv_out.weight.zero_()
            self.decoder.conv_out.bias.zero_()

    def latent_shortcut(self, x: torch.Tensor) -> torch.Tensor | None:
        """What a shortcut model adds to the latent mean: the image's channel mean downsampled by
        the factor as its interpolation baseline does (2D antialiased bicubic, 3D block mean)."""
        if not self.shortcut:
            return None
        return downsample(x.float().mean(1, keepdim=True), self.factor).expand(
            -1, self.latent_channels, *([-1] * self.spatial_dims))

    def image_shortcut(self, z: torch.Tensor) -> torch.Tensor | None:
        """What a shortcut model adds to the decoded image: the latent's channel mean upsampled by
        the factor with cubic convolution (separable in 3D)."""
        if not self.shortcut:
            return None
        return cubic_upsample(z.float().mean(1, keepdim=True), self.factor).expand(
            -1, self.out_channels, *([-1] * self.spatial_dims))

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and clamped log-variance of z given x."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return with_shortcut(mean, self.latent_shortcut(x)), logvar.clamp(*LOGVAR_RANGE)

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stage-1 latent z: the posterior mean (refined, if the model has a learned refiner, to
        fit the voxels where ``weight`` is 1), or a sample around it drawn with ``generator``."""
        mean, logvar = self.moments(x)
        return self.posterior(self.refine(x, mean, weight), logvar, sample, generator)

    def refine(self, x: torch.Tensor, mean: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean after the learned refiner's steps (models/refiner.py); unchanged
        for models without one."""
        if not hasattr(self, "refiner"):
            return mean
        return self.refiner(self.decode, x, mean, weight)

    @staticmethod
    def posterior(
        mean: torch.Tensor, logvar: torch.Tensor, sample: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The posterior mean, or a sample drawn with ``generator`` (noise made on the CPU)."""
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu")
        return mean + torch.exp(0.5 * logvar) * noise.to(mean.device)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Stage-2 latent channel_proj(channel_ds(z) + z); identity for models without the head."""
        if not hasattr(self, "channel_proj"):
            return z
        return self.channel_proj(self.channel_ds(z) + z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image from a stage-1 latent z."""
        return with_shortcut(self.decoder(self.post_quant_conv(z)), self.image_shortcut(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction."""
        return self.decode(self.encode(x))
