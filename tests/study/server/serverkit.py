"""Helpers of the study-server tests: a study folder built by hand after the `study build` contract,
the server over it as a real `prunexplain study serve` process, and a participant's page forms.
`join` consents and passes the comprehension check through the API (the right answers come from the
experiment spec, as for a participant who read the instructions)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.bench_study_server import server_process
from prunexplain.study.server.comprehension import questions

CLASSES = ["0-disk", "1-square", "2-triangle", "3-plus"]
MODELS = ["nonpruned", "2pruned", "32pruned"]
PAIRS = [("nonpruned", "2pruned"), ("nonpruned", "32pruned"), ("2pruned", "32pruned")]
TOKEN = "test-admin-token-0123456789"


def build_study(folder: Path, images: int = 4, classes: list[str] = CLASSES) -> Path:
    """Tiny PNGs and a manifest.json as `study build` writes them: exp1, exp1_heatmap, exp2."""
    stimuli = []
    for i in range(images):
        label = classes[i % len(classes)]
        for key in ("exp1", "exp1_heatmap"):
            for p, (a, b) in enumerate(PAIRS):
                left, right = (a, b) if (i + p) % 2 else (b, a)
                stimuli.append({"experiment": key, "file": f"{key}/{i}_{left}_{label}_{right}.png", "image": i,
                                "label": label, "left": left, "right": right})
        for model in MODELS:
            stimuli.append({"experiment": "exp2", "file": f"exp2/{i}_{label}_{model}.png", "image": i,
                            "label": label, "model": model})
    for n, stimulus in enumerate(stimuli):
        path = folder / stimulus["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 4), (n % 256, 40, 90)).save(path)
    experiments = {
        key: {"kind": kind, "variant": variant, "folder": key, "input": f"{key}_input.csv",
              "layout": f"layouts/{key}.html", "options": ["alg1", "alg2", "none"] if kind == "exp1" else
              [*classes, "none"], "question": "Which algorithm is more reasonable?" if kind == "exp1" else
              "What is on the picture?"}
        for key, kind, variant in (("exp1", "exp1", "occlusion"), ("exp1_heatmap", "exp1", "heatmap"),
                                   ("exp2", "exp2", "occlusion"))
    }
    manifest = {"classes": classes, "models": {m: {} for m in MODELS}, "experiments": experiments, "stimuli": stimuli}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def browser(client: TestClient) -> TestClient:
    """A second cookie jar on the same running app (no second lifespan, so the same store)."""
    return TestClient(client.app)


def join(client: TestClient, worker: str = "", source: str = "mturk", comprehend: bool = True) -> httpx.Response:
    """Consent as `worker` (empty: a generated id), then pass the comprehension check if the server
    asks it (unless not `comprehend`); the session cookie stays in the client. Returns the consent's response."""
    response = client.post("/consent", data={"participant": worker, "source": source, "agree": "yes"},
                           follow_redirects=False)
    if comprehend and response.status_code == 303 and response.headers["location"] == "/instructions":
        pass_comprehension(client)
    return response


def answer_key(study) -> dict[str, str]:
    """The comprehension check's right answers for every experiment of `study` (a catalog.Study), by question id."""
    return {q.id: q.answer for q in questions(study.experiments.values())}


def pass_comprehension(client: TestClient | httpx.Client, key: dict[str, str] | None = None) -> bool:
    """Take the comprehension check through the API with the right answers (`key`; a TestClient's own
    study by default) when the server asks for it; whether it asked."""
    asked = client.get("/api/comprehension").json()
    if not asked["required"]:
        return False
    key = key if key is not None else answer_key(client.app.state.study)
    result = client.post("/api/comprehension", json={"answers": {q["id"]: key[q["id"]] for q in asked["questions"]}})
    assert result.status_code == 200 and result.json()["passed"], result.text
    return True


@contextlib.contextmanager
def live_server(run_dir: Path, *options: str, env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`prunexplain study serve` in its own process on a free port of 127.0.0.1, with the test token
    (and `env`); yields (base URL, process)."""
    with server_process(run_dir, *options, env={"PRUNEXPLAIN_ADMIN_TOKEN": TOKEN, **(env or {})}) as running:
        yield running


def task_form(html: str) -> dict:
    """The hidden fields and answer options of a task page."""
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
    return {**hidden, "options": re.findall(r'name="answer" value="([^"]*)"', html)}


def answer_all(client: TestClient, pick=lambda form: form["options"][0]) -> list[httpx.Response]:
    """Answer every task through the pages' forms; returns the responses to the form posts."""
    posts = []
    while (page := client.get("/task", follow_redirects=False)).status_code == 200:
        form = task_form(page.text)
        data = {"submission_id": form["submission_id"], "position": form["position"], "answer": pick(form)}
        posts.append(client.post("/task", data=data, follow_redirects=False))
        assert posts[-1].status_code == 303, posts[-1].text
    assert page.headers["location"] == "/done"
    return posts
