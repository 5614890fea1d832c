"""Vector quantizer with EMA codebook updates, dead-code restart and k-means initialisation.

Each guards against a known cause of codebook collapse: exponential-moving-average updates (van den Oord et al. 2017,
appendix) instead of a codebook loss, initialisation from the first batch of encoder outputs (k-means, so codes start
where the data is), and restart of codes no longer used to recent encoder outputs (Dhariwal et al. 2020). Optional
code noise (RobusTok, arXiv 2509.12474) teaches the decoder to turn a prior's near-miss into a plausible patch rather
than into mottle. All codebook arithmetic runs in float32, also under bf16/fp16 autocast, and under DDP the
statistics are summed across ranks so every rank keeps an identical codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

CODEBOOK_INITS = ("kmeans", "data", "random")


def _process_group() -> tuple[int, int]:
    """``(world size, rank)`` of torch.distributed's default process group; ``(1, 0)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class QuantizerOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns for a batch of encoder outputs.

    Attributes:
        quantized: the quantized latents, shaped like the input, with straight-through gradients to the input.
        indices: code index of every latent vector, shaped ``(B, *spatial)``.
        codebook_loss: ``||sg(z) - e||^2``; zero when the codebook is learnt by EMA (it gets no gradient then).
        commitment_loss: ``commitment_cost * ||z - sg(e)||^2``.
        perplexity: exponential of the entropy of code usage in the batch (1 = one code, K = all codes equally).
        codebook_usage: fraction of the codebook used at least once in the batch.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    codebook_usage: torch.Tensor


def count_codes(indices: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """Float count of each code in ``indices``.

    ``index_add_`` rather than ``torch.bincount``: on CUDA ``bincount`` reads the maximum index back to the host,
    which stalls the training loop every step.
    """
    flat = indices.reshape(-1)
    counts = torch.zeros(num_embeddings, device=flat.device, dtype=torch.float32)
    return counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))


def code_usage_statistics(code_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity and fraction of codes used, from per-code assignment counts.

    Args:
        code_counts: assignment count of each code, shape ``(num_embeddings,)``.

    Returns:
        ``(perplexity, codebook_usage)`` as 0-dim float tensors.
    """
    counts = code_counts.float()
    probabilities = counts / counts.sum().clamp_min(1.0)
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum()
    return torch.exp(entropy), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer over a learnt codebook of ``num_embeddings`` vectors.

    Input latents are channel-first, ``(B, embedding_dim, *spatial)`` for any number of spatial dims.

    Args:
        num_embeddings: number of codebook vectors ``K``.
        embedding_dim: size ``D`` of each codebook vector (the encoder's output channels).
        commitment_cost: weight of the commitment loss that keeps encoder outputs near their codes.
        decay: EMA decay of the codebook statistics; ``None`` learns the codebook by gradient descent on
            the codebook loss instead.
        epsilon: Laplace smoothing of the EMA cluster sizes, so no code divides by zero.
        dead_code_threshold: a code whose EMA assignment count per step falls below this is restarted to a
            random recent encoder output; 0 disables restarts.
        codebook_init: ``"kmeans"`` (k-means on the first training batch), ``"data"`` (random vectors of the
            first training batch) or ``"random"`` (uniform in ``[-1/K, 1/K]``, as in the original VQ-VAE).
        kmeans_iters: Lloyd iterations of the k-means initialisation.
        code_noise: in training mode, the probability that a latent vector is decoded through one of its code's
            ``code_noise_neighbours`` nearest codebook vectors instead of the code itself (0 disables it). The
            returned ``indices``, the losses and the codebook updates use the nearest code all the same.
        code_noise_neighbours: how many of a code's nearest codebook vectors (Euclidean) it can be replaced by.
    """

    def __init__(
        self,
        num_embeddings: int = 512,
        embedding_dim: int = 64,
        commitment_cost: float = 0.25,
        decay: float | None = 0.99,
        epsilon: float = 1e-5,
        dead_code_threshold: float = 1.0,
        codebook_init: str = "kmeans",
        kmeans_iters: int = 10,
        code_noise: float = 0.0,
        code_noise_neighbours: int = 8,
    ) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_embeddings and embedding_dim must be positive, got {num_embeddings}, {embedding_dim}."
            )
        if not 0.0 <= code_noise <= 1.0:
            raise ValueError(f"code_noise must be a probability in [0, 1], got {code_noise}.")
        if (
            isinstance(code_noise_neighbours, bool)
            or int(code_noise_neighbours) != code_noise_neighbours
            or code_noise_neighbours < 1
        ):
            raise ValueError(f"code_noise_neighbours must be an integer >= 1, got {code_noise_neighbours!r}.")
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1) or None, got {decay}.")
        if codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"codebook_init must be one of {CODEBOOK_INITS}, got {codebook_init!r}.")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.decay = decay
        self.epsilon = epsilon
        self.dead_code_threshold = dead_code_threshold
        self.codebook_init = codebook_init
        self.kmeans_iters = kmeans_iters
        self.code_noise = float(code_noise)
        self.code_noise_neighbours = int(code_noise_neighbours)

        initial = torch.empty(num_embeddings, embedding_dim).uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
        if self.use_ema:
            self.register_buffer("embedding", initial)
            self.register_buffer("ema_cluster_size", torch.ones(num_embeddings))
            self.register_buffer("ema_embedding_sum", initial.clone())
        else:
            self.embedding = nn.Parameter(initial)
        # whether the data-driven initialisation has run; saved with the weights so a resumed run does not redo it
        self.register_buffer("initialized", torch.tensor(codebook_init == "random"))
        # total number of code restarts so far, for logging codebook health
        self.register_buffer("restarted_codes", torch.zeros((), dtype=torch.long))
        self._initialized_cache: bool | None = None

    @property
    def use_ema(self) -> bool:
        return self.decay is not None

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized_cache = None

    def _is_initialized(self) -> bool:
        # a Python-side copy of the buffer avoids a device-to-host sync on every training step
        if self._initialized_cache is None:
            self._initialized_cache = bool(self.initialized.item())
        return self._initialized_cache

    def _flatten(self, latents: torch.Tensor) -> torch.Tensor:
        # not while tracing (ONNX export): the trace fixes the shapes, and comparing them there only warns
        if not torch.jit.is_tracing() and (latents.ndim < 3 or latents.shape[1] != self.embedding_dim):
            raise ValueError(
                f"expected latents of shape (B, {self.embedding_dim}, *spatial), got {tuple(latents.shape)}."
            )
        # positive dims throughout: a traced movedim with -1 becomes an ONNX Transpose with a negative ``perm``,
        # which ONNX Runtime rejects
        return latents.movedim(1, latents.ndim - 1).reshape(-1, self.embedding_dim)

    def nearest_codes(self, flat_latents: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector (Euclidean) for each row of ``flat_latents`` ``(N, D)``."""
        codebook = self.embedding.float()
        # ||z||^2 is constant per row, so argmin over ||e||^2 - 2 z.e is enough
        distances = torch.addmm((codebook * codebook).sum(1), flat_latents.float(), codebook.t(), alpha=-2.0)
        return distances.argmin(dim=1)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, *spatial)`` of channel-first latents ``(B, D, *spatial)``."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            indices = self.nearest_codes(self._flatten(latents))
        return indices.view(latents.shape[0], *latents.shape[2:])

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Channel-first codebook vectors ``(B, D, *spatial)`` for code indices ``(B, *spatial)``."""
        if indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"code indices must be an integer tensor, got {indices.dtype}.")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_embeddings):
            raise ValueError(
                f"code indices must lie in [0, {self.num_embeddings}), got [{int(indices.min())}, {int(indices.max())}]."
            )
        return self.lookup(indices)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Like :meth:`embed` without validating the indices (no host sync; traceable)."""
        vectors = F.embedding(indices.long(), self.embedding.float())
        return vectors.movedim(vectors.ndim - 1, 1)  # positive dims for ONNX, see _flatten

    @torch.no_grad()
    def neighbour_codes(self, indices: torch.Tensor, probability: float) -> torch.Tensor:
        """``indices`` with each entry replaced, with ``probability``, by one of its code's
        ``code_noise_neighbours`` nearest other codes (uniformly among them); the rest are kept."""
        neighbours = min(self.code_noise_neighbours, self.num_embeddings - 1)
        if probability <= 0 or neighbours < 1:
            return indices
        codebook = self.embedding.float()
        distances = torch.cdist(codebook, codebook)
        distances.fill_diagonal_(float("inf"))
        nearest = distances.topk(neighbours, dim=1, largest=False).indices
        choice = torch.randint(neighbours, indices.shape, device=indices.device)
        replaced = torch.rand(indices.shape, device=indices.device) < probability
        return torch.where(replaced, nearest[indices, choice], indices)

    @torch.no_grad()
    def _initialize_from_data(self, flat_latents: torch.Tensor) -> None:
        num_codes = self.num_embeddings
        generator = torch.Generator(device=flat_latents.device).manual_seed(0)
        order = torch.randperm(flat_latents.shape[0], device=flat_latents.device, generator=generator)
        sample = flat_latents[order[: 64 * num_codes]]
        # repeat the sample when the first batch holds fewer vectors than codes
        picks = torch.randint(sample.shape[0], (num_codes,), device=sample.device, generator=generator)
        if sample.shape[0] >= num_codes:
            picks = torch.randperm(sample.shape[0], device=sample.device, generator=generator)[:num_codes]
        codebook = sample[picks].clone()
        if self.codebook_init == "kmeans":
            for _ in range(self.kmeans_iters):
                assignment = torch.cdist(sample, codebook).argmin(dim=1)
                counts = torch.bincount(assignment, minlength=num_codes).float()
                sums = torch.zeros_like(codebook).index_add_(0, assignment, sample)
                # codes that attract no vector keep their previous position
                codebook = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], codebook)
        if _process_group()[0] > 1:
            dist.broadcast(codebook, src=0)
        self.embedding.data.copy_(codebook)
        if self.use_ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embedding_sum.copy_(codebook)
        self.initialized.fill_(True)
        self._initialized_cache = True

    @torch.no_grad()
    def _ema_update(self, flat_latents: torch.Tensor, indices: torch.Tensor, code_counts: torch.Tensor) -> torch.Tensor:
        """Update the codebook from this step's assignments; return the code counts summed over all ranks."""
        assert self.decay is not None
        num_codes, dim = self.num_embeddings, self.embedding_dim
        embedding_sum = torch.zeros_like(self.ema_embedding_sum).index_add_(0, indices, flat_latents)
        restarting = self.dead_code_threshold > 0
        # candidates for dead-code restarts: random encoder outputs of this step (only drawn when restarts are on)
        replacements = (
            flat_latents[torch.randint(flat_latents.shape[0], (num_codes,), device=flat_latents.device)]
            if restarting
            else flat_latents.new_zeros(0, dim)
        )
        world_size, rank = _process_group()
        if world_size > 1:
            # one collective per step: counts and sums are summed over ranks, and rank 0's restart candidates
            # are shared by zeroing everyone else's before the sum
            rank_zero = float(rank == 0)
            packed = torch.cat([code_counts, embedding_sum.reshape(-1), replacements.reshape(-1) * rank_zero])
            dist.all_reduce(packed)
            code_counts = packed[:num_codes]
            embedding_sum = packed[num_codes : num_codes * (1 + dim)].view(num_codes, dim)
            replacements = packed[num_codes * (1 + dim) :].view(-1, dim)
        self.ema_cluster_size.mul_(self.decay).add_(code_counts, alpha=1.0 - self.decay)
        self.ema_embedding_sum.mul_(self.decay).add_(embedding_sum, alpha=1.0 - self.decay)
        total = self.ema_cluster_size.sum()
        smoothed_size = (self.ema_cluster_size + self.epsilon) / (total + self.num_embeddings * self.epsilon) * total
        self.embedding.copy_(self.ema_embedding_sum / smoothed_size[:, None])

        if restarting:
            self._restart_dead_codes(replacements)
        return code_counts

    @torch.no_grad()
    def _restart_dead_codes(self, replacements: torch.Tensor) -> None:
        """Move codes whose EMA usage fell below the threshold to ``replacements`` (recent encoder outputs)."""
        # Branch-free on purpose: `torch.where` on every step instead of `if dead.any()` avoids a host sync.
        dead = self.ema_cluster_size < self.dead_code_threshold
        dead_column = dead[:, None]
        self.embedding.copy_(torch.where(dead_column, replacements, self.embedding))
        # a restarted code starts as a cluster of one vector at its new position
        self.ema_embedding_sum.copy_(torch.where(dead_column, replacements, self.ema_embedding_sum))
        self.ema_cluster_size.masked_fill_(dead, 1.0)
        self.restarted_codes.add_(dead.sum())

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize channel-first latents ``(B, D, *spatial)``; in training mode also update the codebook."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            flat_latents = self._flatten(latents).float()
            if self.training and not self._is_initialized():
                self._initialize_from_data(flat_latents.detach())
            indices = self.nearest_codes(flat_latents)
            code_counts = count_codes(indices, self.num_embeddings)
            if self.training and self.use_ema:
                code_counts = self._ema_update(flat_latents.detach(), indices, code_counts)
            nearest_flat = F.embedding(indices, self.embedding.float())

            commitment_loss = self.commitment_cost * F.mse_loss(flat_latents, nearest_flat.detach())
            if self.use_ema:
                codebook_loss = torch.zeros((), device=latents.device)
            else:
                codebook_loss = F.mse_loss(nearest_flat, flat_latents.detach())
            decoded_flat = nearest_flat
            if self.training and self.code_noise > 0:
                decoded_flat = F.embedding(self.neighbour_codes(indices, self.code_noise), self.embedding.float())
            # straight-through estimator: the decoder's gradient w.r.t. the codes is passed to the encoder
            quantized_flat = flat_latents + (decoded_flat - flat_latents).detach()
            perplexity, codebook_usage = code_usage_statistics(code_counts)

        spatial_shape = latents.shape[2:]
        quantized = quantized_flat.view(latents.shape[0], *spatial_shape, self.embedding_dim)
        quantized = quantized.movedim(quantized.ndim - 1, 1)  # positive dims for ONNX, see _flatten
        return QuantizerOutput(
            quantized=quantized,
            indices=indices.view(latents.shape[0], *spatial_shape),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
            codebook_usage=codebook_usage,
        )
