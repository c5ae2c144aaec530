"""graft's log records on a server's stderr: plain lines, or one JSON object per line."""

from __future__ import annotations

import json
import logging

import pytest

from graft.service import logs


@pytest.fixture
def graft_logger():
    logger = logging.getLogger("graft")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_json_lines_parse_and_carry_the_fields(graft_logger, capsys):
    logs.configure("json", "INFO")
    logging.getLogger("graft.service.errors").info("%d %s %s: %s", 400, "POST", "/classify", "bad image")
    logging.getLogger("graft.service.app").debug("not at INFO")
    (line,) = capsys.readouterr().err.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "INFO" and record["name"] == "graft.service.errors"
    assert record["message"] == "400 POST /classify: bad image" and record["time"] and record["process"]


def test_plain_lines_once_each_even_when_configured_twice(graft_logger, capsys):
    logs.configure("plain", "DEBUG")
    logs.configure("plain", "DEBUG")
    logging.getLogger("graft.service.heads").debug("head shoes served")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert " DEBUG graft.service.heads[" in line and line.endswith("]: head shoes served")
