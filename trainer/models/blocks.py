"""Residual building blocks shared by the video (3D) and audio (2D) trunks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BlockFactory = Callable[[int, int, int], nn.Module]  # (in channels, out channels, stride) -> block


class ResidualBlock(nn.Module):
    """``relu(branch(x) + shortcut(x))``, the ResNet basic block for any number of spatial dims."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


def projection_shortcut(
    conv: type[nn.Conv2d | nn.Conv3d],
    norm: type[nn.BatchNorm2d | nn.BatchNorm3d],
    c_in: int,
    c_out: int,
    stride: int,
) -> nn.Module:
    """Identity when the block keeps the shape, else a strided 1×1 conv + BN (ResNet option B)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(conv(c_in, c_out, kernel_size=1, stride=stride, bias=False), norm(c_out))


def residual_stages(
    block: BlockFactory,
    c_in: int,
    widths: Sequence[int],
    depths: Sequence[int],
    strides: Sequence[int],
) -> nn.Sequential:
    """One ``nn.Sequential`` per stage; only a stage's first block changes width and stride."""
    stages = []
    for c_out, depth, stride in zip(widths, depths, strides, strict=True):
        blocks = []
        for i in range(depth):
            blocks.append(block(c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages)


def init_conv_trunk(module: nn.Module) -> None:
    """He init (fan-out) for convs and unit/zero BN, as torchvision's ResNets do."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
