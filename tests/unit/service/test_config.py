import os
from pathlib import Path

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


def test_unset_and_empty_variables_give_the_documented_defaults(monkeypatch):
    for name in [name for name in os.environ if name.startswith("GRAFT_")]:  # other suites' settings
        monkeypatch.delenv(name)
    for name in ("GRAFT_MODELS", "GRAFT_HEADS_DIR", "GRAFT_MAX_QUEUE", "GRAFT_TRT_CACHE_DIR", "GRAFT_API_KEYS"):
        monkeypatch.setenv(name, "")
    config = ServeConfig()
    assert config.models == ("tf_efficientnet_lite0",) and config.heads_dir is None and config.max_queue == 128
    assert config.trt_cache_dir == Path.home() / ".cache" / "graft" / "tensorrt" and config.api_keys == ()
    assert config.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert (config.workers, config.max_latency_ms, config.max_request_bytes, config.cache_mb) == (1, 10_000, 64 << 20, 0)
    assert (config.log_format, config.log_level, config.access_log, config.tracing) == ("plain", "INFO", False, False)


def test_values_are_typed(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAFT_HEADS_DIR", str(tmp_path))
    monkeypatch.setenv("GRAFT_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("GRAFT_TRACING", "1")
    monkeypatch.setenv("GRAFT_INTRA_OP_THREADS", "3")
    config = ServeConfig()
    assert config.heads_dir == tmp_path and config.providers == ("CPUExecutionProvider",)
    assert config.tracing is True and config.session_threads() == 3


def test_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("GRAFT_MAX_BATCH_SIZE", "4")
    assert ServeConfig(max_batch_size=2).batch_buckets() == (1, 2)


@pytest.mark.parametrize("name, value, message", [
    ("GRAFT_HEADS_POLL_MS", "10", "expected GRAFT_HEADS_POLL_MS to be an integer >= 50, got '10'"),
    ("GRAFT_CACHE_MB", "-1", "expected GRAFT_CACHE_MB to be an integer >= 0, got '-1'"),
    ("GRAFT_TRACING", "2", "expected GRAFT_TRACING to be 0 or 1, got '2'"),
    ("GRAFT_LOG_LEVEL", "verbose", "expected GRAFT_LOG_LEVEL to be one of DEBUG, INFO, WARNING, ERROR, got 'verbose'"),
])
def test_each_constraint_is_refused_in_words(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        ServeConfig()
    assert str(refused.value) == message


def test_several_bad_values_are_one_line(monkeypatch):
    monkeypatch.setenv("GRAFT_WORKERS", "0")
    monkeypatch.setenv("GRAFT_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as refused:
        ServeConfig()
    assert str(refused.value) == (
        "expected GRAFT_WORKERS to be an integer >= 1, got '0'; "
        "expected GRAFT_LOG_FORMAT to be one of plain, json, got 'xml'"
    )


def test_secrets_stay_out_of_repr(monkeypatch):
    monkeypatch.setenv("GRAFT_ADMIN_TOKEN", "t0ken")
    monkeypatch.setenv("GRAFT_API_KEYS", "k3y-a,k3y-b")
    text = repr(ServeConfig()) + str(ServeConfig())
    assert "t0ken" not in text and "k3y" not in text


def test_both_api_key_sources_are_refused(monkeypatch, tmp_path):
    (tmp_path / "keys").write_text("a\n")
    monkeypatch.setenv("GRAFT_API_KEYS", "b")
    monkeypatch.setenv("GRAFT_API_KEYS_FILE", str(tmp_path / "keys"))
    with pytest.raises(ConfigError, match="^expected one of GRAFT_API_KEYS and GRAFT_API_KEYS_FILE, got both$"):
        ServeConfig()


def test_the_readme_documents_every_variable():
    table = (Path(__file__).parents[3] / "README.md").read_text().split("**Configuration**")[1].split("\n## ")[0]
    missing = [name for name in ServeConfig.model_fields if f"`GRAFT_{name.upper()}`" not in table]
    assert not missing


def test_one_batch_at_a_time_unless_more_are_asked_for(monkeypatch):
    monkeypatch.delenv("GRAFT_CONCURRENT_BATCHES", raising=False)
    assert ServeConfig().concurrent_batches == 1
    monkeypatch.setenv("GRAFT_CONCURRENT_BATCHES", "2")
    assert ServeConfig().concurrent_batches == 2
    monkeypatch.setenv("GRAFT_CONCURRENT_BATCHES", "0")
    with pytest.raises(ConfigError, match="GRAFT_CONCURRENT_BATCHES"):
        ServeConfig()
