"""ViT and ViT_C encoders for log-mel spectrograms.

ViT_C follows Xiao et al. 2021 ("Early convolutions help transformers see better"): the patchify
convolution is replaced by a stack of stride-2 3x3 conv/BN/ReLU layers and a final 1x1 conv, and one
transformer block is removed to keep the compute comparable. Patches of 16 (frequency) x 8 (time)
frames turn a 64 x 96 input into 4 x 12 tokens. A learnable [CLS] token is prepended, fixed 2-D
sinusoidal positional encodings are added to the patch tokens, and the output is the [CLS] token
after the final LayerNorm (paper, section 4).
"""

from __future__ import annotations

import math

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
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    f, t = torch.meshgrid(torch.arange(grid_f), torch.arange(grid_t), indexing="ij")

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


class ConvStem(nn.Module):
    """Stride-2 3x3 conv/BN/ReLU layers down to the patch grid, then a 1x1 conv to the width."""

    def __init__(self, patch: tuple[int, int], dim: int):
        super().__init__()
        pf, pt = patch
        if pf & (pf - 1) or pt & (pt - 1):
            raise ValueError(f"ViT_C patch sides must be powers of two, got {patch}")
        n_layers = max(int(math.log2(pf)), int(math.log2(pt)))
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(n_layers):
            stride = (2 if (1 << i) < pf else 1, 2 if (1 << i) < pt else 1)
            c_out = max(dim // (2 ** (n_layers - 1 - i)) // 2, 16)
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViT(Encoder):
    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        patch: tuple[int, int] = (16, 8),
        input_size: tuple[int, int] = (64, 96),
        conv_stem: bool = True,
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
            self.patch_embed: nn.Module = ConvStem(patch, dim)
        else:
            self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self.register_buffer("pos_embed", sincos_2d(*self.grid, dim)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
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
    register_encoder(f"vitc_{_size.lower()}")(lambda _s=_size, **kw: _make(_s, True, **kw))
    register_encoder(f"vit_{_size.lower()}")(lambda _s=_size, **kw: _make(_s, False, **kw))
