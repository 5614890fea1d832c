"""MkDocs hook: replace each marker of :data:`TABLES` in a page with the table generated from the code.

Registered in ``mkdocs.yml``. The tables come from where the code keeps what it documents, so a page cannot drift:

* ``<!-- override-keys -->``: the override-key reference, :func:`monai_vqbrain.workflows.keys.reference_markdown`,
  from ``monai_vqbrain/workflows/settings.schema.json``, the schema the workflows validate their settings against,
  and the defaults from ``bundle/configs``;
* ``<!-- generation-metrics-keys -->``: every key of ``generation_metrics.json``,
  :func:`monai_vqbrain.prior.generation_metrics_markdown`, from ``GENERATION_METRICS_KEYS`` kept next to the code
  that writes the file (a test fails when a run writes a key that is not described there).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from monai_vqbrain.prior import generation_metrics_markdown
from monai_vqbrain.workflows.keys import reference_markdown

TABLES: dict[str, Callable[[], str]] = {
    "<!-- override-keys -->": partial(reference_markdown, Path(__file__).resolve().parents[2] / "bundle" / "configs"),
    "<!-- generation-metrics-keys -->": generation_metrics_markdown,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """Return the page's markdown with each marker of :data:`TABLES` replaced by its generated table.

    Args:
        markdown: the page's markdown source.
        page: the MkDocs page (unused).
        config: the MkDocs config (unused).
        files: the site's files (unused).
        kwargs: further arguments MkDocs may pass.
    """
    for marker, table in TABLES.items():
        if marker in markdown:
            markdown = markdown.replace(marker, table())
    return markdown
