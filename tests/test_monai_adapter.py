"""Pins the MONAI behaviour that ``monai_vqbrain.workflows.monai_adapter`` relies on beyond MONAI's public interface.

A MONAI upgrade that changes one of these fails here, by name, rather than silently in a bundle run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from monai.bundle import ConfigParser, ConfigWorkflow, create_workflow, update_kwargs

from monai_vqbrain.workflows.monai_adapter import (
    CONFIG_FILE_WARNING,
    FAILED_COMPONENT,
    MISSING_REFERENCE,
    bundle_command_line,
    running_parser,
    running_workflow,
)

ADAPTER = "monai_vqbrain.workflows.monai_adapter"


def _bundle(tmp_path: Path, content: dict) -> Path:
    """A minimal bundle folder: ``configs/config.json`` holding ``content``."""
    config = tmp_path / "mybundle" / "configs" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"imports": ["$import json", "$import monai_vqbrain", f"$import {ADAPTER}"], **content}))
    return config


def test_config_workflow_evaluates_its_config_from_its_own_methods(tmp_path):
    # running_workflow(): the ConfigWorkflow is on the call stack, as `self`, while its expressions are evaluated
    config = _bundle(tmp_path, {"initialize": [f"${ADAPTER}.running_workflow()",
                                               f"$str({ADAPTER}.running_workflow().config_root_path)"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = create_workflow(config_file=str(config), workflow_type=None, logging_file=False)
    assert isinstance(workflow, ConfigWorkflow)
    # config_root_path: the folder of the first config file, what bundle_root defaults to (its parent: configs/)
    assert workflow.initialize() == [workflow, str(config.parent)]
    # outside any workflow there is none (a bare ConfigParser has none either)
    assert running_workflow() is None
    assert ConfigParser(json.loads(config.read_text())).get_parsed_content("initialize#0") is None


def test_the_parser_evaluating_an_expression_is_on_the_call_stack(tmp_path):
    # running_parser(): the ConfigParser is `self` of get_parsed_content while it evaluates, driven by a workflow or
    # bare, and its resolver gives another key's value from inside the expression (what run_settings reads)
    content = {"epochs": 3, "seen": f"${ADAPTER}.running_parser().ref_resolver.get_resolved_content('epochs') + 1"}
    parser = ConfigParser({"imports": ["$import monai_vqbrain", f"$import {ADAPTER}"], **content})
    assert parser.get_parsed_content("seen") == 4
    config = _bundle(tmp_path, {**content, "initialize": ["@seen", f"${ADAPTER}.running_parser()"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = create_workflow(config_file=str(config), workflow_type=None, logging_file=False)
    assert workflow.initialize() == [4, workflow.parser]
    assert running_parser() is None


def test_overrides_are_merged_into_the_config_and_none_values_are_dropped(tmp_path):
    # why the command line is read: an unknown key is silently added, and a None value never reaches the config
    config = _bundle(tmp_path, {"max_epochs": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = create_workflow(config_file=str(config), workflow_type=None, logging_file=False, max_epoch=5,
                                   max_epochs=None)
    assert workflow.parser["max_epoch"] == 5 and workflow.parser["max_epochs"] == 3
    assert update_kwargs({}, batch_size=None) == {}


def test_the_bundle_command_line_is_python_m_monai_bundle_run(tmp_path):
    out = tmp_path / "command_line.json"
    config = _bundle(tmp_path, {"out": str(out), "flag": 1,
                                "run": f"$open(@out, 'w').write(json.dumps({ADAPTER}.bundle_command_line()))"})
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"['{config}']", "--flag", "2",
               "--meta_file=m.json", "--net#depth=None", "--logging_file", "False"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    pairs, files = json.loads(out.read_text())
    assert pairs == [["flag", "2"], ["net#depth", "None"]] and files == [str(config)]
    assert bundle_command_line(["pytest", "--flag", "2"]) is None


def test_monai_message_texts_the_one_line_errors_recognise(tmp_path):
    with pytest.raises(ValueError) as caught:
        ConfigParser({"a": "$@debug + 1"}).get_parsed_content("a")
    assert MISSING_REFERENCE.search(str(caught.value)).group(1) == "debug"

    with pytest.raises(RuntimeError) as caught:
        ConfigParser({"day": {"_target_": "datetime.date", "year": 0, "month": 1, "day": 1}}).get_parsed_content("day")
    assert FAILED_COMPONENT.match(str(caught.value)).group(1) == "datetime.date"
    assert isinstance(caught.value.__cause__, ValueError)

    config = _bundle(tmp_path, {})
    with pytest.warns(UserWarning, match=CONFIG_FILE_WARNING):
        create_workflow(config_file=str(config), workflow_type=None, logging_file=False)
