"""Typed stage configs: YAML + overrides -> a validated pydantic model, with one-line errors.

Every stage declares a subclass of :class:`StageConfig`. Unknown keys are rejected (``extra="forbid"``), types
are checked, and any failure surfaces as a :class:`ConfigError` whose message is a single line naming the key.
Strings of the form ``${env:NAME}`` are read from the environment; the *resolved* config written beside an
artifact keeps the placeholder, never the value, and secret-looking keys are redacted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError

ENV_PATTERN = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
REDACTED = "***REDACTED***"
_SECRET_NAME = re.compile(r"(^|_)key$|token|secret|password|passwd|credential", re.IGNORECASE)
# Query parameters that carry credentials in URLs (``?api_key=``, ``&token=``, ``?sig=``...).
_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|auth|credential|sig|signature|session",
                           re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# What an API key or token looks like when pasted where a name belongs: a known prefix, or a long run of
# letters and digits mixed (an environment variable NAME is upper-case words and underscores).
_SECRET_VALUE = re.compile(r"^(sk|pk|rk|hf|ghp|gho|ghu|ghs|ghr|glpat|xox[abpr])[-_][-_A-Za-z0-9]{16,}$"
                           r"|^AKIA[0-9A-Z]{16}$|^AIza[-_0-9A-Za-z]{35}$"
                           r"|^(?=.*[a-z])(?=.*[A-Z])(?=.*[0-9])[-_A-Za-z0-9]{32,}$")


class ConfigError(ValueError):
    """A bad config: the message is one line, meant for the user (CLI exits 2 without a traceback)."""


class StageConfig(BaseModel):
    """Base of every stage config: strict keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    out: Path | None = Field(None, description="artifact folder of the stage (built in OUT.partial, renamed when "
                                                "complete); the pipeline runner sets it from its workdir")
    """Artifact folder of the stage. The runner sets it from the pipeline's ``workdir``."""

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    """The values as written (before ``${env:...}`` resolution), so dumps never leak the environment."""


C = TypeVar("C", bound=BaseModel)


def is_secret_key(name: str) -> bool:
    """True for keys named like ``*_key``, ``*token*``, ``*secret*``, ``*password*``."""
    return bool(_SECRET_NAME.search(name))


def looks_like_secret(value: Any) -> bool:
    """True for a string shaped like an API key or token (``sk-...``, ``hf_...``, long mixed alphanumerics)."""
    return isinstance(value, str) and bool(_SECRET_VALUE.match(value.strip()))


def redact_url(url: str) -> str:
    """``http://user:key@host/v1?api_key=K&x=1`` -> ``http://***REDACTED***@host/v1?api_key=***REDACTED***&x=1``:
    credentials in the userinfo and in secret-named query parameters never reach a file or a log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted (:func:`redact_url`); a lone secret-shaped token replaced."""
    if looks_like_secret(text):
        return REDACTED
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line safe to record: URLs redacted, and secret-shaped values (also after ``--x=``) replaced."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        out.append(f"{flag}{eq}{redact_text(value)}" if eq or not flag else arg)
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted="a.b"``, creating mappings on the way."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{key}' is not a mapping")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as YAML so numbers, booleans and lists work."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def interpolate_env(value: Any) -> Any:
    """Replace ``${env:NAME}`` / ``${env:NAME:-default}`` in every string of a nested structure."""
    if isinstance(value, dict):
        return {k: interpolate_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v) for v in value]
    if isinstance(value, str) and "${env:" in value:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (referenced as {match.group(0)})")

        return ENV_PATTERN.sub(substitute, value)
    return value


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first error of a pydantic ValidationError as one line that names the key."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "<root>"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(model.model_fields))
        return f"unknown config key '{loc}' for {model.__name__} (allowed: {allowed}){more}"
    if err["type"] == "missing":
        return f"missing required config key '{loc}' for {model.__name__}{more}"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if is_secret_key(loc) or "key" in loc.lower() or looks_like_secret(got):
        shown = "a value that is not shown, as it may be a secret"
    elif isinstance(got, str):
        shown = repr(redact_text(got))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"invalid config key '{loc}': {err['msg']} (got {shown}){more}"


def build_config(model: type[C], data: dict[str, Any]) -> C:
    """Validate ``data`` (env placeholders resolved) into ``model``; raise :class:`ConfigError` on failure."""
    try:
        cfg = model.model_validate(interpolate_env(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model)) from None
    if isinstance(cfg, StageConfig):
        cfg._raw = data  # so the resolved dump never contains what came from the environment
    return cfg


def load_config(
    model: type[C],
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> C:
    """Load ``model`` from an optional YAML file, then apply dotted-key ``overrides`` (CLI wins)."""
    data = read_yaml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return build_config(model, data)


def _redact(value: Any, raw: Any, key: str = "") -> Any:
    if key and is_secret_key(key) and value not in (None, ""):
        return REDACTED
    if isinstance(raw, str) and "${env:" in raw:
        return redact_text(raw)  # keep the placeholder, not the environment's value
    if isinstance(value, str):
        return redact_text(value)  # credentials inside URLs (http://user:key@host, ?api_key=)
    if isinstance(value, dict):
        raw_map = raw if isinstance(raw, dict) else {}
        return {k: _redact(v, raw_map.get(k), str(k)) for k, v in value.items()}
    if isinstance(value, list):
        raw_list = raw if isinstance(raw, list) else []
        return [_redact(v, raw_list[i] if i < len(raw_list) else None) for i, v in enumerate(value)]
    return value


def resolved_dict(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain data, safe to write: secrets redacted, env placeholders kept, paths as strings."""
    data = cfg.model_dump(mode="json")
    data = _mask_secret_str(cfg, data)
    raw = cfg._raw if isinstance(cfg, StageConfig) else {}
    return _redact(data, raw)


def _mask_secret_str(cfg: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, SecretStr):
            data[name] = REDACTED if value.get_secret_value() else ""
        elif isinstance(value, BaseModel) and isinstance(data.get(name), dict):
            data[name] = _mask_secret_str(value, data[name])
    return data


def dump_resolved(cfg: BaseModel, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(resolved_dict(cfg), sort_keys=False), encoding="utf-8")


def config_hash(cfg: BaseModel, exclude: tuple[str, ...] = ("out",)) -> str:
    """sha256 of the resolved config (minus ``exclude``), stable across key order."""
    data = {k: v for k, v in resolved_dict(cfg).items() if k not in exclude}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
