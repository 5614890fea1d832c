"""Codebook health over a whole epoch: perplexity and fraction of codes used."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from ..engines.distributed import all_reduce_sum
from ..networks.quantizer import code_usage_statistics, count_codes


class CodebookUsageHandler:
    """Count how often each code is chosen over an epoch; publish perplexity and usage as metrics.

    A batch sees only a slice of the data, so the per-batch perplexity in the trainer's output understates how
    much of the codebook is in use; this handler counts over the whole epoch (summed across ranks under DDP)
    and sets ``engine.state.metrics[f"{prefix}perplexity"]`` and ``[f"{prefix}codebook_usage"]``.

    Args:
        num_embeddings: codebook size.
        prefix: prefix of the metric names.
        indices_key: key of the code maps in ``engine.state.output``.
    """

    def __init__(self, num_embeddings: int, prefix: str = "train_", indices_key: str = "indices") -> None:
        self.num_embeddings = num_embeddings
        self.prefix = prefix
        self.indices_key = indices_key
        self.code_counts: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self.code_counts = None

    def _accumulate(self, engine: Engine) -> None:
        indices = engine.state.output[self.indices_key]
        counts = count_codes(indices, self.num_embeddings)
        self.code_counts = counts if self.code_counts is None else self.code_counts + counts

    def _publish(self, engine: Engine) -> None:
        if self.code_counts is None:
            return
        perplexity, usage = code_usage_statistics(all_reduce_sum(self.code_counts.clone()))
        engine.state.metrics[f"{self.prefix}perplexity"] = float(perplexity)
        engine.state.metrics[f"{self.prefix}codebook_usage"] = float(usage)
