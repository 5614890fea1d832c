"""MkDocs hook: replace the marker ``<!-- override-keys -->`` in a page with the generated override-key reference.

Registered in ``mkdocs.yml`` as ``hooks: [docs/hooks/override_keys.py]``. The reference comes from
:func:`monai_vqbrain.workflows.keys.reference_markdown`, i.e. from ``monai_vqbrain/workflows/settings.schema.json``,
the schema the workflows validate their settings against, so the documented keys, defaults and allowed values are
the ones the code enforces.
"""

from __future__ import annotations

from typing import Any

from monai_vqbrain.workflows.keys import reference_markdown

MARKER = "<!-- override-keys -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """Return the page's markdown with :data:`MARKER` replaced by the override-key reference.

    Args:
        markdown: the page's markdown source.
        page: the MkDocs page (unused).
        config: the MkDocs config (unused).
        files: the site's files (unused).
        kwargs: further arguments MkDocs may pass.
    """
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference_markdown())
