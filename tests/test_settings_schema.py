"""The settings schema is the one source of the override keys: the configs, the checks, `run help` and the docs."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import CONFIGS, REPO_ROOT, TRAIN, run_bundle, user_error
from PIL import Image

from monai_vqbrain.errors import SettingError
from monai_vqbrain.workflows import check_settings
from monai_vqbrain.workflows.keys import (
    CONFIG_ORDER,
    SCHEMA_FILE,
    config_override_keys,
    load_schema,
    reference_markdown,
)

INFERENCE = [TRAIN, str(CONFIGS / "inference.json")]


def test_schema_is_valid_draft_2020_12_and_covers_every_config():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert sorted(p.name for p in CONFIGS.glob("*.json") if p.name not in ("metadata.json",)) == sorted(CONFIG_ORDER)
    for name, entry in schema["$defs"]["configs"].items():
        for key, prop in entry["properties"].items():
            assert prop["description"].strip(), f"{name}: {key} has no description"
    used = {key for entry in schema["$defs"]["configs"].values() for key in entry["properties"]}
    assert used == set(schema["$defs"]["keys"]), "every key the schema defines belongs to a config"


def schema_mismatches(name, config):
    """How config ``name``'s override keys and the schema's entry for it disagree: one line per difference."""
    configured = config_override_keys(config)
    described = load_schema()["$defs"]["configs"].get(name, {}).get("properties", {})
    problems = [f"{name}: {key} is not in the schema" for key in configured if key not in described]
    problems += [f"{name}: the schema's {key} is not in the config" for key in described if key not in configured]
    known = load_schema()["$defs"]["keys"]
    return problems + [f"{name}: {key} has no entry in $defs/keys" for key in described if key not in known]


@pytest.mark.parametrize("name", CONFIG_ORDER)
def test_every_config_key_has_a_schema_entry_and_no_entry_is_orphaned(name):
    assert schema_mismatches(name, CONFIGS / name) == []


def test_a_key_in_one_place_only_is_found():
    content = json.loads((CONFIGS / "train.json").read_text())
    content["max_epoch"] = 3  # a new literal key the schema does not know
    del content["seed"]
    problems = schema_mismatches("train.json", content)
    assert sorted(problems) == ["train.json: max_epoch is not in the schema",
                                "train.json: the schema's seed is not in the config"]


def test_each_key_is_written_once():
    # the value only in its config, what it is only in the schema: no defaults in the schema, no lists of keys in
    # the configs, no conversion of a validated flag in them
    schema = load_schema()["$defs"]
    assert not [(name, key) for name, entry in schema["configs"].items()
                for key, prop in entry["properties"].items() if "default" in prop]
    flags = [key for key, entry in schema["keys"].items() if entry.get("format") == "flag"]
    for name in CONFIG_ORDER:
        text = (CONFIGS / name).read_text()
        content = json.loads(text)
        assert not [key for key in content if key.startswith("settings#") or key.endswith("_settings#")], name
        assert isinstance(content.get("settings", ""), str), name
        assert "as_bool" not in text, name
        # a flag reaches a component or check only validated: @settings['overwrite'], never @overwrite
        used = [flag for flag in flags if f"@{flag})" in text or f"@{flag}," in text or f'@{flag}"' in text]
        assert used in ([], ["debug"]), (name, used)  # debug: the error hook, installed before the settings check


def test_schema_bound_of_png_size_is_pils():
    assert load_schema()["$defs"]["keys"]["max_image_pixels"]["maximum"] == 2 * Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_epochs", 3.0, "max_epochs must be an integer >= 1, got 3.0."),
        ("resume", True, None),
        ("resume", "yes", None),
        # a flag is on or off: null (--overwrite None) would silently mean off
        ("overwrite", None, "overwrite must be true or false (also yes/no, on/off, 1/0), got None."),
        ("slice_axis", True, "slice_axis must be one of 0, 1, 2, got True."),
        ("val_fraction", float("inf"), "val_fraction must be a finite number in [0.0, 1.0], got inf."),
        ("learning_rate", float("inf"), "learning_rate must be a finite number > 0.0, got inf."),
        ("slice_range", (0.1, 0.9), None),
        ("ckpt_dir", "", "ckpt_dir must be a path, got ''."),
        ("device", " cuda:x", "device must be auto, cpu, cuda or cuda:<index>, got ' cuda:x'."),
    ],
)
def test_schema_checks_say_what_is_allowed(key, value, message):
    if message is None:
        check_settings({key: value})
    else:
        error = user_error(SettingError, message, check_settings, {key: value})
        assert str(error) == message


def test_help_prints_each_key_with_its_description(tmp_path, capsys):
    run_bundle("help", INFERENCE, bundle_root=str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    schema = load_schema()["$defs"]["configs"]
    # inference.json's meaning of batch_size, train.json's of max_epochs
    assert lines[lines.index("  --batch_size 4") + 1].strip() == schema["inference.json"]["properties"]["batch_size"]["description"]
    assert lines[lines.index("  --max_epochs 15") + 1].strip() == schema["train.json"]["properties"]["max_epochs"]["description"]


def test_help_from_python_takes_the_meanings_of_the_configs_run(tmp_path, capsys):
    run_bundle("help", [TRAIN, str(CONFIGS / "train_prior.json")], bundle_root=str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    described = load_schema()["$defs"]["configs"]["train_prior.json"]["properties"]["prior_max_epochs"]["description"]
    assert lines[lines.index("  --prior_max_epochs 12") + 1].strip() == described  # not prior_large.json's


def test_reference_markdown_lists_every_key_of_every_config_and_the_hook_inserts_it():
    markdown = reference_markdown(CONFIGS)
    for name, entry in load_schema()["$defs"]["configs"].items():
        section = markdown.split(f"### `{name}`", 1)[1].split("### ", 1)[0]
        for key, prop in entry["properties"].items():
            assert f"| `{key}` |" in section and prop["description"].split("`")[0] in section, (name, key)
    assert "| `ckpt_dir` | `<bundle_root>/models` |" in markdown

    spec = importlib.util.spec_from_file_location("generated_tables", REPO_ROOT / "docs" / "hooks" / "generated_tables.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (REPO_ROOT / "docs" / "reference" / "override-keys.md").read_text()
    marker = "<!-- override-keys -->"
    assert marker in page
    rendered = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert marker not in rendered and markdown in rendered
    assert hook.on_page_markdown("# other page", page=None, config=None, files=None) == "# other page"


def test_a_missing_schema_is_one_line_saying_how_to_install(monkeypatch, tmp_path):
    from monai_vqbrain.workflows import keys

    monkeypatch.setattr(keys, "SCHEMA_FILE", tmp_path / "settings.schema.json")
    keys.load_schema.cache_clear()
    try:
        with pytest.raises(SettingError, match="is missing from the installed monai_vqbrain package: reinstall it"):
            keys.load_schema()
    finally:
        keys.load_schema.cache_clear()


def test_rules_between_keys_are_one_table_that_validation_and_the_reference_read():
    from monai_vqbrain.workflows.rules import SETTING_RULES, broken_rule

    assert set(key for rule in SETTING_RULES for key in rule.keys) <= set(load_schema()["$defs"]["keys"])
    markdown = reference_markdown(CONFIGS)
    for rule in SETTING_RULES:
        assert rule.text.replace("|", "\\|") in markdown, rule.name
    assert broken_rule({"image_size": 32, "train_crop_size": 48}).startswith("train_crop_size must be at most")
    assert broken_rule({"image_size": 30, "downsample_factor": 4}).startswith("image_size must be a multiple of 4")
    assert broken_rule({"val_interval": 3, "prior_max_epochs": 2}, "prior_max_epochs").startswith("val_interval (3)")
    assert broken_rule({"val_interval": 3, "prior_max_epochs": 2}) is None  # a run that does not train
    assert broken_rule({"image_size": 32, "train_crop_size": 32, "val_fraction": 0.5, "test_fraction": 0.2}) is None
