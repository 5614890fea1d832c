"""One gated layer of the Gated PixelCNN (van den Oord et al. 2016), over whole maps or at a single position."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` over the two channel halves ``a, b`` of ``x``."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def conv_at_position(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` at a single position, on its flattened input window ``(B, C * kernel area)``, as a matrix product.

    At one position a convolution's dispatch costs far more than its arithmetic; the result is the same up to
    floating point rounding.
    """
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class GatedPixelCNNLayer(nn.Module):
    """One gated layer of a Gated PixelCNN, with a vertical and a horizontal stack.

    With ``p = kernel_size // 2``, the vertical stack is a ``(p + 1) x kernel_size`` convolution over the rows
    ``r - p .. r`` (padded on top, so nothing below is seen); its pre-activation features reach the horizontal stack
    through a 1x1 convolution *shifted down one row*, so position ``(r, c)`` of the horizontal stack only receives
    rows ``< r`` from it. The horizontal stack is a ``1 x (p + 1)`` convolution over the columns ``c - p .. c``
    ("mask B"), or ``c - p - 1 .. c - 1`` for the first layer ("mask A": the current code must not see itself).

    Args:
        channels: number of feature channels of both stacks (input and output).
        kernel_size: odd size ``k`` of the (unmasked-equivalent) ``k x k`` receptive field growth per layer.
        mask_a: True for the first layer: the horizontal stack excludes the current position and there is no
            residual connection (the input at the current position is the code to predict).
        last: True for the last layer: only its skip features are used, so it has no residual 1x1 convolution and
            no vertical output (no parameter without a gradient).
        num_classes: when given, a learnt per-class bias is added to the pre-activations of both stacks.
        cond_channels: when given, a 1x1 convolution of a spatial conditioning map is added to the
            pre-activations of both stacks.
        dropout: dropout probability on the gated horizontal features (0 disables it).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        mask_a: bool = False,
        last: bool = False,
        num_classes: int | None = None,
        cond_channels: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pad = kernel_size // 2
        self.mask_a = mask_a
        self.last = last
        p = self.pad
        self.conv_v = nn.Conv2d(channels, 2 * channels, kernel_size=(p + 1, kernel_size))
        self.conv_h = nn.Conv2d(channels, 2 * channels, kernel_size=(1, p + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.res: nn.Conv2d | None = None if last else nn.Conv2d(channels, channels, kernel_size=1)
        self.skip = nn.Conv2d(channels, channels, kernel_size=1)
        self.dropout = nn.Dropout(dropout)
        # conditioning of 4 * channels: the first half biases the vertical stack, the second the horizontal one;
        # the last layer's vertical output is unused, so it only conditions the horizontal stack
        cond_dim = 2 * channels if last else 4 * channels
        self.class_bias: nn.Embedding | None = None
        if num_classes is not None:
            self.class_bias = nn.Embedding(num_classes, cond_dim)
            # a unit-variance bias would saturate the gates at initialisation
            nn.init.normal_(self.class_bias.weight, std=0.1)
        self.cond_proj: nn.Conv2d | None = None
        if cond_channels is not None:
            self.cond_proj = nn.Conv2d(cond_channels, cond_dim, kernel_size=1)

    def conditioning(
        self, class_labels: torch.Tensor | None, cond_map: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The conditioning terms added to the vertical and horizontal pre-activations.

        Args:
            class_labels: (B,) integer labels, used when the layer has a class table.
            cond_map: (B, cond_channels, H, W) map, used when the layer has a spatial projection.

        Returns:
            ``(cond_v, cond_h)``, each broadcastable to (B, 2 * channels, H, W), or ``(None, None)``.
        """
        cond: torch.Tensor | None = None
        if self.class_bias is not None and class_labels is not None:
            cond = self.class_bias(class_labels)[:, :, None, None]
        if self.cond_proj is not None and cond_map is not None:
            proj = self.cond_proj(cond_map)
            cond = proj if cond is None else cond + proj
        if cond is None:
            return None, None
        return (None, cond) if self.last else cond.chunk(2, dim=1)

    def vertical(self, v_window: torch.Tensor, cond_v: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Vertical stack on an already padded input.

        Args:
            v_window: (B, C, R + p, W + 2p): the input rows, with ``p`` rows above and ``p`` columns either side.
            cond_v: conditioning broadcastable to (B, 2C, R, W), or None.

        Returns:
            the gated output (B, C, R, W) (None for the last layer) and the features for the horizontal stack
            (B, 2C, R, W), *not yet* shifted down.
        """
        v_pre = self.conv_v(v_window)
        v_out = None if self.last else _gate(v_pre if cond_v is None else v_pre + cond_v)
        return v_out, self.v_to_h(v_pre)

    def horizontal(
        self,
        h_window: torch.Tensor,
        h_in: torch.Tensor | None,
        v_feat: torch.Tensor,
        cond_h: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Horizontal stack on an already padded (and, for mask A, shifted) input.

        Args:
            h_window: (B, C, R, W + p): the input columns the ``1 x (p + 1)`` kernel reads for each output column.
            h_in: (B, C, R, W) the input at the output positions for the residual connection (ignored for mask A).
            v_feat: (B, 2C, R, W) vertical features, already shifted down one row.
            cond_h: conditioning broadcastable to (B, 2C, R, W), or None.

        Returns:
            the layer's horizontal output (B, C, R, W) (None for the last layer) and its skip features
            (B, C, R, W).
        """
        return self._gated_horizontal(self.conv_h(h_window) + v_feat, h_in, cond_h, at_position=False)

    def horizontal_step(
        self,
        h_window: torch.Tensor,
        h_in: torch.Tensor | None,
        v_feat: torch.Tensor,
        cond_h: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Horizontal stack at a single position: :meth:`horizontal` written as matrix products.

        Args:
            h_window: (B, C, p + 1): the input columns ``c - p .. c`` (``c - p - 1 .. c - 1`` for mask A).
            h_in: (B, C) the input at the position for the residual connection (ignored for mask A).
            v_feat: (B, 2C) vertical features from the row above.
            cond_h: (B, 2C) conditioning, or None.

        Returns:
            the layer's horizontal output (B, C) (None for the last layer) and its skip features (B, C).
        """
        h_pre = conv_at_position(self.conv_h, h_window.reshape(h_window.shape[0], -1)) + v_feat
        return self._gated_horizontal(h_pre, h_in, cond_h, at_position=True)

    def _gated_horizontal(
        self, h_pre: torch.Tensor, h_in: torch.Tensor | None, cond_h: torch.Tensor | None, at_position: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The horizontal stack from its pre-activations on: conditioning, gate, dropout, skip and residual."""
        if cond_h is not None:
            h_pre = h_pre + cond_h
        gated = self.dropout(_gate(h_pre))
        skip = conv_at_position(self.skip, gated) if at_position else self.skip(gated)
        if self.res is None:
            return None, skip
        h_out = conv_at_position(self.res, gated) if at_position else self.res(gated)
        return (h_out if self.mask_a else h_out + h_in), skip

    def forward(
        self,
        v: torch.Tensor,
        h: torch.Tensor,
        cond_v: torch.Tensor | None = None,
        cond_h: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Run both stacks over a whole (B, C, H, W) grid.

        Returns:
            the vertical output, the horizontal output (both None for the last layer) and the skip features,
            all (B, C, H, W).
        """
        p = self.pad
        v_out, v_feat = self.vertical(F.pad(v, (p, p, p, 0)), cond_v)
        if self.mask_a:
            # shift right by one column so column c only reads columns c - p - 1 .. c - 1
            h_window = F.pad(h, (p + 1, 0))[..., :-1]
        else:
            h_window = F.pad(h, (p, 0))
        # the vertical features shifted down one row (row 0 gets zeros), so row r only receives rows < r
        h_out, skip = self.horizontal(h_window, h, F.pad(v_feat, (0, 0, 1, 0))[:, :, :-1, :], cond_h)
        return v_out, h_out, skip
