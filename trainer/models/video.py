"""R(2+1)D-18 video trunk (Tran et al., CVPR 2018), as configured in the AVSA paper.

Stem: a full 3D conv 3×7×7, stride (1,2,2), 64 channels (the AVSA reference code; torchvision
factorises its stem instead). Then 4 stages of basic blocks whose 3×3×3 convs are factorised into a
spatial 1×3×3 and a temporal 3×1×1 conv. Stages 2–4 halve time, height and width. Global max pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainer.models.blocks import ResidualBlock, init_conv_trunk, projection_shortcut, residual_stages


def r2plus1d_mid_channels(c_in: int, c_out: int) -> int:
    """Width between the spatial and temporal conv, chosen so that the (2+1)D pair has the
    parameter count of the full 3×3×3 conv it replaces (Tran et al. eq. 1; torchvision's formula)."""
    return (c_in * c_out * 3 * 3 * 3) // (c_in * 3 * 3 + 3 * c_out)


def conv2plus1d(c_in: int, c_out: int, c_mid: int, stride: int) -> nn.Sequential:
    """1×3×3 conv (spatial stride) → BN → ReLU → 3×1×1 conv (temporal stride)."""
    return nn.Sequential(
        nn.Conv3d(c_in, c_mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(c_mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_mid, c_out, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
    )


def r2plus1d_block(c_in: int, c_out: int, stride: int) -> ResidualBlock:
    """Basic block of two (2+1)D convs. Like torchvision, both convs share one mid width computed
    from the block's (c_in, c_out), so layer shapes match torchvision's r2plus1d_18 stages."""
    c_mid = r2plus1d_mid_channels(c_in, c_out)
    branch = nn.Sequential(
        conv2plus1d(c_in, c_out, c_mid, stride),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        conv2plus1d(c_out, c_out, c_mid, 1),
        nn.BatchNorm3d(c_out),
    )
    return ResidualBlock(branch, projection_shortcut(nn.Conv3d, nn.BatchNorm3d, c_in, c_out, stride))


class VideoEncoder(nn.Module):
    """R(2+1)D trunk: clips ``[N, 3, T, H, W]`` → features ``[N, widths[-1]]``.

    The paper preset is ``widths=(64, 128, 256, 512), depths=(2, 2, 2, 2)`` (R(2+1)D-18).
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = residual_stages(r2plus1d_block, widths[0], widths, depths, strides=(1, 2, 2, 2))
        self.out_dim = widths[-1]
        init_conv_trunk(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # Max over (time, height, width): the paper's global max pool.
        return self.stages(self.stem(video)).amax(dim=(2, 3, 4))
