import base64
import io

import numpy as np
from PIL import Image

from prunexplain.report.html import Raw, Section, esc, interval, number, page, png_uri, prose, pvalue, table, tag


def test_text_is_escaped_unless_built_by_the_helpers():
    cell = tag("td", "<b>x</b>", title='"quoted"')
    assert cell == '<td title="&quot;quoted&quot;">&lt;b&gt;x&lt;/b&gt;</td>'
    assert Raw("<i>") + "<b>" == "<i>&lt;b&gt;" and "<b>" + Raw("<i>") == "&lt;b&gt;<i>"
    assert isinstance(Raw("") + "x", Raw) and esc(Raw("<i>")) == "<i>"
    assert prose("run `a <b>`") == "run <code>a &lt;b&gt;</code>"
    assert table(["h"], [[cell], ["<s>"]]).count("<td") == 2 and "&lt;s&gt;" in table(["h"], [["<s>"]])


def test_numbers_read_well_and_missing_values_show_a_dash():
    assert number(630994, 0) == "630,994" and number("0.12345") == "0.123" and number(None) == "-"
    assert number(float("nan")) == "-" and pvalue(1.234e-7) == "1.23e-07"
    assert interval([0.1, 0.25]) == "10.0-25.0 %" and interval([None, 0.3]) == "-"


def test_pictures_are_downscaled_pngs_and_the_page_forbids_the_network():
    uri = png_uri(np.zeros((50, 400, 3), np.uint8), max_width=100)
    image = Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/png;base64,"))))
    assert image.format == "PNG" and image.size == (100, 12)
    html = page("<t>", "sub", [Section("a", "A", missing="run `x`")])
    assert "default-src 'none'; img-src data:" in html and "<title>&lt;t&gt;</title>" in html
    assert '<a href="#a">A</a> <em>(missing)</em>' in html and "<code>x</code>" in html
