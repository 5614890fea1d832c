"""Layers only point down: a lower part of the package imports nothing from a higher one."""

from __future__ import annotations

import ast

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "monai_vqbrain"

# a folder of the package and the folders above it, which it must not import
FORBIDDEN = {
    "networks": ("engines", "handlers", "inference", "prior", "workflows"),
    "utils": ("engines", "handlers", "inference", "prior", "workflows"),
    "prior": ("workflows",),
}


def _imported_packages(path) -> set[str]:
    """The monai_vqbrain sub-packages a module imports (relative or absolute imports, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = path.relative_to(PACKAGE).parent.parts[: len(path.relative_to(PACKAGE).parent.parts) - node.level + 1]
                module = ".".join([*parts, *(node.module or "").split(".")]).strip(".")
            elif (node.module or "").startswith("monai_vqbrain."):
                module = node.module[len("monai_vqbrain."):]
            else:
                continue
            found.add(module.split(".")[0])
            if node.module is None:  # from .. import engines
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("monai_vqbrain."))
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_from_the_layers_above_it(folder):
    for path in sorted((PACKAGE / folder).glob("*.py")):
        upward = _imported_packages(path) & set(FORBIDDEN[folder])
        assert not upward, f"{path.relative_to(REPO_ROOT)} imports {sorted(upward)}"
