"""The README, the documentation site and the model card say what the code does: every command they show names
configs, run ids and keys that exist, every Python example compiles, one version and one changelog everywhere."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import CONFIGS, REPO_ROOT

README = REPO_ROOT / "README.md"
MODEL_CARD = REPO_ROOT / "bundle" / "docs" / "README.md"
DOCS = REPO_ROOT / "docs"
METADATA = CONFIGS / "metadata.json"
# the pages that show commands
DOCUMENTS = [README, MODEL_CARD, *sorted(DOCS.rglob("*.md"))]
# options of MONAI's `run` that are not config keys
MONAI_RUN_OPTIONS = {"config_file", "meta_file", "logging_file", "tracking", "args_file", "init_id", "final_id"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at `&&`."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words:
            if word == "&&":
                commands.append(current)
                current = []
            else:
                current.append(word)
        if current:
            commands.append(current)
    return commands


def bundle_commands() -> list[tuple[str, list[str]]]:
    """Every `python -m monai.bundle ...` / `torchrun ... -m monai.bundle ...` command shown, as its arguments."""
    found = []
    for path in DOCUMENTS:
        for block in code_blocks(path, "bash"):
            for words in shell_commands(block):
                for i in range(len(words) - 1):
                    if words[i] == "-m" and words[i + 1] == "monai.bundle":
                        found.append((path.relative_to(REPO_ROOT).as_posix(), words[i + 2 :]))
                        break
    return found


def config_files(value: str) -> list[Path]:
    names = ast.literal_eval(value) if value.startswith("[") else [value]
    return [REPO_ROOT / name for name in names]


def options(arguments: list[str]) -> dict[str, str]:
    parsed = {}
    for i, word in enumerate(arguments):
        if word.startswith("--"):
            assert i + 1 < len(arguments) and not arguments[i + 1].startswith("--"), f"{word} has no value"
            parsed[word[2:]] = arguments[i + 1]
    return parsed


def test_the_documents_show_bundle_commands():
    shown = {arguments[0] for _, arguments in bundle_commands()}
    assert {"run", "verify_metadata", "verify_net_in_out", "ckpt_export", "onnx_export"} <= shown


@pytest.mark.parametrize("where, arguments", bundle_commands(), ids=lambda value: str(value)[:60])
def test_every_bundle_command_names_configs_run_ids_and_keys_that_exist(where, arguments):
    command, given = arguments[0], options(arguments)
    files = config_files(given["config_file"]) if "config_file" in given else []
    for path in files + ([REPO_ROOT / given["meta_file"]] if "meta_file" in given else []):
        assert path.is_file(), f"{where}: {path} does not exist"
    keys: set[str] = set()
    for path in files:
        keys |= set(json.loads(path.read_text()))
    if command == "run":
        positional = arguments[1] if len(arguments) > 1 and not arguments[1].startswith("--") else "run"
        assert positional in keys, f"{where}: run id {positional!r} is in none of {given.get('config_file')}"
        for key in given:
            assert key in MONAI_RUN_OPTIONS or key.split("#")[0] in keys, f"{where}: --{key} is no key of the configs"
        if "tracking" in given and given["tracking"].endswith(".json"):
            assert (REPO_ROOT / given["tracking"]).is_file(), f"{where}: {given['tracking']} does not exist"
    elif command in ("verify_net_in_out", "ckpt_export", "onnx_export"):
        assert arguments[1] in keys, f"{where}: {arguments[1]!r} is in none of {given['config_file']}"
    elif command == "verify_metadata":
        schema = REPO_ROOT / given["filepath"]
        assert schema.is_file(), f"{where}: {schema} does not exist"
        assert hashlib.md5(schema.read_bytes()).hexdigest() == given["hash_val"], f"{where}: --hash_val is stale"
    else:
        pytest.fail(f"{where}: a bundle command this test does not know: {command}")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_python_example_compiles(path):
    for number, block in enumerate(code_blocks(path, "python")):
        compile(block, f"{path.name} python block {number}", "exec")


def test_readme_is_short_with_its_picture_and_links():
    text = README.read_text()
    assert len(text.encode()) <= 8 * 1024, "the README is one page; the rest belongs in docs/"
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert "docs/images/overview.png" in targets
    for target in targets:
        if not target.startswith(("http://", "https://")):
            assert (REPO_ROOT / target).exists(), f"README links to {target}, which does not exist"
    assert "mkdocs serve" in text


def test_ci_runs_the_readme_test_command_with_the_strict_docs_build():
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# --- the README's test command, verbatim ---") + 1]
    assert command in README.read_text()
    assert "python -m mkdocs build --strict" in command and "python -m pytest" in command
    mkdocs = (REPO_ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^site_dir: site$", mkdocs, re.MULTILINE)
    assert "site/" in (REPO_ROOT / ".gitignore").read_text().splitlines(), "the built site is not committed"


def test_model_card_links_to_the_site_and_keeps_the_model_zoo_sections():
    card = MODEL_CARD.read_text()
    for heading in ("## Model overview", "## Data", "## Training", "## Performance", "## Commands",
                    "## Limitations", "## Citation"):
        assert heading in card, heading
    links = re.findall(r"\]\((\.\./\.\./docs/[^)#\s]+)", card)
    assert links, "the card points to the documentation site"
    for link in links:
        assert (MODEL_CARD.parent / link).resolve().exists(), link


def test_model_card_recipe_matches_the_configs_defaults():
    train = json.loads((CONFIGS / "train.json").read_text())
    card = MODEL_CARD.read_text()
    recipe = card[card.index("The recipe of `configs/train.json`:") : card.index("## Performance")]
    rows = [line for line in recipe.splitlines() if line.startswith("| ") and "`" in line]
    checked = 0
    for row in rows:
        for key in re.findall(r"\(`([a-z_]+)`", row):
            assert key in train, f"the card's recipe names `{key}`, which train.json does not hold"
            default = train[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                assert re.search(rf"(?<![\d.]){re.escape(str(default))}(?![\d.])", row), (key, default, row)
                checked += 1
    assert checked >= 6, "the recipe table states the numeric defaults"


def test_one_version_for_the_package_pyproject_and_the_bundle():
    import monai_vqbrain

    # read as text: tomllib is Python >= 3.11 only
    project = (REPO_ROOT / "pyproject.toml").read_text()
    table = project[project.index("[project]") : project.index("\n[", project.index("[project]") + 1)]
    assert not re.search(r"^version\s*=", table, re.MULTILINE), "pyproject.toml holds no version of its own"
    assert re.search(r'^dynamic = \[.*"version".*\]$', table, re.MULTILINE)
    attr = re.search(r'^version = \{ attr = "([\w.]+)" \}$', project, re.MULTILINE).group(1)
    module, _, name = attr.rpartition(".")
    source = (REPO_ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert ast.literal_eval(re.search(rf"^{name} = (.+)$", source, re.MULTILINE).group(1)) == monai_vqbrain.__version__
    metadata = json.loads(METADATA.read_text())
    assert metadata["version"] == monai_vqbrain.__version__
    assert metadata["required_packages_version"]["monai_vqbrain"] == monai_vqbrain.__version__


def test_changelog_page_and_metadata_tell_the_same_story():
    metadata = json.loads(METADATA.read_text())
    page = (DOCS / "changelog.md").read_text()
    sections = re.split(r"^## ", page, flags=re.MULTILINE)[1:]
    entries = {}
    for section in sections:
        version, _, body = section.partition("\n")
        first_paragraph = body.strip().split("\n\n")[0]
        entries[version.strip()] = " ".join(first_paragraph.split())
    assert list(entries) == list(metadata["changelog"]), "the same versions, newest first"
    for version, summary in metadata["changelog"].items():
        assert entries[version] == " ".join(summary.split()), f"changelog {version} differs from metadata.json"
    assert next(iter(entries)) == metadata["version"], "the newest entry is the current version"


def test_every_page_saying_a_checkpoint_cannot_run_code_says_what_can():
    # issue 25: the README, the model card and the guides said a checkpoint "cannot run code", and nothing said that
    # configs and command-line overrides can (MONAI evaluates their "$" values as Python, by design)
    guarantees = (DOCS / "guarantees.md").read_text(encoding="utf-8")
    section = guarantees.split("## Trust and security", 1)[1].split("\n## ", 1)[0]
    for phrase in ("What is evaluated as code", "What is never executed", "Run only from a trusted source",
                   "weights_only=True", "--output_dir", "eval"):
        assert phrase in section, phrase
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        if "cannot run code" in text:
            assert "trust-and-security" in text, f"{path.name} says a checkpoint cannot run code without the link"
    assert "trust-and-security" in README.read_text(encoding="utf-8")


def test_the_guarantees_say_what_sigterm_and_links_outside_the_data_set_get():
    guarantees = (DOCS / "guarantees.md").read_text(encoding="utf-8")
    assert "terminated (SIGTERM) at epoch 3; resume with" in guarantees and "| `143` |" in guarantees
    assert "lie outside the data folder" in guarantees


def test_the_architecture_page_places_every_test_file_and_none_is_over_500_lines():
    page = (DOCS / "architecture.md").read_text()
    for path in sorted((REPO_ROOT / "tests").glob("test_*.py")):
        assert f"`{path.name}`" in page, f"{path.name} is not placed in docs/architecture.md#where-the-tests-are"
        assert len(path.read_text().splitlines()) <= 500, f"{path.name} is over 500 lines: split it by behaviour"
