"""docs/deviations.md and examples/study.toml tell the same story: every setting the table names as
restoring the original's behaviour is set so in the study's file, and every such setting exists."""

import re
import tomllib
from pathlib import Path

import pytest

from prunexplain.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "deviations.md"
STUDY = ROOT / "examples" / "study.toml"

# `section.key = value` in a table cell; `value` is TOML
SETTING = re.compile(r"`([a-z_]+\.[a-z_]+) = ([^`]+)`")


def restoring_settings() -> list[tuple[str, object]]:
    """Every `section.key = value` of the table's last column ("The original's behaviour")."""
    found = []
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and not set(cells[0]) <= {"-"}:
            for dotted, raw in SETTING.findall(cells[3]):
                found.append((dotted, tomllib.loads(f"v = {raw}")["v"]))
    return found


def test_the_table_names_settings():
    names = [dotted for dotted, _ in restoring_settings()]
    assert {"train.restore", "explain.upsample", "study.selection", "study.occlusion_count",
            "data.augment_at", "study.layout"} <= set(names)


@pytest.mark.parametrize(("dotted", "value"), restoring_settings())
def test_study_toml_sets_the_original_behaviour(dotted, value):
    settings = load_settings(STUDY)
    section, key = dotted.split(".")
    actual = getattr(getattr(settings, section), key)
    if isinstance(value, list):
        actual = [list(item) if isinstance(item, tuple) else item for item in actual]
    if hasattr(actual, "__fspath__"):
        actual = str(actual)
    assert actual == value, f"examples/study.toml: {dotted} is {actual!r}, docs/deviations.md says {value!r}"
