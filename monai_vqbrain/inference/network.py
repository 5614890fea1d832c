"""The network the inference bundle exposes: image in, reconstruction out, loadable from training checkpoints."""

from __future__ import annotations

from typing import Any

from torch import nn

from monai_vqbrain.networks import VQVAE, VQVAEReconstructor

__all__ = ["ReconstructionNetwork"]

_PREFIX = "vqvae."


class ReconstructionNetwork(VQVAEReconstructor):
    """A :class:`~monai_vqbrain.networks.VQVAEReconstructor` that also loads the VQ-VAE's own state dicts.

    Training and evaluation save the weights of the :class:`~monai_vqbrain.networks.VQVAE` (keys ``encoder.*``,
    ``quantizer.*``, ...), while this wrapper's keys are ``vqvae.encoder.*``, ... . ``load_state_dict`` accepts
    both, so that MONAI's ``ckpt_export`` (``--key_in_ckpt model``) and ``verify_net_in_out`` can use the bundle's
    ``model.pt`` directly. The forward pass maps images ``(B, 1, S, S)`` in ``[0, 1]`` to their reconstructions;
    it traces to TorchScript (``--use_trace True``).

    Args:
        vqvae: the VQ-VAE to wrap; or keyword arguments of :class:`~monai_vqbrain.networks.VQVAE` to build one.
    """

    def __init__(self, vqvae: VQVAE | None = None, **vqvae_kwargs: Any) -> None:
        super().__init__(vqvae, **vqvae_kwargs)
        self.register_load_state_dict_pre_hook(_add_vqvae_prefix)


def _add_vqvae_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: rename a bare VQ-VAE state dict's keys to live under ``vqvae.``.

    The hook runs before the module checks for missing and unexpected keys, and the dict it edits is the one passed
    on to the sub-modules, so renaming in place is enough.
    """
    own = [key for key in state_dict if key.startswith(prefix)]
    if any(key.startswith(prefix + _PREFIX) for key in own):
        return
    for key in own:
        state_dict[prefix + _PREFIX + key[len(prefix) :]] = state_dict.pop(key)
