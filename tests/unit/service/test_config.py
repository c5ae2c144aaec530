import pytest

from graft.service.config import ConfigError, ServeConfig


def test_defaults_and_buckets(monkeypatch):
    for name in ("GRAFT_MODELS", "GRAFT_MAX_BATCH_SIZE", "GRAFT_DEFAULT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    config = ServeConfig()
    assert config.models == ("tf_efficientnet_lite0",)
    assert config.batch_buckets() == (1, 2, 4, 8, 16, 32)
    assert config.providers[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize("size, buckets", [(1, (1,)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8))])
def test_buckets_end_at_the_max_batch_size(monkeypatch, size, buckets):
    monkeypatch.setenv("GRAFT_MAX_BATCH_SIZE", str(size))
    assert ServeConfig().batch_buckets() == buckets


def test_models_list_is_comma_separated(monkeypatch):
    monkeypatch.setenv("GRAFT_MODELS", " a , b=/x/y ,")
    assert ServeConfig().models == ("a", "b=/x/y")


@pytest.mark.parametrize("value, message", [("many", "integer"), ("0", ">= 1")])
def test_bad_values_name_the_variable(monkeypatch, value, message):
    monkeypatch.setenv("GRAFT_MAX_BATCH_SIZE", value)
    with pytest.raises(ConfigError, match=f"GRAFT_MAX_BATCH_SIZE.*{message}"):
        ServeConfig()


def test_secrets_come_from_mounted_files(monkeypatch, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "keys").write_text("key-one\nkey-two, key-three\n")
    monkeypatch.delenv("GRAFT_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("GRAFT_API_KEYS", raising=False)
    monkeypatch.setenv("GRAFT_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("GRAFT_API_KEYS_FILE", str(tmp_path / "keys"))
    config = ServeConfig()
    assert config.admin_token == "s3cret" and config.api_keys == ("key-one", "key-two", "key-three")
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize("env, message", [
    ({"GRAFT_ADMIN_TOKEN": "a", "GRAFT_ADMIN_TOKEN_FILE": "/etc/hostname"}, "one of GRAFT_ADMIN_TOKEN and GRAFT_ADMIN_TOKEN_FILE"),
    ({"GRAFT_API_KEYS_FILE": "/nonexistent/keys"}, "GRAFT_API_KEYS_FILE to name a readable file"),
    ({"GRAFT_LOG_FORMAT": "xml"}, "GRAFT_LOG_FORMAT to be one of plain, json, got 'xml'"),
])
def test_bad_secrets_and_log_settings_name_the_variable(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        ServeConfig()
