"""ViT and ViT_C encoders for log-mel spectrograms.

ViT_C follows Xiao et al. 2021 ("Early convolutions help transformers see better"): the patchify
convolution is replaced by a stack of 3x3 conv/BN/ReLU layers with Xiao et al.'s channels for each
model width and a final 1x1 conv, and one transformer block is removed to keep the compute
comparable. Patches of 16 (frequency) x 8 (time) frames turn a 64 x 96 input into 4 x 12 tokens.
A learnable [CLS] token is prepended, fixed 2-D sinusoidal positional encodings are added to the
patch tokens, and the output is the [CLS] token after the final LayerNorm (paper, section 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder
from .registry import register_encoder

# (width, depth, heads) of the standard sizes.
VIT_SIZES = {"T": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12)}


def sincos_2d(grid_f: int, grid_t: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sinusoidal encodings (grid_f * grid_t, dim): half the channels per axis."""
    if dim % 4:
        raise ValueError(f"embedding width must be divisible by 4, got {dim}")
    quarter = dim // 4
    # Always computed on the CPU (then moved with the module), also inside a meta-device build.
    cpu = torch.device("cpu")
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64, device=cpu) / quarter))
    f, t = torch.meshgrid(torch.arange(grid_f, device=cpu), torch.arange(grid_t, device=cpu), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(f), encode(t)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# Xiao et al. 2021, ViT_C model designs: the 3x3 conv channels of the ViT_C stems, by model width.
# ViTC-1GF/-4GF (ViT-T/-S widths) use four stride-2 convs; ViTC-18GF/-36GF (ViT-B/-L widths) a deeper
# stem whose convs are stride 2 where the channels grow and stride 1 where they repeat.
XIAO_STEM_CHANNELS = {
    192: (24, 48, 96, 192),
    384: (48, 96, 192, 384),
    768: (64, 128, 128, 256, 256, 512),
    1024: (64, 128, 128, 256, 256, 512),
}


def stem_channels_for(dim: int) -> tuple[int, ...]:
    """Xiao et al.'s stem channels for a ViT of width ``dim``; other widths follow the -1GF/-4GF
    pattern (dim/8, dim/4, dim/2, dim)."""
    if dim in XIAO_STEM_CHANNELS:
        return XIAO_STEM_CHANNELS[dim]
    return tuple(max(dim // k, 1) for k in (8, 4, 2, 1))


def stem_strides(channels: tuple[int, ...], patch: tuple[int, int]) -> list[tuple[int, int]]:
    """Per-conv (frequency, time) strides that downsample by ``patch`` on each axis.

    Xiao et al.'s stride-2 convs are the first one and those that grow the channels. An axis that
    needs k halvings takes them at the first k of those convs (then, if it needs more, at the
    remaining convs in order): for 16 x 8 patches the frequency axis uses all four stride-2 convs
    and the time axis the first three, keeping full time resolution in the last one.
    """
    grows = [i for i, c in enumerate(channels) if i == 0 or c > channels[i - 1]]
    order = grows + [i for i in range(len(channels)) if i not in grows]
    per_axis = []
    for side in patch:
        if side < 1 or side & (side - 1):
            raise ValueError(f"ViT_C patch sides must be powers of two, got {patch}")
        halvings = side.bit_length() - 1
        if halvings > len(channels):
            raise ValueError(
                f"a patch side of {side} needs {halvings} stride-2 convs, but the stem {channels} has "
                f"{len(channels)}; pass stem_channels with more entries"
            )
        chosen = set(order[:halvings])
        per_axis.append([2 if i in chosen else 1 for i in range(len(channels))])
    return list(zip(*per_axis))


class ConvStem(nn.Module):
    """Xiao et al.'s convolutional stem: 3x3 conv/BN/ReLU layers down to the patch grid, then a
    1x1 conv to the transformer width."""

    def __init__(self, patch: tuple[int, int], dim: int, channels: tuple[int, ...] | None = None):
        super().__init__()
        channels = tuple(channels) if channels else stem_channels_for(dim)
        layers: list[nn.Module] = []
        c_in = 1
        for c_out, stride in zip(channels, stem_strides(channels, tuple(patch))):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, dim, 1))
        self.channels = channels
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViT(Encoder):
    KWARG_RANGES = {
        "dim": (4, 8192),
        "depth": (0, 256),
        "heads": (1, 256),
        "patch": (1, 1024),
        "input_size": (1, 65536),
        "stem_channels": (1, 8192),
    }

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        patch: tuple[int, int] = (16, 8),
        input_size: tuple[int, int] = (64, 96),
        conv_stem: bool = True,
        stem_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        patch = tuple(patch)
        input_size = tuple(input_size)
        if input_size[0] % patch[0] or input_size[1] % patch[1]:
            raise ValueError(f"input {input_size} not divisible into {patch} patches")
        self.patch = patch
        self.input_size = input_size
        self.grid = (input_size[0] // patch[0], input_size[1] // patch[1])
        self.embed_dim = dim
        self.input_frames = input_size[1]  # the positional grid fixes the input length
        self.num_patches = self.grid[0] * self.grid[1]
        if conv_stem:
            self.patch_embed: nn.Module = ConvStem(patch, dim, stem_channels)
        else:
            self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(*self.grid, dim)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # A shape-only build on the meta device (config and weight checks) needs no initial values; and
        # on meta, normal_ runs through torch's Python references, which import torch._dynamo and
        # triton: slow, and a segfault in a process that imported TensorFlow first (hear-validator).
        if not self.cls_token.is_meta:
            nn.init.normal_(self.cls_token, std=0.02)
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, F, T) -> (B, dim) [CLS] output.

        ``keep`` (B, K) optionally lists the patch indices to keep (view masking during training).
        """
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"ViT expects (B, 1, {self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim), frequency-major
        tokens = tokens + self.pos_embed.to(tokens.dtype)
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        h = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)[:, 0]


def _make(size: str, conv_stem: bool, n_mels: int = 64, window_frames: int = 96, **kwargs) -> ViT:
    dim, depth, heads = VIT_SIZES[size]
    kwargs.setdefault("input_size", (n_mels, window_frames))
    # Xiao et al. drop one transformer block from ViT_C to pay for the conv stem.
    depth = kwargs.pop("depth", depth - 1 if conv_stem else depth)
    return ViT(
        dim=kwargs.pop("dim", dim),
        depth=depth,
        heads=kwargs.pop("heads", heads),
        conv_stem=conv_stem,
        **kwargs,
    )


for _size in VIT_SIZES:
    register_encoder(f"vitc_{_size.lower()}", ViT)(lambda _s=_size, **kw: _make(_s, True, **kw))
    register_encoder(f"vit_{_size.lower()}", ViT)(lambda _s=_size, **kw: _make(_s, False, **kw))
