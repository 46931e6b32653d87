import base64
import io

import numpy as np
import pytest
from jinja2 import UndefinedError
from PIL import Image

from prunexplain.report.blocks import Cell, Table, interval, number, png_uri, pvalue
from prunexplain.report.page import Section, environment, prose, render_page, render_section


def _table(table: Table) -> str:
    return environment().from_string('{% from "macros.html" import table %}{{ table(t) }}').render(t=table)


def test_text_is_escaped_in_every_template():
    html = _table(Table.of(["<h>"], [[Cell("<b>x</b>", title='"quoted"', bad=True)], ["<s>"]]))
    assert '<td title="&#34;quoted&#34;" class="bad">&lt;b&gt;x&lt;/b&gt;</td>' in html
    assert "<th>&lt;h&gt;</th>" in html and "<td>&lt;s&gt;</td>" in html and html.count("<td") == 2
    assert prose("run `a <b>`") == "run <code>a &lt;b&gt;</code>"
    section = render_section(Section("settings", "<S>", {"name": "config.toml", "text": "# <script>"}))
    assert "&lt;S&gt;" in section and "<pre># &lt;script&gt;</pre>" in section and "<script" not in section
    assert environment().autoescape is True


def test_a_template_given_the_wrong_data_fails_instead_of_printing_nothing():
    with pytest.raises(UndefinedError):
        render_section(Section("settings", "Settings", {"name": "config.toml"}))


def test_numbers_read_well_and_missing_values_show_a_dash():
    assert number(630994, 0) == "630,994" and number("0.12345") == "0.123" and number(None) == "-"
    assert number(float("nan")) == "-" and pvalue(1.234e-7) == "1.23e-07"
    assert interval([0.1, 0.25]) == "10.0-25.0 %" and interval([None, 0.3]) == "-"


def test_pictures_are_downscaled_pngs_and_the_page_forbids_the_network():
    uri = png_uri(np.zeros((50, 400, 3), np.uint8), max_width=100)
    image = Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/png;base64,"))))
    assert image.format == "PNG" and image.size == (100, 12)
    html = render_page("<t>", "sub", [Section("a", "A", missing="run `x`")])
    assert "default-src 'none'; img-src data:" in html and "<title>&lt;t&gt;</title>" in html
    assert '<a href="#a">A</a> <em>(missing)</em>' in html and '<p class="missing">run <code>x</code></p>' in html
