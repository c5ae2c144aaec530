"""GRAFT_INTRA_OP_SPINNING: measured at start by default; the old 0/1 switch still means off/on."""

import pytest

from graft.service.config import ConfigError, ServeConfig


@pytest.mark.parametrize(("value", "expected"), [
    (None, {"intra_op_spinning": None, "spin_between_runs": False}),
    ("0", {"intra_op_spinning": False, "spin_between_runs": False}),
    ("1", {"intra_op_spinning": True, "spin_between_runs": True}),
    ("run", {"intra_op_spinning": True, "spin_between_runs": False}),
])
def test_spinning_setting_as_the_runner_takes_it(monkeypatch, value, expected):
    monkeypatch.delenv("GRAFT_INTRA_OP_SPINNING", raising=False)
    if value is not None:
        monkeypatch.setenv("GRAFT_INTRA_OP_SPINNING", value)
    assert ServeConfig().session_spinning() == expected


def test_an_unknown_spinning_mode_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("GRAFT_INTRA_OP_SPINNING", "always")
    with pytest.raises(ConfigError, match="expected GRAFT_INTRA_OP_SPINNING to be one of auto, off, run, on, got 'always'"):
        ServeConfig()
