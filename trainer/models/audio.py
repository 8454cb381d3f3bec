"""2D-CNN audio trunk of the AVSA paper: 9 conv layers over (frequency, time) feature maps.

7×7/2 stem, then 4 basic blocks 64→64, 64→128/2, 128→256/2, 256→512 (2 convs each), global max pool.
The input channels are the feature channels C: 4 (FOA log-mel), 7 (log-mel + intensity vectors),
3 (stereo log-mels + GCC-PHAT), 1 (mono).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainer.models.blocks import ResidualBlock, init_conv_trunk, projection_shortcut, residual_stages


def basic_block_2d(c_in: int, c_out: int, stride: int) -> ResidualBlock:
    """Two 3×3 convs with BN, the first strided."""
    branch = nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    )
    return ResidualBlock(branch, projection_shortcut(nn.Conv2d, nn.BatchNorm2d, c_in, c_out, stride))


class AudioEncoder(nn.Module):
    """Audio trunk: features ``[N, C, F, T]`` (C channels, F mel bins, T frames) → ``[N, widths[-1]]``."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = residual_stages(
            basic_block_2d, widths[0], widths, depths=(1, 1, 1, 1), strides=(1, 2, 2, 1)
        )
        self.in_channels = in_channels
        self.out_dim = widths[-1]
        init_conv_trunk(self)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # Max over (frequency, time): the paper's global max pool.
        return self.stages(self.stem(audio)).amax(dim=(2, 3))
