"""Issue 19.9: credentials inside ``--base-url`` (``http://user:key@host``, ``?api_key=``) were written in clear
to config.resolved.yaml, the manifest's argv and llm_cache.sqlite; a key pasted into ``--api-key-env`` was
refused with a message that echoed it. A real harmonize run against the loopback fake server, then every byte
of the artifact is searched for the secrets."""

from __future__ import annotations

import sys

from devide import cli
from devide.config import REDACTED, config_hash, dump_resolved, load_config
from knowledge.config import HarmonizeConfig
from knowledge.fake_server import FakeOpenAIServer
from tests.knowledge.conftest import harmonize

USER_SECRET = "sk-live-UserinfoSecret0123456789"
QUERY_SECRET = "QuerySecretAbc987654321"


def test_no_credential_from_base_url_reaches_any_artifact_file(tmp_path, report_root, monkeypatch):
    with FakeOpenAIServer() as server:
        url = server.base_url.replace("http://", f"http://alice:{USER_SECRET}@")
        monkeypatch.setattr(sys, "argv", ["devide", "harmonize", "--base-url", url, "--set",
                                          f"base_url={url}?api_key={QUERY_SECRET}"])
        result, _ = harmonize(tmp_path / "kb", backend="openai", base_url=url, model="m", reports=report_root,
                              entities=["pleural_effusion"])
        assert server.requests, "the run must really have called the server"
    files = [p for p in result.out.rglob("*") if p.is_file()]
    assert {"config.resolved.yaml", "manifest.json", "llm_cache.sqlite"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        assert USER_SECRET.encode() not in data and QUERY_SECRET.encode() not in data, path
    resolved = (result.out / "config.resolved.yaml").read_text()
    assert f"base_url: http://{REDACTED}@127.0.0.1:" in resolved


def test_resolved_config_redacts_query_credentials_and_keeps_clean_urls_and_hashes(tmp_path):
    dirty = HarmonizeConfig(backend="openai", model="m", base_url=f"https://h.example/v1?api_key={QUERY_SECRET}&x=1")
    dump_resolved(dirty, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert QUERY_SECRET not in text and f"api_key={REDACTED}&x=1" in text
    clean = HarmonizeConfig(backend="openai", model="m", base_url="https://h.example/v1")
    dump_resolved(clean, tmp_path / "d.yaml")
    assert "base_url: https://h.example/v1\n" in (tmp_path / "d.yaml").read_text()
    # The same endpoint with another key is the same config (a rotated key does not rerun a stage).
    rotated = HarmonizeConfig(backend="openai", model="m", base_url="https://h.example/v1?api_key=Other1&x=1")
    assert config_hash(rotated) == config_hash(dirty)


def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(tmp_path, capsys):
    code = cli.main(["harmonize", "--api-key-env", USER_SECRET, "--out", str(tmp_path / "kb")])
    err = capsys.readouterr().err
    assert code == 2 and "api_key_env" in err and "NAME of an environment variable" in err
    assert USER_SECRET not in err and len(err.strip().splitlines()) == 1
    # The same through a config file and --set.
    (tmp_path / "h.yaml").write_text(f"api_key_env: {USER_SECRET}\n")
    assert cli.main(["harmonize", "--config", str(tmp_path / "h.yaml"), "--out", str(tmp_path / "kb")]) == 2
    assert USER_SECRET not in capsys.readouterr().err
    try:
        load_config(HarmonizeConfig, overrides={"temperature": USER_SECRET})
    except ValueError as exc:
        assert USER_SECRET not in str(exc) and "temperature" in str(exc)
    else:
        raise AssertionError("a secret-shaped temperature must be refused")


def test_the_privacy_refusal_names_the_endpoint_without_its_credentials(tmp_path, report_root):
    import pytest

    from devide.stage import StageError

    url = f"http://alice:{USER_SECRET}@10.255.255.1:9/v1"
    with pytest.raises(StageError, match="refusing to send report-derived text") as info:
        harmonize(tmp_path / "kb", backend="openai", base_url=url, model="m", reports=report_root,
                  entities=["pleural_effusion"])
    assert USER_SECRET not in str(info.value) and "10.255.255.1" in str(info.value)
