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
