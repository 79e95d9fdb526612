"""Config validation: unknown keys, wrong types, missing files, env placeholders and secrets."""

from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from devide.config import (
    REDACTED,
    ConfigError,
    StageConfig,
    config_hash,
    load_config,
    parse_override,
    resolved_dict,
)


class Nested(StageConfig):
    depth: int = 2


class ExampleConfig(StageConfig):
    n_studies: int = 10
    seed: int = 0
    name: str = "demo"
    api_key: str | None = None
    hf_token: SecretStr | None = None
    base_url: str = "http://127.0.0.1:8080/v1"
    nested: Nested = Nested()


def write_yaml(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_is_named_in_one_line(tmp_path):
    path = write_yaml(tmp_path, {"n_studies": 3, "n_studys": 4})
    with pytest.raises(ConfigError) as info:
        load_config(ExampleConfig, path)
    message = str(info.value)
    assert "n_studys" in message and "unknown config key" in message
    assert "\n" not in message


def test_unknown_nested_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"nested\.dpth"):
        load_config(ExampleConfig, overrides={"nested.dpth": 3})


def test_wrong_type_names_key_and_value(tmp_path):
    path = write_yaml(tmp_path, {"n_studies": "many"})
    with pytest.raises(ConfigError) as info:
        load_config(ExampleConfig, path)
    assert "'n_studies'" in str(info.value) and "'many'" in str(info.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(ExampleConfig, tmp_path / "absent.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(ExampleConfig, bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(ExampleConfig, broken)


def test_overrides_win_over_file_and_are_coerced(tmp_path):
    path = write_yaml(tmp_path, {"n_studies": 3, "nested": {"depth": 5}})
    cfg = load_config(ExampleConfig, path, {"n_studies": "7", **dict([parse_override("nested.depth=9")])})
    assert cfg.n_studies == 7 and cfg.nested.depth == 9


def test_env_placeholder_is_resolved_but_never_dumped(monkeypatch):
    monkeypatch.setenv("DEVIDE_TEST_URL", "http://10.1.2.3:9999/v1")
    cfg = load_config(ExampleConfig, overrides={"base_url": "${env:DEVIDE_TEST_URL}"})
    assert cfg.base_url == "http://10.1.2.3:9999/v1"
    dumped = resolved_dict(cfg)
    assert dumped["base_url"] == "${env:DEVIDE_TEST_URL}"
    assert "10.1.2.3" not in yaml.safe_dump(dumped)


def test_missing_env_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("DEVIDE_SURELY_UNSET", raising=False)
    with pytest.raises(ConfigError, match="DEVIDE_SURELY_UNSET"):
        load_config(ExampleConfig, overrides={"name": "${env:DEVIDE_SURELY_UNSET}"})


def test_secret_keys_are_redacted_and_do_not_change_the_hash():
    a = load_config(ExampleConfig, overrides={"api_key": "sk-live-123", "hf_token": "hf_abcdef"})
    b = load_config(ExampleConfig, overrides={"api_key": "sk-other-456", "hf_token": "hf_zzz"})
    dumped = resolved_dict(a)
    assert dumped["api_key"] == REDACTED and dumped["hf_token"] == REDACTED
    assert "sk-live-123" not in str(dumped) and "hf_abcdef" not in str(dumped)
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load_config(ExampleConfig, overrides={"seed": 1}))


def test_urls_lose_their_credentials_and_nothing_else():
    from devide.config import REDACTED, redact_argv, redact_text, redact_url

    assert redact_url("http://user:sk-abc@10.0.0.1:8000/v1?api_key=XYZ&x=1") == (
        f"http://{REDACTED}@10.0.0.1:8000/v1?api_key={REDACTED}&x=1")
    assert redact_url("https://h.example/v1?token=T&access_token=U") == (
        f"https://h.example/v1?token={REDACTED}&access_token={REDACTED}")
    for clean in ("http://127.0.0.1:8000/v1", "https://api.openai.com/v1?region=eu", "artifacts/demo2/train",
                  "/work/main/artifacts/demo2/prepare-data", "OPENAI_API_KEY", "meta-llama/Llama-3.1-8B-Instruct",
                  "b8db62e0c1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6", "xmcmic/Med-KEBERT"):
        assert redact_text(clean) == clean
    assert redact_text("sk-proj-abcdefghijklmnop1234") == REDACTED
    assert redact_text("hf_AbCdEfGhIjKlMnOpQrStUv") == REDACTED
    assert redact_argv(["devide", "harmonize", "--base-url=http://u:k@h/v1", "--api-key-env",
                        "sk-proj-abcdefghijklmnop1234", "--set", "base_url=http://h/?api_key=K", "--force"]) == [
        "devide", "harmonize", f"--base-url=http://{REDACTED}@h/v1", "--api-key-env", REDACTED, "--set",
        f"base_url=http://h/?api_key={REDACTED}", "--force"]
