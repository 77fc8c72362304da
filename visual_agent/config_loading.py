"""Reading the daemon's config: a YAML file (or the packaged default), environment overrides, validation.

`load_config(path)` reads a YAML file (the packaged `default.yaml` when `path` is None), applies environment
overrides ``VISUAL_AGENT__<SECTION>__<KEY>[__<SUBKEY>]=value`` (the value is read as a YAML scalar, so numbers and
booleans work; a secret stays text) and validates it into a `Config`. Any unknown or mistyped key fails with a
`ConfigError` naming the key and the file, secrets masked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from providers.config import is_secret_key

from .config import Config
from .config_readers import masked
from .errors import ConfigError

__all__ = ["ENV_PREFIX", "PACKAGED_DEFAULT", "env_overrides", "load_config", "parse_config", "read_default_text"]

ENV_PREFIX = "VISUAL_AGENT__"
PACKAGED_DEFAULT = "default.yaml"


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested dict of ``VISUAL_AGENT__SECTION__KEY`` variables; values read as YAML scalars."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if len(parts) < 2:
            raise ConfigError(f"environment variable {name}: use {ENV_PREFIX}<SECTION>__<KEY>")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if is_secret_key(parts[-1]) and not isinstance(value, str):
            value = raw  # a numeric-looking password stays text
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: {part} is not a section")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, section by section (mappings merge; anything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key {key!r}")
        elif err["type"] == "section":  # a section another package checked: its message names the key
            lines.append(f"{where}: {masked(err['msg'])}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = "***" if is_secret_key(key) else repr(masked(err.get("input")))
            lines.append(f"{where}: {key}: {msg} (got {shown})")
    return "\n".join(lines)


def parse_config(data: Mapping[str, Any] | None, *, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate a config mapping (plus environment overrides) into a `Config`; `source` names it in errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    merged = merge(data, env_overrides(environ))
    try:
        return Config.model_validate({**merged, "path": source})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {masked(str(exc))}") from exc


def read_default_text() -> str:
    """The packaged default config (the same as configs/default.yaml)."""
    return resources.files("visual_agent").joinpath(PACKAGED_DEFAULT).read_text(encoding="utf-8")


def load_config(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load a YAML file (None: the packaged default), apply environment overrides, validate."""
    if path is None:
        text, source = read_default_text(), f"<packaged {PACKAGED_DEFAULT}>"
    else:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    return parse_config(data, source=source, environ=environ)
