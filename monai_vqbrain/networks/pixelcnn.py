"""Gated PixelCNN prior over the discrete code maps of a VQ-VAE.

After van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"
(https://arxiv.org/abs/1606.05328), without a blind spot: the vertical stack reaches as far right as it reaches left
in every row above (the stacked masked k x k kernels of the original PixelCNN miss a growing triangle above-right).
Sampling is naive (a full forward pass per position) or cached, in the spirit of Ramachandran et al. 2017, "Fast
Generation for Convolutional Autoregressive Models" (https://arxiv.org/abs/1704.06001); both draw the same codes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .pixelcnn_layer import GatedPixelCNNLayer, conv_at_position


def _is_positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, Integral) and value >= 1


def _check_integer_tensor(name: str, value: object, what: str = "") -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor{what}, got {type(value).__name__}.")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor{what}, got dtype {value.dtype}.")


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over a 2D map of discrete codes, e.g. the code indices of a VQ-VAE.

    The codes are embedded, go through a first gated layer with a causal "mask A" (the prediction at a position
    never sees the code at that position) and ``num_layers`` gated residual layers ("mask B"); the skip features
    of all layers are summed and turned into categorical logits by ReLU and 1x1 convolutions. The logits at a
    position depend only on the codes earlier in raster order (rows above, then columns to the left), so the
    model factorises ``p(codes) = prod_i p(code_i | codes_<i)``.

    With ``p = kernel_size // 2`` and ``n = num_layers + 1`` gated layers, the logits at ``(r, c)`` see the
    ``n * p + 1`` rows above within columns ``c - n * p .. c + n * p``, and the ``n * p + 1`` codes to the left in
    row ``r``; the default configuration (``n = 16``, ``p = 2``) therefore sees every earlier code of a 32x32 map.

    Args:
        spatial_dims: number of spatial dimensions; only 2 is supported.
        num_embeddings: number of distinct codes (the size of the VQ-VAE codebook).
        out_channels: number of output logits per position; defaults to ``num_embeddings``. Sampling needs them
            equal.
        channels: number of feature channels of the stacks.
        num_layers: number of gated residual layers after the first (mask A) layer.
        kernel_size: odd kernel size ``k >= 3``; each layer grows the receptive field by ``k // 2`` per direction.
        num_classes: when given, the network is conditioned on a class label in ``[0, num_classes)`` per image
            (e.g. a slice-position bin) through a learnt per-layer bias.
        cond_channels: when given, the network is conditioned on a spatial map (B, cond_channels, H, W) through
            per-layer 1x1 convolutions.
        dropout: dropout probability on the gated horizontal features (training only; sampling runs in eval mode).

    Example::

        net = GatedPixelCNN(num_embeddings=512, num_classes=8)
        logits = net(codes, class_labels=labels)          # codes (B, 32, 32) -> logits (B, 512, 32, 32)
        loss = nn.functional.cross_entropy(logits, codes)
        new_codes = net.sample(16, (32, 32), class_labels=torch.arange(16) % 8, generator=g)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_embeddings: int = 512,
        out_channels: int | None = None,
        channels: int = 128,
        num_layers: int = 15,
        kernel_size: int = 5,
        num_classes: int | None = None,
        cond_channels: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(
                f"GatedPixelCNN only supports spatial_dims=2 (2D code maps), got spatial_dims={spatial_dims}."
            )
        out_channels = num_embeddings if out_channels is None else out_channels
        for name, value in (("num_embeddings", num_embeddings), ("out_channels", out_channels), ("channels", channels)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if num_layers < 0:
            raise ValueError(f"num_layers must be a non-negative integer, got {num_layers}.")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size}.")
        for name, value in (("num_classes", num_classes), ("cond_channels", cond_channels)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")

        self.spatial_dims = spatial_dims
        self.num_embeddings = num_embeddings
        self.out_channels = out_channels
        self.channels = channels
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.num_classes = num_classes
        self.cond_channels = cond_channels

        self.embedding = nn.Embedding(num_embeddings, channels)
        layer_args = {"num_classes": num_classes, "cond_channels": cond_channels, "dropout": dropout}
        self.layers = nn.ModuleList(
            GatedPixelCNNLayer(channels, kernel_size, mask_a=i == 0, last=i == num_layers, **layer_args)
            for i in range(num_layers + 1)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(channels, out_channels, kernel_size=1),
        )

    def _check_range(self, name: str, values: torch.Tensor, upper: int, note: str = "") -> None:
        # reading min/max of a GPU tensor stalls the training step on a host sync; training batches come from the
        # VQ-VAE's own encoder, so value checks run where they are free (CPU) and outside training
        if values.numel() > 0 and (values.device.type == "cpu" or not self.training):
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= upper:
                raise ValueError(f"{name} must lie in [0, {upper}){note}, got values in [{lo}, {hi}].")

    def _check_codes(self, codes: torch.Tensor) -> None:
        _check_integer_tensor("codes", codes, " of code indices")
        if codes.ndim != 3:
            raise ValueError(
                f"codes must have shape (B, H, W), got {tuple(codes.shape)}"
                + (" (squeeze the channel dimension first)." if codes.ndim == 4 and codes.shape[1] == 1 else ".")
            )
        self._check_range("codes", codes, self.num_embeddings, f" (num_embeddings={self.num_embeddings})")

    def _check_conditioning(
        self, batch: int, spatial: tuple[int, int], class_labels: torch.Tensor | None, cond_map: torch.Tensor | None
    ) -> None:
        if self.num_classes is None and class_labels is not None:
            raise ValueError("class_labels were given but the network was built without num_classes.")
        if self.num_classes is not None:
            if class_labels is None:
                raise ValueError(
                    f"the network is class-conditioned (num_classes={self.num_classes}): give class_labels."
                )
            _check_integer_tensor("class_labels", class_labels)
            if tuple(class_labels.shape) != (batch,):
                raise ValueError(f"class_labels must have shape ({batch},), got {tuple(class_labels.shape)}.")
            self._check_range("class_labels", class_labels, self.num_classes)
        if self.cond_channels is None and cond_map is not None:
            raise ValueError("cond_map was given but the network was built without cond_channels.")
        if self.cond_channels is not None:
            if cond_map is None:
                raise ValueError(
                    f"the network is conditioned on a spatial map (cond_channels={self.cond_channels}): give cond_map."
                )
            if not isinstance(cond_map, torch.Tensor) or not cond_map.dtype.is_floating_point:
                raise ValueError("cond_map must be a floating point torch.Tensor.")
            expected = (batch, self.cond_channels, *spatial)
            if tuple(cond_map.shape) != expected:
                raise ValueError(f"cond_map must have shape {expected}, got {tuple(cond_map.shape)}.")

    def forward(
        self,
        codes: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        cond_map: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of every code given the codes before it in raster order.

        Args:
            codes: (B, H, W) integer code indices in ``[0, num_embeddings)``.
            class_labels: (B,) integer labels in ``[0, num_classes)``; required iff ``num_classes`` was given.
            cond_map: (B, cond_channels, H, W) float map; required iff ``cond_channels`` was given.

        Returns:
            (B, out_channels, H, W) logits; position ``(r, c)`` only depends on the codes before it.
        """
        self._check_codes(codes)
        self._check_conditioning(codes.shape[0], (codes.shape[1], codes.shape[2]), class_labels, cond_map)
        return self._logits(codes, class_labels, cond_map)

    def _logits(
        self, codes: torch.Tensor, class_labels: torch.Tensor | None, cond_map: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.embedding(codes.long()).permute(0, 3, 1, 2).contiguous()
        v, h = x, x
        skip_sum: torch.Tensor | None = None
        for layer in self.layers:
            cond_v, cond_h = layer.conditioning(class_labels, cond_map)
            v, h, skip = layer(v, h, cond_v, cond_h)
            skip_sum = skip if skip_sum is None else skip_sum + skip
        return self.head(skip_sum)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        spatial_size: Sequence[int],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        class_labels: torch.Tensor | Sequence[int] | int | None = None,
        cond_map: torch.Tensor | None = None,
        batch_size: int | None = None,
        fast: bool = True,
        progress: bool = False,
        seeds: Sequence[int] | torch.Tensor | None = None,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """Draw code maps from the model in raster order.

        Each code is ``argmax(logits / temperature + gumbel)`` (the Gumbel-max trick, i.e. a draw from
        ``softmax(logits / temperature)``). The noise does not depend on the codes drawn: ``generator`` first gives
        one seed per sample, and each sample's noise is then drawn row by row, on the CPU, from its own seed. The
        fast and the naive paths therefore draw exactly the same codes (up to floating point rounding of the logits,
        which can only matter at a near-tie), and the samples depend neither on ``batch_size`` nor on the device.

        Args:
            num_samples: number of code maps to draw.
            spatial_size: ``(H, W)`` of the code maps.
            temperature: the logits are divided by it; 0 picks the most likely code (greedy, no noise).
            generator: source of randomness; the default is torch's global generator.
            class_labels: one label per sample, (num_samples,) or a single int for all; required iff the network
                is class-conditioned.
            cond_map: (num_samples, cond_channels, H, W); required iff the network is conditioned on a map.
            batch_size: number of samples drawn at once (default: all).
            fast: True for the cached sampler (O(H * W * layers) small steps); False for the naive one, a full
                forward pass per position (slow; the reference for the fast one).
            progress: show a tqdm progress bar over the positions.
            seeds: one seed per sample, instead of drawing them from ``generator``; a sample's code map depends only
                on its seed (and label and conditioning map), so a sampler can draw any subset of samples at a time.
            top_p: nucleus sampling: each code is drawn only among the most likely codes whose probabilities (at
                the temperature) add up to ``top_p`` (at least the most likely one); 1 draws among all codes. Cuts
                the long tail of unlikely codes, each of which a prior trained briefly still gives a little mass.

        Returns:
            (num_samples, H, W) long tensor of codes, on the device of the network.
        """
        if self.out_channels != self.num_embeddings:
            raise ValueError(
                f"sampling needs out_channels == num_embeddings, got {self.out_channels} and {self.num_embeddings}."
            )
        if not _is_positive_int(num_samples):
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        num_samples = int(num_samples)
        if (
            not isinstance(spatial_size, Sequence)
            or len(spatial_size) != 2
            or not all(map(_is_positive_int, spatial_size))
        ):
            raise ValueError(f"spatial_size must be two positive integers (H, W), got {spatial_size!r}.")
        height, width = int(spatial_size[0]), int(spatial_size[1])
        temperature = float(temperature)
        if not temperature >= 0.0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}.")
        top_p = float(top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p}.")
        batch_size = num_samples if batch_size is None else batch_size
        if not _is_positive_int(batch_size):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        batch_size = int(batch_size)

        param = self.embedding.weight
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=param.device)
            if class_labels.ndim == 0:  # one label for all samples
                class_labels = class_labels.expand(num_samples)
        if isinstance(cond_map, torch.Tensor) and cond_map.dtype.is_floating_point:
            cond_map = cond_map.to(device=param.device, dtype=param.dtype)
        self._check_conditioning(num_samples, (height, width), class_labels, cond_map)

        # one seed per sample, so each sample's noise is independent of the batching and of the device
        if seeds is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            seeds = torch.randint(0, 2**62, (num_samples,), generator=generator, device=gen_device)
        seeds = torch.as_tensor(seeds, dtype=torch.long).reshape(-1).tolist()
        if len(seeds) != num_samples:
            raise ValueError(f"seeds must hold one seed per sample ({num_samples}), got {len(seeds)}.")

        chunks = range(0, num_samples, batch_size)
        desc = f"sampling ({'fast' if fast else 'naive'})"
        bar = tqdm(total=len(chunks) * height * width, desc=desc, unit="px", disable=not progress)
        was_training = self.training
        self.eval()  # dropout would make the two paths (and repeated draws) disagree
        try:
            out = []
            for start in chunks:
                stop = min(start + batch_size, num_samples)
                generators = [torch.Generator().manual_seed(s) for s in seeds[start:stop]]
                labels = None if class_labels is None else class_labels[start:stop]
                cmap = None if cond_map is None else cond_map[start:stop]
                if fast:
                    logits_at = self._cached_logits(stop - start, height, width, labels, cmap)
                else:
                    logits_at = self._naive_logits(labels, cmap)
                codes = torch.zeros(stop - start, height, width, dtype=torch.long, device=param.device)
                for r in range(height):
                    noise = self._gumbel_row(generators, width, param.device) if temperature > 0 else None
                    for c in range(width):
                        column_noise = None if noise is None else noise[:, :, c]
                        codes[:, r, c] = self._pick(logits_at(codes, r, c), column_noise, temperature, top_p)
                        bar.update(1)
                out.append(codes)
        finally:
            self.train(was_training)
            bar.close()
        return torch.cat(out)

    def _gumbel_row(self, generators: list[torch.Generator], width: int, device: torch.device) -> torch.Tensor:
        """Gumbel noise (B, num_embeddings, W) for one row, each sample from its own (CPU) generator."""
        u = torch.stack([torch.rand(self.num_embeddings, width, generator=g) for g in generators])
        u = u.clamp_(min=torch.finfo(u.dtype).tiny)  # rand is in [0, 1): keep log(u) finite
        return (-torch.log(-torch.log(u))).to(device)

    @staticmethod
    def _pick(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float, top_p: float = 1.0) -> torch.Tensor:
        """Codes (B,) from logits (B, K): greedy when ``temperature == 0``, else Gumbel-max (within the nucleus)."""
        if temperature == 0.0:
            return logits.argmax(dim=1)
        # at least float32, so low-precision logits do not create ties; never below the logits' own precision
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        if top_p < 1.0:
            # drop the codes outside the nucleus: those whose more likely codes already hold top_p of the mass
            sorted_logits, order = logits.sort(dim=1, descending=True)
            before = sorted_logits.softmax(dim=1).cumsum(dim=1) - sorted_logits.softmax(dim=1)
            outside = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, before >= top_p)
            logits = logits.masked_fill(outside, float("-inf"))
        return (logits + noise.to(logits.dtype)).argmax(dim=1)

    def _head_step(self, skip_sum: torch.Tensor) -> torch.Tensor:
        """``head`` at a single position: (B, C) skip features -> (B, out_channels) logits, as matrix products."""
        x = skip_sum
        for module in self.head:
            x = conv_at_position(module, x) if isinstance(module, nn.Conv2d) else module(x)
        return x

    def _naive_logits(
        self, class_labels: torch.Tensor | None, cond_map: torch.Tensor | None
    ) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
        """Reference sampler: the logits at ``(r, c)`` from one full forward pass over the whole grid."""
        return lambda codes, r, c: self._logits(codes, class_labels, cond_map)[:, :, r, c]

    def _cached_logits(
        self, batch: int, height: int, width: int, class_labels: torch.Tensor | None, cond_map: torch.Tensor | None
    ) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
        """Cached sampler: the same computation as ``_logits``, done incrementally; call it in raster order.

        The horizontal stack at ``(r, c)`` needs (i) the vertical features of row ``r - 1`` and (ii) the
        horizontal inputs of columns ``c - p .. c`` of row ``r``. So (i) once a row is complete, every layer's
        vertical stack is run for that single row from a rolling window of its last ``p + 1`` input rows, and
        (ii) for each new position every layer's horizontal stack is run for that single column from a window of
        its last ``p + 1`` input columns. Both reuse the layers' own ``vertical``/``horizontal`` methods, so the
        arithmetic matches the full forward pass.
        """
        zeros = self.embedding.weight.new_zeros  # on the network's device, in its dtype
        chans, p = self.channels, self.kernel_size // 2
        n_layers = len(self.layers)

        conds = []
        for layer in self.layers:
            cond_v, cond_h = layer.conditioning(class_labels, cond_map)
            # expand class biases (B, 2C, 1, 1) to the grid so both kinds can be indexed per row / position
            conds.append(tuple(None if t is None else t.expand(-1, -1, height, width) for t in (cond_v, cond_h)))

        # rolling windows of each layer's vertical input: p rows of zero padding above row 0, p columns each side
        v_windows = [zeros(batch, chans, p + 1, width + 2 * p) for _ in range(n_layers)]
        # the current row of each layer's horizontal input, (B, C, p + W) with p columns of zero padding on the
        # left; the mask-A input has one more column of padding, which shifts it right by one so that a position
        # never reads its own code
        h_rows = [zeros(batch, chans, width + p + 1)] + [zeros(batch, chans, width + p) for _ in range(n_layers - 1)]
        # vertical features for the current row, (B, W, 2C), coming from the row above: zeros for row 0
        v_feats = [zeros(batch, width, 2 * chans) for _ in range(n_layers)]

        def logits_at(codes: torch.Tensor, r: int, c: int) -> torch.Tensor:
            if c > 0:  # the code drawn at (r, c - 1) enters the first layer's horizontal input
                h_rows[0][:, :, c + p] = self.embedding(codes[:, r, c - 1])
            elif r > 0:  # row r - 1 is complete: run every layer's vertical stack for it (it feeds row r)
                x = self.embedding(codes[:, r - 1]).permute(0, 2, 1)  # (B, C, W)
                for i, layer in enumerate(self.layers):
                    new_row = F.pad(x, (p, p)).unsqueeze(2)
                    v_windows[i] = torch.cat([v_windows[i][:, :, 1:], new_row], dim=2)
                    cond_v = conds[i][0]
                    cond_v = None if cond_v is None else cond_v[:, :, r - 1 : r, :]
                    v_out, v_feat = layer.vertical(v_windows[i], cond_v)
                    v_feats[i] = v_feat[:, :, 0].transpose(1, 2).contiguous()
                    if v_out is not None:
                        x = v_out[:, :, 0]
            skip_sum: torch.Tensor | None = None
            for i, layer in enumerate(self.layers):
                window = h_rows[i][:, :, c : c + p + 1]
                h_in = None if layer.mask_a else window[:, :, p]
                cond_h = conds[i][1]
                cond_h = None if cond_h is None else cond_h[:, :, r, c]
                h, skip = layer.horizontal_step(window, h_in, v_feats[i][:, c], cond_h)
                if i + 1 < n_layers:
                    h_rows[i + 1][:, :, c + p] = h
                skip_sum = skip if skip_sum is None else skip_sum + skip
            return self._head_step(skip_sum)

        return logits_at
