"""A fastMRI-style U-Net for image-domain reconstruction (post-processing of zero-filled images).

The layout follows the U-Net baseline of the fastMRI challenge (Ronneberger et al. with
instance normalisation): every resolution level has a block of two 3x3 convolutions (no bias),
each followed by instance normalisation, LeakyReLU(0.2) and channel dropout. The encoder halves
the resolution with 2x2 average pooling and doubles the channels; the decoder upsamples with a
stride-2 transposed convolution, concatenates the matching encoder features and convolves them
back down. A final 1x1 convolution maps to the output channels.

mri-audit feeds it ``(N, 1, h, w)`` instance-normalised zero-filled magnitudes (its
``mri_audit_input`` is ``"image"``) and de-normalises the output. The class is TorchScript
friendly (``torch.jit.script(UNet())`` works and keeps ``mri_audit_input``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


def _conv_block(in_chans: int, out_chans: int, drop_prob: float) -> nn.Sequential:
    """Two rounds of 3x3 conv (no bias) -> InstanceNorm -> LeakyReLU(0.2) -> Dropout2d."""
    layers: list[nn.Module] = []
    for chans in (in_chans, out_chans):
        layers += [
            nn.Conv2d(chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Dropout2d(drop_prob),
        ]
    return nn.Sequential(*layers)


def _up_block(in_chans: int, out_chans: int) -> nn.Sequential:
    """Stride-2 transposed conv (doubles the resolution) -> InstanceNorm -> LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_chans, out_chans, kernel_size=2, stride=2, bias=False),
        nn.InstanceNorm2d(out_chans),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
    )


class UNet(nn.Module):
    """fastMRI-style U-Net mapping an image to an image of the same size.

    Args:
        in_chans: input channels (1 for a magnitude image).
        out_chans: output channels.
        chans: channels of the first level; level ``i`` has ``chans * 2**i``.
        num_pool_layers: number of down-sampling (and up-sampling) steps.
        drop_prob: ``Dropout2d`` probability inside the conv blocks.

    Shape:
        image: ``(N, in_chans, H, W)``; returns ``(N, out_chans, H, W)``. Any ``H, W`` works:
        where pooling dropped an odd row or column, the upsampled features are reflect-padded
        back to the size of the skip connection.
    """

    mri_audit_input = "image"

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 1,
        chans: int = 16,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if num_pool_layers < 1 or chans < 1:
            raise ValueError(f"need chans >= 1 and num_pool_layers >= 1, got {chans}, "
                             f"{num_pool_layers}")  # fmt: skip
        self.in_chans, self.out_chans = in_chans, out_chans
        self.chans, self.num_pool_layers, self.drop_prob = chans, num_pool_layers, drop_prob
        self.mri_audit_input = "image"  # an instance attribute survives torch.jit.script

        widths = [chans * 2**i for i in range(num_pool_layers)]
        self.down = nn.ModuleList()
        prev = in_chans
        for width in widths:
            self.down.append(_conv_block(prev, width, drop_prob))
            prev = width
        self.bottom = _conv_block(prev, prev * 2, drop_prob)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        prev *= 2
        for width in reversed(widths):
            self.up.append(_up_block(prev, width))
            self.merge.append(_conv_block(2 * width, width, drop_prob))
            prev = width
        self.head = nn.Conv2d(prev, out_chans, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Run the U-Net.

        Args:
            image: input images.

        Returns:
            Output images of the input's spatial size.

        Shape:
            image: ``(N, in_chans, H, W)``; returns ``(N, out_chans, H, W)``.
        """
        skips: list[torch.Tensor] = []
        x = image
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        x = self.bottom(x)
        for up, merge in zip(self.up, self.merge):  # noqa: B905 (TorchScript has no strict=)
            skip = skips.pop()
            x = up(x)
            pad_w = skip.shape[-1] - x.shape[-1]
            pad_h = skip.shape[-2] - x.shape[-2]
            if pad_w != 0 or pad_h != 0:
                x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
            x = merge(torch.cat([x, skip], dim=1))
        return self.head(x)
