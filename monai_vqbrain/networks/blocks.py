"""Building blocks of the VQ-VAE: residual units and strided down/up-sampling, for 2D or 3D."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn


def check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


class ResidualLayer(nn.Module):
    """Pre-activation residual layer ``x + conv1x1(act(conv3x3(act(x))))`` of the original VQ-VAE.

    The bottleneck (``res_channels`` < ``channels``) keeps the cost of the many residual layers at the
    coarsest resolution low, which is where most of the VQ-VAE's compute is spent.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: input and output channels.
        res_channels: channels inside the residual branch.
    """

    def __init__(self, spatial_dims: int, channels: int, res_channels: int) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        self.branch = nn.Sequential(
            nn.ReLU(),
            conv(channels, res_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            conv(res_channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ResidualStack(nn.Sequential):
    """``num_layers`` residual layers followed by a ReLU.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: input and output channels.
        res_channels: channels inside each residual branch.
        num_layers: number of residual layers (0 gives only the activation).
    """

    def __init__(self, spatial_dims: int, channels: int, res_channels: int, num_layers: int) -> None:
        super().__init__(*(ResidualLayer(spatial_dims, channels, res_channels) for _ in range(num_layers)), nn.ReLU())


class Downsample(nn.Sequential):
    """Halve every spatial size with a 4-wide stride-2 convolution, then ReLU.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        check_spatial_dims(spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        super().__init__(conv(in_channels, out_channels, kernel_size=4, stride=2, padding=1), nn.ReLU())


class Upsample(nn.Sequential):
    """Double every spatial size with a 4-wide stride-2 transposed convolution, optionally followed by ReLU.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        act: whether to apply ReLU after the convolution (not on the last layer).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, act: bool = True) -> None:
        check_spatial_dims(spatial_dims)
        conv_t = Conv[Conv.CONVTRANS, spatial_dims]
        layers: list[nn.Module] = [conv_t(in_channels, out_channels, kernel_size=4, stride=2, padding=1)]
        if act:
            layers.append(nn.ReLU())
        super().__init__(*layers)
