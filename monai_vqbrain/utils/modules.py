"""Helpers for networks that may be wrapped (DistributedDataParallel, DataParallel)."""

from __future__ import annotations

from torch import nn


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside a DDP/DataParallel wrapper, or ``network`` itself when it is not wrapped."""
    return getattr(network, "module", network)
