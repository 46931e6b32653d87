"""Settings of `study serve`: defaults, then a TOML file's [serve] table, then command-line options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from prunexplain.config import ServeSettings, UserError, read_toml


def load_serve_settings(config: Path | None = None, **options: Any) -> ServeSettings:
    """Options that are None keep the file's (or the default) value; errors name the source and key."""
    data: dict[str, Any] = {}
    source = "defaults"
    if config is not None:
        table = read_toml(config).get("serve", {})
        if not isinstance(table, dict):
            raise UserError(f"{config}: 'serve' must be a table, e.g. [serve]")
        data, source = dict(table), str(config)
        _validate(data, source)
    given = {key: value for key, value in options.items() if value not in (None, [])}
    data.update(given)
    return _validate(data, "options" if given else source)


def _validate(data: dict[str, Any], source: str) -> ServeSettings:
    try:
        return ServeSettings.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = "serve." + ".".join(str(part) for part in item["loc"])
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"{key}: {message} (got {item['input']!r})")
        raise UserError(f"{source}: " + "; ".join(problems)) from None
