"""Band-limited resampling in torch alone (torchaudio cannot import on CPU torch; shared/DESIGN.md).

Polyphase windowed-sinc interpolation: for rates in the ratio up/down (reduced by their gcd), output
sample j = m·up + p lies at input time m·down + p·down/up, so each of the ``up`` phases p is one strided
convolution of the input with a sinc kernel shifted by p·down/up. The sinc cuts off at ``rolloff`` of the
lower Nyquist frequency; a squared-cosine window over ±``zeros`` zero crossings bounds the kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def resample(x: Tensor, orig_hz: int, new_hz: int, zeros: int = 24, rolloff: float = 0.95) -> Tensor:
    """Resample ``x`` ``[..., N]`` (samples at ``orig_hz``) to ``new_hz``: ``[..., ceil(N·new/orig)]``.

    Both rates are integers in Hz. The first output sample is at the first input sample's time; the
    signal is taken as zero outside the input (the edges see ~``zeros`` samples of ramp).
    """
    if orig_hz <= 0 or new_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_hz} and {new_hz} Hz")
    if orig_hz == new_hz:
        return x
    gcd = math.gcd(orig_hz, new_hz)
    up, down = new_hz // gcd, orig_hz // gcd
    cutoff = rolloff * min(1.0, up / down)  # as a fraction of the input's Nyquist frequency
    width = math.ceil(zeros / cutoff)  # input samples on each side of an output sample
    taps = torch.arange(-width, width + down, dtype=torch.float64)
    offsets = taps[None, :] - torch.arange(up, dtype=torch.float64)[:, None] * down / up  # [up, taps]
    window = torch.where(
        offsets.abs() <= width, torch.cos(math.pi * offsets / (2 * width)).square(), torch.zeros(())
    )
    kernel = (cutoff * torch.sinc(cutoff * offsets) * window).to(dtype=x.dtype, device=x.device)
    n = x.shape[-1]
    flat = F.pad(x.reshape(-1, 1, n), (width, width + down))
    phases = F.conv1d(flat, kernel[:, None, :], stride=down)  # [batch, up, frames]
    out = phases.transpose(1, 2).reshape(flat.shape[0], -1)  # interleave: j = m·up + p
    length = math.ceil(n * up / down)
    return out[:, :length].reshape(*x.shape[:-1], length)
