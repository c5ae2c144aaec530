"""`graft serve` checks its models before starting anything."""

import os
import re

import pytest

from graft.cli import build_parser, main
from graft.service.config import ServeConfig
from tests.synthetic import NAME

# Lists and paths have flags of their own or stay in the environment; secrets always do.
_OWN_FLAGS = {"models": "--model", "default_model": "--default", "heads": "--head", "heads_dir": "--heads-dir"}
_ENV_ONLY = {"providers", "trt_cache_dir", "admin_token", "admin_token_file", "api_keys", "api_keys_file"}


def test_serve_refuses_a_missing_model_with_one_line(tmp_path, capsys):
    code = main(["serve", "--model", str(tmp_path / "nothing"), "--port", "0"])
    assert code == 2
    assert "expected an artifact directory with manifest.json" in capsys.readouterr().err


def test_serve_refuses_an_unknown_default(tiny_classifier, capsys, monkeypatch):
    monkeypatch.delenv("GRAFT_DEFAULT_MODEL", raising=False)
    code = main(["serve", "--model", str(tiny_classifier), "--default", "other"])
    assert code == 2
    assert f"expected the default model to be one of [{NAME!r}], got 'other'" in capsys.readouterr().err


def test_tuning_flags_come_from_the_settings(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    def has(flag: str) -> bool:
        return re.search(rf"{flag}\b(?!-)", help_text) is not None

    for name, field in ServeConfig.model_fields.items():
        derived = "--" + name.replace("_", "-")
        if name in _OWN_FLAGS:
            assert has(_OWN_FLAGS[name]), name
        elif name in _ENV_ONLY:
            assert not has(derived), name
        else:
            assert has(derived) and f"(sets GRAFT_{name.upper()}" in help_text, name
            assert " ".join(field.description.split()[:5]) in help_text, name


@pytest.mark.parametrize("argv, message", [
    (["--max-batch-size", "0"], "argument --max-batch-size: expected an integer >= 1, got '0'"),
    (["--heads-poll-ms", "often"], "argument --heads-poll-ms: expected an integer >= 50, got 'often'"),
    (["--log-format", "xml"], "argument --log-format: expected one of plain, json, got 'xml'"),
])
def test_tuning_flags_are_checked_as_their_settings(capsys, argv, message):
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["serve", *argv])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_tuning_flags_set_their_variables(tmp_path, monkeypatch):
    for name in ("GRAFT_MAX_QUEUE", "GRAFT_TRACING", "GRAFT_LOG_FORMAT", "GRAFT_MODELS"):
        monkeypatch.setenv(name, "")  # restored after the test: serve() writes os.environ
    code = main(["serve", "--model", str(tmp_path / "nothing"), "--max-queue", "7", "--tracing", "--log-format", "json"])
    assert code == 2  # the model is missing, after the flags became variables
    assert (os.environ["GRAFT_MAX_QUEUE"], os.environ["GRAFT_TRACING"], os.environ["GRAFT_LOG_FORMAT"]) == ("7", "1", "json")


def test_serve_refuses_a_bad_variable_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRAFT_MAX_QUEUE", "many")
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "graft serve: error: expected GRAFT_MAX_QUEUE to be an integer >= 1, got 'many'"
    ]

