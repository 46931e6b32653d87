"""Settings of `study serve`: defaults, then a TOML file's [serve] table, then command-line options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunexplain.config import ServeSettings, load_section


def load_serve_settings(config: Path | None = None, **options: Any) -> ServeSettings:
    """Options that are None keep the file's (or the default) value; errors name the source and key."""
    return load_section(ServeSettings, "serve", config, options)
