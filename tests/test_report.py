import base64
import csv
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from prunexplain.cli import app
from prunexplain.config import ReportSettings, ServeSettings
from prunexplain.pipeline import run_pipeline
from prunexplain.report import write_report
from prunexplain.runs import Run, write_json
from prunexplain.study.preregistration import preregister
from prunexplain.verdict.stage import verdict_stage
from tests.browser import browser_page
from tests.conftest import tiny_settings
from tests.report.fixtures import add_analysis, add_study

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_dataset) -> Run:
    """A real tiny run (every stage up to the study) with hand-made study stimuli and analysed answers
    (the tiny models get too few images right for `study build`), markup planted in its files."""
    root = tmp_path_factory.mktemp("report")
    settings = tiny_settings(root, tiny_dataset)
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="evaluate")
    run.config.write_text(run.config.read_text() + f"# {SCRIPT}\n")
    images = run.explained_images
    with open(images, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["class"] = SCRIPT
    with open(images, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    add_study(run, images=2, label_prefix=SCRIPT)
    preregister(settings, run, ServeSettings(), now=SCRIPT)
    write_json(run.study.flow, {"consented": 9, "comprehension_passed": 8, "comprehension_failed": 1, "completed": 7,
                                "abandoned": 1, "analysed": 7, "excluded": {SCRIPT: 1}})
    add_analysis(run, root / "answers", {"exp1": "simulated", "exp2": "real"})
    verdict_stage(settings, run)  # the people's side from the answers above
    return run


class Images(HTMLParser):
    """The src of every <img> and the text of every element with class 'missing'."""

    def __init__(self) -> None:
        super().__init__()
        self.sources, self.missing, self._in_missing = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        self._in_missing = self._in_missing or attrs.get("class") == "missing"

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_missing = False

    def handle_data(self, data):
        if self._in_missing:
            self.missing.append(data)


def parsed(html: str) -> Images:
    parser = Images()
    parser.feed(html)
    return parser


def test_the_answer_states_the_people_beside_the_metrics_and_which_predict_them(full_run):
    html = write_report(full_run).path.read_text()
    answer = html.split("<section>")[1]
    # exp2's answers are marked real, exp1's simulated: each sentence names its source
    assert "People (exp2, real answers, local_magnitude_unstructured): recognition" in answer
    assert "People (exp1, simulated answers, local_magnitude_unstructured): preference" in answer
    assert "Which measures predict the people" in answer and "people exp2 recognition" in answer
    assert "intervals over images (one seed)" in answer
    assert "(one seed)" in html.split('id="metrics"')[1]  # the metrics' figures say over what they vary


def test_report_shows_every_section_of_a_full_run(full_run):
    result = write_report(full_run, ReportSettings(images=3, stimuli=2))
    html = result.path.read_text()
    assert result.path == full_run.report and result.missing == [] and len(result.sections) == 9
    assert result.size < 2e6 and result.summary() == f"{result.path} ({result.size / 1e3:.0f} kB), 9 sections"
    assert result.sections[0] == "Answer: how far can the model be pruned?"
    for anchor in ("answer", "settings", "training", "pruning", "metrics", "grid", "stimuli", "plan", "analysis"):
        assert f'id="{anchor}"' in html and f'href="#{anchor}"' in html
    assert "<details><summary>config.toml</summary>" in html and "[prune]" in html
    assert "test top-1" in html and "measured, pruned layers" in html and "top-1 before fine-tuning" in html
    assert html.count("<h3>local_magnitude_unstructured</h3>") == 2  # a table in pruning and in metrics
    assert "spearman to dense" in html and "Sanity check" in html
    assert "Simulated crowd" in html and "Real participants" in html and "Source of these answers unknown" in html
    assert "nonpruned vs 8pruned" in html and "p (Holm)" in html and "accuracy (CI)" in html
    assert "Krippendorff" in html and parsed(html).missing == []
    assert "Models: nonpruned (dense), 2pruned (local_magnitude_unstructured/cr_2)" in html


def test_every_image_is_an_inline_png(full_run):
    html = write_report(full_run, ReportSettings(images=3, stimuli=2)).path.read_text()
    sources = parsed(html).sources
    summaries = [json.loads(p.read_text()) for p in full_run.analysis_summaries().values()]
    models = 5  # dense and 2 methods x 2 rates
    plots = 5  # training curves, prune/accuracy.png, evaluate/metrics.png, evaluate/agreement.png, participant flow
    expected = plots + 3 * (1 + models) + 3 * 2 + sum(len(s["figures"]) for s in summaries)
    assert len(sources) == expected
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.removeprefix("data:image/png;base64,"))))
        assert image.format == "PNG" and image.width > 0
    assert "http://" not in html and "https://" not in html


def test_text_from_files_is_escaped(full_run):
    html = write_report(full_run).path.read_text()
    assert "<script" not in html.lower()
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # settings, grid, stimuli, classes


def test_grid_marks_the_wrong_predictions(full_run):
    html = write_report(full_run, ReportSettings(images=4)).path.read_text()
    with open(full_run.explained_images, newline="") as handle:
        labels = np.array([int(row["label"]) for row in csv.DictReader(handle)][:4])
    wrong = sum(int((np.load(full_run.predictions(key))[:4] != labels).sum()) for key in full_run.explained_models())
    assert html.count('class="wrong"') == wrong
    grid = html[html.index('id="grid"'):html.index('id="stimuli"')]
    assert grid.count("<th>x2</th>") == 2 and grid.count("<th>x8</th>") == 2  # one per pruning method


def test_missing_sections_name_the_command_that_makes_them(tmp_path):
    run = Run(tmp_path / "empty")
    run.root.mkdir()
    result = write_report(run)
    lines = parsed(result.path.read_text()).missing
    assert result.sections == [] and len(result.missing) == 9
    text = " ".join(lines)
    for command in ("prunexplain verdict",
                    "prunexplain train", "prunexplain prune", "prunexplain evaluate", "prunexplain explain",
                    "prunexplain study build", "prunexplain study preregister",
                    "analyses the answers in study/answers/"):
        assert command in text
    assert "(missing)" in result.path.read_text()


def test_cli_writes_the_report_and_names_bad_options(full_run):
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--run", str(full_run.root), "--images", "1", "--stimuli", "1"])
    assert result.exit_code == 0, result.output
    assert str(full_run.report) in result.output
    result = runner.invoke(app, ["report", "--run", str(full_run.root), "--images", "-1"])
    assert result.exit_code == 2 and "--images" in result.output
    result = runner.invoke(app, ["report", "--run", str(full_run.root / "nope")])
    assert result.exit_code == 2 and "no such run directory" in result.output


def test_report_opens_offline_in_a_browser(full_run, tmp_path):
    path = write_report(full_run).path
    with browser_page() as page:
        requests, errors = [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(path.as_uri(), wait_until="load")
        sizes = page.eval_on_selector_all("img", "images => images.map(i => [i.complete, i.naturalWidth])")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        details_open = page.eval_on_selector("details", "d => d.open")
    assert len(sizes) > 20 and all(complete and width > 0 for complete, width in sizes)
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert errors == []  # a resource the content security policy refused would be logged here
    with Image.open(tmp_path / "report.png") as screenshot:
        assert screenshot.height > 2000  # the whole page, not one screen
    assert details_open is False  # settings collapsed
