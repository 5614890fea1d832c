"""MkDocs hook: replace the marker ``<!-- generation-metrics-keys -->`` in a page with the table of every key of
``generation_metrics.json``.

Registered in ``mkdocs.yml`` beside ``override_keys.py``. The table comes from
:data:`monai_vqbrain.prior.GENERATION_METRICS_KEYS`, the description kept next to the code that writes the file; a
test fails when a run writes a key that is not described there, so the table cannot miss one.
"""

from __future__ import annotations

from typing import Any

from monai_vqbrain.prior import generation_metrics_markdown

MARKER = "<!-- generation-metrics-keys -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """Return the page's markdown with :data:`MARKER` replaced by the table of ``generation_metrics.json``'s keys.

    Args:
        markdown: the page's markdown source.
        page: the MkDocs page (unused).
        config: the MkDocs config (unused).
        files: the site's files (unused).
        kwargs: further arguments MkDocs may pass.
    """
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, generation_metrics_markdown())
