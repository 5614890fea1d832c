"""Start-up validation of a bundle run's settings: every value and every command-line key, before any data is read.

Each bundle config's ``settings`` entry is :func:`run_settings`, which ``initialize`` resolves first; the configs
read normalised values from it (``@settings['overwrite']`` is a boolean whatever the command line wrote).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SettingError
from ..utils.flags import as_bool
from .keys import CONFIG_ORDER, config_properties, key_description, key_names, load_schema, setting_error
from .monai_adapter import bundle_command_line, running_parser, running_workflow
from .rules import SETTING_RULES, broken_rule


def _check_device_available(value: Any) -> str | None:
    import torch

    if isinstance(value, str) and value.strip().startswith("cuda"):
        if not torch.cuda.is_available():
            return "auto or cpu: CUDA is not available on this machine"
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            return f"auto or one of the {torch.cuda.device_count()} CUDA device(s) of this machine (cuda:0 ...)"
    return None


def run_settings(
    max_epochs_key: str | None = None, downsample_factor: int | None = None, argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """The settings of the run whose config is being evaluated: every override key, validated and normalised.

    The keys are those of the settings schema that the run's (merged) config defines, each resolved by the config's
    own parser in config order and checked by :func:`check_settings` at once, so that a key following another
    (``train_crop_size`` follows ``image_size``) is evaluated only once that one is valid. Then the rules between
    keys (:func:`check_setting_combinations`). Nothing else of the config is built.

    Args:
        max_epochs_key: the setting holding the training run's epochs (``max_epochs``, ``prior_max_epochs``); None
            for a run that does not train.
        downsample_factor: the network's downsampling factor, which ``image_size`` must be a multiple of; None when
            the run builds no VQ-VAE.
        argv: the command line; ``sys.argv`` when None.

    Raises:
        SettingError: one line naming the first bad key (or keys), the value and what is allowed.
    """
    check_override_keys(argv)
    parser = running_parser()
    if parser is None:
        raise SettingError("run_settings() reads the settings of the config being parsed: call it from a config.")
    known = set(key_names())
    settings: dict[str, Any] = {}
    for key in [key for key in parser.get() if key in known]:
        # the parser's own resolver: a value is evaluated once and shared with the rest of the run
        value = parser.ref_resolver.get_resolved_content(key)
        settings.update(check_settings({key: value}))
    # every value is valid on its own now: the rules between them, the network's downsampling first
    check_setting_combinations({**settings, "downsample_factor": downsample_factor}, max_epochs_key)
    return settings


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check settings against the settings schema (:mod:`~monai_vqbrain.workflows.keys`); return them normalised.

    Flags come back as booleans. What the schema cannot say is checked here: that a CUDA ``device`` exists on this
    machine. The rules between keys are :func:`check_setting_combinations`.

    Args:
        settings: setting name to its (parsed) value.

    Raises:
        SettingError: one line naming the first bad key, its value and what is allowed.
    """
    settings = dict(settings)
    keys = load_schema()["$defs"]["keys"]
    for key, value in settings.items():
        # a config listing a setting the schema does not define is a bug, not a user error: setting_error raises
        expected = setting_error(key, value)
        if expected is None and key == "device":
            expected = _check_device_available(value)
        if expected is not None:
            hint = ""
            if isinstance(value, str) and value.strip().lower() in ("null", "none") and setting_error(key, None) is None:
                hint = " (on the command line null is written None: the value is parsed as Python, not JSON)"
            raise SettingError(f"{key} must be {expected}, got {value!r}{hint}.")
        if keys[key].get("format") == "flag" and value is not None:
            settings[key] = as_bool(value, key)
    return settings


def check_setting_combinations(settings: Mapping[str, Any], max_epochs_key: str | None = None) -> None:
    """Check the settings that are only wrong together, before anything is loaded (after :func:`check_settings`).

    Each value may be allowed on its own, yet the run could not do what they ask together (split fractions that
    leave no training data, a crop larger than the image ...): the rules are :data:`~.rules.SETTING_RULES`.

    Args:
        settings: setting name to its (parsed) value; settings a workflow does not have are not checked.
        max_epochs_key: the setting holding the training run's epochs (``max_epochs``, ``prior_max_epochs``), whose
            validation every ``val_interval`` epochs must happen at least once; None for a run that does not train.

    Raises:
        SettingError: one line naming the keys, their values and what they must satisfy.
    """
    breach = broken_rule(settings, max_epochs_key)
    if breach is not None:
        raise SettingError(breach)


def print_settings(settings: Mapping[str, Any], argv: Sequence[str] | None = None) -> None:
    """Print the override keys of a workflow with their values and meanings, as ``--key value`` lines a shell takes.

    The ``help`` run of every bundle config: ``python -m monai.bundle run -- --help`` shows MONAI's own options (its
    command line is MONAI's, not ours); ``python -m monai.bundle run help --config_file <config>`` shows the config's
    keys. Each key's meaning comes from the settings schema (:mod:`~monai_vqbrain.workflows.keys`), from the last
    of the run's config files that defines the key (``batch_size`` means another thing in ``inference.json``).

    Args:
        settings: the config's settings (``@settings``, plus the workflow's own), as :func:`check_settings` takes them.
        argv: the command line, whose ``--config_file`` names the configs; ``sys.argv`` when None. Without one (a
            run from Python), the configs are those with a key of their own in ``settings``.
    """
    parsed = bundle_command_line(argv)
    configs = [Path(f).name for f in parsed[1]] if parsed is not None and parsed[1] else None
    if not configs:
        # a config takes part when a key of its own (one no config before it defines) is among the settings; a
        # preset has none (prior_large.json's keys are train_prior.json's): only a command line says it was given
        configs, earlier = [], set()
        for name in CONFIG_ORDER:
            if (set(config_properties(name)) - earlier) & set(settings):
                configs.append(name)
            earlier |= set(config_properties(name))
    lines = ["override keys of this workflow, with the values this run would use and what they mean:"]
    for key, value in settings.items():
        # as the command line takes them: it parses values as Python literals, so JSON's null is written None
        text = value if isinstance(value, str) else "None" if value is None else json.dumps(value, default=str)
        lines.append(f"  --{key} {shlex.quote(text)}")
        description = key_description(key, configs)
        if description:
            lines.append(f"      {description}")
    rules = [rule.text for rule in SETTING_RULES if rule.keys[0] in settings]
    if rules:
        lines.append("rules between these keys (each value may be allowed alone, not together):")
        lines += [f"  {text}" for text in rules]
    lines.append("and the network's settings as --network_def#<key>, e.g. --network_def#num_embeddings 256")
    print("\n".join(lines), flush=True)


def check_override_keys(argv: Sequence[str] | None = None) -> None:
    """Refuse ``--key value`` overrides whose key the config files do not define.

    ``monai.bundle`` adds an unknown key to the config, where nothing reads it, so a typo such as ``--max_epoch 3``
    would train with the default. A nested key (``--network_def#num_embeddings 256``) must exist too, or be an
    argument that its parent component's constructor takes (``--network_def#output_act sigmoid``).

    A ``None`` value is refused too where it is not allowed or where the config does not already hold null: MONAI's
    command line drops None values, so the configured value would silently apply.

    Args:
        argv: the command line; ``sys.argv`` when None. Nothing is checked unless it is a ``monai.bundle run`` one.

    Raises:
        SettingError: naming the unknown key and the nearest known one, or the key given None.
    """
    parsed = bundle_command_line(argv)
    if parsed is not None and parsed[1]:
        check_overrides(*parsed)


def check_overrides(pairs: Sequence[tuple[str, str | None]], files: Sequence[str]) -> None:
    """:func:`check_override_keys` of the overrides ``pairs`` of the config ``files``.

    Args:
        pairs: the overrides, each ``(key, its value as Python text or None)``.
        files: the config files they override.
    """
    from monai.bundle import ConfigParser

    config = ConfigParser(ConfigParser.load_config_files(files))
    for key in [key for key, _ in pairs]:
        parts = key.split("#")
        if key in config:
            continue
        # a new nested key may add an argument to a component's constructor (--network_def#output_act sigmoid), but
        # only one that the constructor takes: MONAI would otherwise fail with a traceback when building it
        parent_id = "#".join(parts[:-1])
        arguments = _component_arguments(config[parent_id]) if len(parts) > 1 and parent_id in config else None
        if arguments is _ANY_ARGUMENT or (arguments is not None and parts[-1] in arguments):
            continue
        depth = max(d for d in range(len(parts)) if d == 0 or "#".join(parts[:d]) in config)
        parent = "#".join(parts[:depth])
        content = config[parent] if depth else config.get()
        siblings = [str(k) for k in (content if isinstance(content, dict) else range(len(content)))]
        where = "no config file defines it"
        if arguments is not None:  # the parent is a component: its constructor's arguments are keys too
            siblings += sorted(arguments - set(siblings))
            where += f" and {content['_target_']} takes no argument '{parts[-1]}'"
        nearest = difflib.get_close_matches(parts[depth], siblings, n=1, cutoff=0.6)
        hint = "; python -m monai.bundle run help --config_file <the same configs> lists the keys"
        if nearest:
            hint = f"; did you mean --{parent + '#' if parent else ''}{nearest[0]}?"
        raise SettingError(f"unknown setting --{key}: {where}{hint}")
    for key, value in pairs:
        # MONAI's command line parses the text None as None, and then drops it (update_kwargs ignores None): the
        # run would silently keep the configured value, so a None is refused unless it is already what is configured
        if value is None or value.strip() != "None":
            continue
        expected = setting_error(key, None) if key in key_names() else None
        if expected is not None:
            raise SettingError(f"{key} must be {expected}, got None.")
        configured = config[key] if key in config else _NOT_CONFIGURED
        if isinstance(configured, str) and configured.startswith("$"):
            # a default that follows other settings (train_crop_size: 64, or image_size when smaller): its value
            configured = _configured_value(config, key, pairs)
        if configured is not None:
            kept = "its constructor's default" if configured is _NOT_CONFIGURED else json.dumps(configured)
            raise SettingError(
                f"--{key} None would be ignored: MONAI's command line drops None values, so {key} would stay "
                f"{kept}; set it to null in a JSON config file added last to --config_file."
            )


def _configured_value(config: Any, key: str, pairs: Sequence[tuple[str, str | None]]) -> Any:
    """The value an expression ``key`` of the configs takes with the command line's other literal overrides."""
    overrides = {}
    for name, text in pairs:
        if name != key and text is not None and text.strip() != "None":
            try:
                overrides[name] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                overrides[name] = text  # as MONAI's command line passes text that is no Python literal
    config.update(overrides)
    try:
        return config.get_parsed_content(key, instantiate=False)
    except Exception:  # an expression that needs more than the settings: say what the config says
        return config[key]


# a new nested key's value in the config: none, its constructor's default applies
_NOT_CONFIGURED = object()

#: :func:`_component_arguments` of a component whose constructor takes ``**kwargs``: any new key may be an argument
_ANY_ARGUMENT: frozenset[str] = frozenset({"**"})

# keys MONAI reads itself from a component's config, never passed to its constructor
_COMPONENT_KEYS = frozenset({"_target_", "_disabled_", "_requires_", "_desc_", "_mode_"})


def _component_arguments(content: Any) -> frozenset[str] | None:
    """The keys a config component (a dict with ``_target_``) accepts: its constructor's arguments and MONAI's own.

    Args:
        content: the raw config content of the parent of a nested override key.

    Returns:
        None when ``content`` is not a component; :data:`_ANY_ARGUMENT` when its constructor takes ``**kwargs`` or
        cannot be inspected (then nothing is refused that might be valid); else the argument names.
    """
    from pydoc import locate

    from monai.bundle import ComponentLocator

    if not isinstance(content, dict) or not isinstance(content.get("_target_"), str):
        return None
    target = content["_target_"]
    # a short name (Compose, DataLoader) is looked up in MONAI's modules, as MONAI does when it builds the component
    module = ComponentLocator().get_component_module_name(target)
    module = module[0] if isinstance(module, list) else module
    try:
        component = locate(f"{module}.{target}" if module else target)
        parameters = inspect.signature(component).parameters.values() if component is not None else None
    except Exception:  # pydoc's ErrorDuringImport, a signature it cannot read: build errors are MONAI's to report
        parameters = None
    if parameters is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return _ANY_ARGUMENT
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    return frozenset(names | _COMPONENT_KEYS)


def config_bundle_root(default: str | None = None) -> str:
    """The default ``bundle_root``: the bundle folder of the config files, as an absolute path.

    The bundle folder is the folder above ``configs/`` of the first config file (or that file's folder when it is
    not in a ``configs/`` folder), so that the bundle works from any working directory. It is known from the MONAI
    ``ConfigWorkflow`` evaluating the config (``python -m monai.bundle run``, ``monai.bundle.run``,
    ``create_workflow``); a bare ``ConfigParser`` does not record where its files came from: there ``bundle_root``
    must be set, rather than the run writing outputs and demo data below whatever the working directory is.

    Args:
        default: a bundle folder, relative to the working directory, to use when the config files' folder is not
            known; None refuses instead.

    Raises:
        SettingError: when the config files' folder is not known and no ``default`` is given.
    """
    root = getattr(running_workflow(), "config_root_path", None)
    if root is not None:
        root = Path(root).expanduser().absolute()
        return str(root.parent if root.name == "configs" else root)
    if default is not None:
        return str(Path(default).expanduser().absolute())
    raise SettingError(
        "bundle_root must be set when the config is parsed without a monai.bundle workflow (a ConfigParser does not "
        "record where its config files are), e.g. parser['bundle_root'] = '/path/to/monai_vqbrain/bundle'."
    )


def run_bundle(run_id: str, config_file: str | Sequence[str], **override: Any) -> Any:
    """``monai.bundle.run`` from Python, with the command line's checks and the project's own errors.

    MONAI wraps an error raised while it evaluates a config in a ``RuntimeError`` ("Failed to evaluate
    ConfigExpression"), and adds a misspelt keyword to the config unnoticed: here the overrides are checked as
    ``python -m monai.bundle run`` checks them, and a user error (:class:`~monai_vqbrain.errors.SettingError`,
    :class:`~monai_vqbrain.errors.DatasetError` ...) is raised as itself, after the run's output locks are released.

    Args:
        run_id: the workflow to run (``training``, ``evaluating``, ``inferring``, ``training_prior``, ``generating``).
        config_file: the config file or files, base first.
        override: override keys and their values, as ``--key value`` on the command line.

    Raises:
        VQBrainError: the run's user error: a setting, a data set, a checkpoint ...
    """
    from monai.bundle import ConfigParser, run

    from ..errors import find_user_error
    from .run_lock import release_output_locks

    files = [str(config_file)] if isinstance(config_file, (str, Path)) else [str(f) for f in config_file]
    for file in files:
        if not Path(file).is_file():
            raise SettingError(f"config_file '{file}' does not exist or is not a file.")
        try:
            ConfigParser.load_config_file(file)  # JSON or YAML, as MONAI reads it
        except Exception as error:  # JSON's and YAML's syntax errors, an unknown suffix, an unreadable file
            raise SettingError(f"config_file '{file}' cannot be read as a config: {error}.") from None
    check_overrides([(key, repr(value)) for key, value in override.items()], files)
    try:
        return run(run_id, config_file=files, **override)
    except BaseException as error:
        release_output_locks()  # MONAI's run does not finalize after an error: the next run here may start
        user_error = find_user_error(error)
        if user_error is None:
            raise
        raise user_error  # noqa: B904 - its own cause is kept; Python cuts the cycle back to MONAI's wrapper
