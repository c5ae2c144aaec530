"""`graft serve` checks its models before starting anything."""

from graft.cli import main


def test_serve_refuses_a_missing_model_with_one_line(tmp_path, capsys):
    code = main(["serve", "--model", str(tmp_path / "nothing"), "--port", "0"])
    assert code == 2
    assert "expected an artifact directory with manifest.json" in capsys.readouterr().err


def test_serve_refuses_an_unknown_default(lite0_classifier, capsys, monkeypatch):
    monkeypatch.delenv("GRAFT_DEFAULT_MODEL", raising=False)
    code = main(["serve", "--model", str(lite0_classifier), "--default", "other"])
    assert code == 2
    assert "expected the default model to be one of ['tf_efficientnet_lite0'], got 'other'" in capsys.readouterr().err
