"""The one source of the bundle's override keys: ``monai_vqbrain/workflows/settings.schema.json``.

The schema (JSON Schema draft 2020-12, checked with ``jsonschema``) says what every override key is: its type and
allowed values (``$defs/keys``) and, per config, what it means (``$defs/configs/<config>``). Its value, the default,
is written once, in the config. Three things read the schema: :func:`~monai_vqbrain.workflows.run_settings`
validates a run's settings against it, ``python -m monai.bundle run help`` prints each key's value with its
description, and :func:`reference_markdown` writes the documentation's reference with each default read from the
config files, so that it cannot drift from either.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SettingError
from .rules import SETTING_RULES

#: the schema file: package data, installed with the package (a wheel, ``pip install .`` or ``pip install -e .``)
SCHEMA_FILE = Path(__file__).resolve().parent / "settings.schema.json"

#: the configs in the order they are layered (a later config's meaning of a key wins) and documented
CONFIG_ORDER = (
    "train.json",
    "evaluate.json",
    "inference.json",
    "train_prior.json",
    "generate.json",
    "prior_large.json",
    "prior_quality.json",
    "generative.json",
    "adversarial.json",
    "multi_gpu_train.json",
    "multi_gpu_train_prior.json",
    "mlflow_tracking.json",
)

# a derived path setting: "$@ckpt_dir + '/model.pt'"
_PATH_EXPRESSION = re.compile(r"^\$@(\w+) \+ '([^']*)'$")
# a setting that defaults to another one: "@use_amp"
_ALIAS = re.compile(r"^@(\w+)$")


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The settings schema, checked against the JSON Schema meta-schema (cached)."""
    from jsonschema import Draft202012Validator

    if not SCHEMA_FILE.is_file():
        # package data: only an installation that lost files (or a build that left them out) lacks it
        raise SettingError(
            f"the settings schema '{SCHEMA_FILE}' is missing from the installed monai_vqbrain package: reinstall it "
            f"(pip install --force-reinstall monai_vqbrain, or pip install . from its source)."
        )
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def key_names() -> list[str]:
    """Every key the schema defines (``$defs/keys``)."""
    return list(load_schema()["$defs"]["keys"])


def _is_literal(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return bool(value) and all(_is_literal(item) and not isinstance(item, list) for item in value)
    return False


def config_override_keys(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The override keys a config file defines, with their raw values (their defaults).

    A config's override keys are its top-level keys that the schema defines (``$defs/keys``: also those whose
    default is an expression, ``train_crop_size``) and every other top-level key holding a literal (a number, a
    string, null, a list of them), a derived path (``"$@ckpt_dir + '/model.pt'"``) or another key's value
    (``"@use_amp"``); for ``mlflow_tracking.json``, the literal keys of its ``configs``, which MONAI's ``--tracking``
    sets at the top level. Components, other expressions and the workflow ids are not keys.

    Args:
        config: a config file, or its content (a ``mlflow_tracking.json`` content is recognised by its
            ``handlers_id``).
    """
    content = config if isinstance(config, Mapping) else json.loads(Path(config).read_text(encoding="utf-8"))
    if "handlers_id" in content:
        return {k: v for k, v in content.get("configs", {}).items() if _is_literal(v)}
    known = load_schema()["$defs"]["keys"]
    keys: dict[str, Any] = {}
    for name, value in content.items():
        if "#" in name or name.startswith(("+", "_")):
            continue
        derived = isinstance(value, str) and bool(_PATH_EXPRESSION.match(value) or _ALIAS.match(value))
        if name in known or _is_literal(value) or derived:
            keys[name] = value
    return keys


def _formats() -> Any:
    """The schema's own formats: what JSON Schema cannot say (command-line booleans, finiteness, an ordered pair)."""
    from jsonschema import FormatChecker

    from ..engines.precision import parse_amp
    from ..utils.flags import as_bool

    checker = FormatChecker(formats=())

    @checker.checks("flag", raises=ValueError)
    def _flag(value: Any) -> bool:
        as_bool(value)
        return True

    @checker.checks("amp", raises=ValueError)
    def _amp(value: Any) -> bool:
        parse_amp(value)
        return True

    @checker.checks("finite")
    def _finite(value: Any) -> bool:
        return not isinstance(value, float) or math.isfinite(value)

    @checker.checks("increasing")
    def _increasing(value: Any) -> bool:
        if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
            return True  # the other keywords judge the shape
        return value[0] < value[1]

    return checker


@functools.lru_cache(maxsize=1)
def _validator_class() -> Any:
    from jsonschema import Draft202012Validator, validators

    # JSON's integer admits 3.0; a setting that counts epochs or pixels must be a Python int (never a bool)
    type_checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return validators.extend(Draft202012Validator, type_checker=type_checker)


@functools.cache
def _key_validator(key: str) -> Any:
    schema = load_schema()["$defs"]["keys"][key]
    return _validator_class()(schema, format_checker=_formats())


def _as_json(value: Any) -> Any:
    """A setting as the schema sees it: a path as its text, a tuple as a list."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_as_json(item) for item in value]
    return value


def expected_text(key: str, keyword: str | None = None) -> str:
    """What ``key`` accepts, as an error message says it (``an integer >= 1``, ``true or false`` ...).

    Args:
        key: a key of the schema.
        keyword: the schema keyword a value failed, where the schema words that failure apart
            (``x-expected-by-keyword``).
    """
    schema = load_schema()["$defs"]["keys"][key]
    if keyword is not None and keyword in schema.get("x-expected-by-keyword", {}):
        return schema["x-expected-by-keyword"][keyword]
    if "x-expected" in schema:
        return schema["x-expected"]
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    nullable = " or null" if "null" in types else ""
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    strict = "exclusiveMinimum" in schema and "integer" not in types
    bound = f"in [{low}, {schema['maximum']}]" if "maximum" in schema else f"{'>' if strict else '>='} {low}"
    if "integer" in types:
        return f"an integer {bound}{nullable}"
    if "number" in types:
        return f"a finite number {bound}{nullable}"
    raise KeyError(f"the schema gives {key!r} no x-expected text and no type the message can be derived from")


def setting_error(key: str, value: Any) -> str | None:
    """What ``key`` accepts when ``value`` is not allowed by the schema, else None.

    Raises:
        KeyError: when the schema does not define ``key`` (a config lists a setting the schema lacks: a bug).
    """
    if key not in load_schema()["$defs"]["keys"]:
        raise KeyError(f"setting {key!r} is not in {SCHEMA_FILE.name}; add it to $defs/keys and the config's entry")
    errors = list(_key_validator(key).iter_errors(_as_json(value)))
    if not errors:
        return None
    # the keywords that failed at the top of the key's schema (a failure inside "not" or "anyOf" is reported there);
    # a failure the schema words apart is named only when it is the value's one problem ("~/models" is a path)
    keywords = {error.relative_schema_path[0] for error in errors if error.relative_schema_path}
    special = load_schema()["$defs"]["keys"][key].get("x-expected-by-keyword", {})
    return expected_text(key, keywords.pop() if len(keywords) == 1 and keywords <= set(special) else None)


def config_properties(name: str) -> dict[str, Any]:
    """The override keys the schema gives config ``name`` (``inference.json``), each with its meaning."""
    return load_schema()["$defs"]["configs"].get(name, {}).get("properties", {})


def key_description(key: str, configs: Sequence[str] | None = None) -> str | None:
    """What ``key`` means, from the last of ``configs`` (default: all, in :data:`CONFIG_ORDER`) that defines it."""
    for name in reversed(list(configs or CONFIG_ORDER)):
        if key in config_properties(name):
            return config_properties(name)[key].get("description")
    return None


def _default_text(value: Any) -> str:
    """A default as the reference shows it: ``<ckpt_dir>/model.pt`` for a derived path, JSON otherwise."""
    if isinstance(value, str):
        derived = _PATH_EXPRESSION.match(value)
        if derived:
            return f"<{derived[1]}>{derived[2]}"
        alias = _ALIAS.match(value)
        if alias:
            return "the `amp` setting's resolved choice" if alias[1] == "use_amp" else f"the value of {alias[1]}"
    return json.dumps(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown(configs_dir: str | os.PathLike) -> str:
    """The override-key reference of the documentation: one table per config (key, default, meaning, allowed).

    Args:
        configs_dir: the bundle's ``configs`` folder.
    """
    lines: list[str] = []
    for name in CONFIG_ORDER:
        properties = config_properties(name)
        lines += [f"### `{name}`", ""]
        if not properties:
            described = load_schema()["$defs"]["configs"].get(name, {})
            lines += [described.get("description", "No override keys of its own.").capitalize() + ".", ""]
            continue
        values = config_override_keys(Path(configs_dir) / name)
        lines += ["| key | default | meaning | allowed values |", "| --- | --- | --- | --- |"]
        for key, entry in properties.items():
            default = _default_text(values[key])
            default = entry.get("x-default-text") or (default if default.startswith("the ") else f"`{default}`")
            lines.append(
                f"| `{key}` | {_cell(default)} | {_cell(entry.get('description', ''))} | {_cell(expected_text(key))} |"
            )
        lines.append("")
    lines += [
        "### Rules between keys",
        "",
        "Each value may be allowed on its own, not together with the others; a run that breaks one of these stops at "
        "start-up with one line naming the keys.",
        "",
        "| keys | rule |",
        "| --- | --- |",
    ]
    lines += [f"| {', '.join(f'`{key}`' for key in rule.keys)} | {_cell(rule.text)} |" for rule in SETTING_RULES]
    return "\n".join([*lines, ""])
