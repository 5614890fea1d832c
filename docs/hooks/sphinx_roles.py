"""MkDocs hook: the docstrings' Sphinx roles (``:func:`~monai_vqbrain.prior.load_prior```) shown as code.

The docstrings are written for both Sphinx-style readers and mkdocstrings; mkdocstrings (Google style) does not
interpret the roles and would print ``:func:`` before each name. ``~`` keeps the last component only, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):<code>(~?)\.?([^<]*)</code>")


def _shown(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Replace each rendered role by the code it names."""
    return _ROLE.sub(_shown, html)
