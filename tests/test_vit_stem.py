"""ViT_C's convolutional stem follows Xiao et al. 2021 ("Early convolutions help transformers see
better"): their channels per model width, stride 2 where the channels grow, then a 1x1 conv."""

import pytest
import torch
from torch import nn

from hear_abt.encoders import create_encoder_for
from hear_abt.encoders.vit import ConvStem, stem_strides

# Xiao et al.'s ViTC-1GF / -4GF / -18GF stems (widths 192 / 384 / 768).
XIAO = {
    "vitc_t": (192, [24, 48, 96, 192]),
    "vitc_s": (384, [48, 96, 192, 384]),
    "vitc_b": (768, [64, 128, 128, 256, 256, 512]),
}


def _convs(stem: nn.Module) -> list[nn.Conv2d]:
    return [m for m in stem.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", sorted(XIAO))
def test_stem_channels_and_strides_follow_xiao_for_16x8_patches(name):
    dim, channels = XIAO[name]
    vit = create_encoder_for(name, {"depth": 1}, 64, 96)
    convs = _convs(vit.patch_embed)
    assert [c.out_channels for c in convs] == channels + [dim]
    assert all(c.kernel_size == (3, 3) for c in convs[:-1]) and convs[-1].kernel_size == (1, 1)
    strides = [c.stride for c in convs[:-1]]
    # Xiao's stride-2 convs: the first and every one that grows the channels (all four for -T/-S;
    # 2, 2, 1, 2, 1, 2 for -B). Frequency (16) uses all of them, time (8) the first three.
    grows = [i == 0 or channels[i] > channels[i - 1] for i in range(len(channels))]
    assert [s[0] == 2 for s in strides] == grows
    time_halvings = [i for i, s in enumerate(strides) if s[1] == 2]
    assert time_halvings == [i for i, g in enumerate(grows) if g][:3]
    assert vit.patch_embed(torch.zeros(2, 1, 64, 96)).shape == (2, dim, 4, 12)


def test_other_patch_shapes_and_widths():
    # 64 x 2 patches (the masking ablation, C.3) on the -B stem: six halvings in frequency, one in time.
    assert stem_strides((64, 128, 128, 256, 256, 512), (64, 2)) == [(2, 2)] + [(2, 1)] * 5
    with pytest.raises(ValueError, match="stride-2 convs"):
        stem_strides((24, 48, 96, 192), (64, 2))
    with pytest.raises(ValueError, match="powers of two"):
        stem_strides((24, 48, 96, 192), (12, 8))
    # A width outside Xiao's table follows the -1GF/-4GF pattern dim/8, dim/4, dim/2, dim.
    assert [c.out_channels for c in _convs(ConvStem((16, 8), 64))] == [8, 16, 32, 64, 64]
    assert [c.out_channels for c in _convs(ConvStem((16, 8), 64, channels=(4, 8, 8, 16, 32)))][-2:] == [
        32,
        64,
    ]
