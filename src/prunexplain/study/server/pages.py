"""HTML of the study: Jinja2 templates with autoescaping on, so every id, label and text is escaped.

Templates live here as strings (no package data to install). Script and style are served as files
(/static/study.js, /static/study.css) because the pages forbid inline code (security.HEADERS).
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import DictLoader, Environment, StrictUndefined

from prunexplain.study.server.catalog import NONE, Experiment

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><link rel="stylesheet" href="/static/study.css"></head>
<body><main>{% block body %}{% endblock %}</main><script src="/static/study.js"></script></body></html>
"""

_CONSENT = """{% extends "base" %}{% block body %}
<h1>Welcome to a short picture study</h1>
<p>Computer programs that recognise objects in images can also show which parts of an image they
looked at. In this study you judge such pictures. There are no right or wrong answers, except on a
few marked check questions.</p>
<ul>
<li>You will answer about {{ tasks }} short questions, one picture each; most people need a few
seconds per picture.</li>
<li>We store your answers, the time each one took, and your participant id{% if participant %}
(<span id="participant-id">{{ participant }}</span>){% endif %}. Nothing else about you is recorded.</li>
<li>Taking part is voluntary. You can stop at any time by closing this page.</li>
<li>At the end you get a completion code.</li>
</ul>
<form method="post" action="/consent">
<input type="hidden" name="participant" value="{{ participant }}">
<input type="hidden" name="source" value="{{ source }}">
<label class="agree"><input type="checkbox" name="agree" value="yes" id="agree" required>
I have read the above and agree to take part.</label>
<button type="submit" id="consent-button">Continue</button>
</form>
{% endblock %}"""

_INSTRUCTIONS = """{% extends "base" %}{% block body %}
<h1>How it works</h1>
{% if "exp2" in kinds %}
<h2>Guess the object</h2>
<p>Most of the image is hidden; only a few patches are left visible. Those patches are what a
recognition program found most useful. Pick the object you think the image shows. If you cannot
tell, or it is none of the listed objects, pick <em>None of these</em>.</p>
{% endif %}
{% if "exp1" in kinds %}
<h2>Compare two algorithms</h2>
<p>Each picture has three panels: <strong>Algorithm 1</strong> on the left, the <strong>original
image</strong> in the middle and <strong>Algorithm 2</strong> on the right. Both algorithms named the
same object, written above the panels. The side panels show which parts of the image each algorithm
relied on: the visible (or brightly coloured) parts. Decide whose choice of parts makes more sense
for recognising that object. If both seem equally sensible, or equally poor, pick
<em>Equally reasonable</em>.</p>
{% endif %}
<h2>Keys</h2>
<ul>
{% if "exp1" in kinds %}<li>Algorithm 1: <kbd>1</kbd> or <kbd>&larr;</kbd>; Algorithm 2: <kbd>2</kbd> or
<kbd>&rarr;</kbd>; equally reasonable: <kbd>E</kbd> or <kbd>&darr;</kbd>.</li>{% endif %}
{% if "exp2" in kinds %}<li>Objects: the number before their name; none of these: <kbd>N</kbd>.</li>{% endif %}
<li>Then <kbd>Enter</kbd> for the next picture. Clicking works too.</li>
</ul>
<p>A few questions tell you exactly which answer to pick; please follow them. They show us that the
answers were given with care.</p>
<p><a class="button" href="/task" id="start">Start</a></p>
{% endblock %}"""

_TASK = """{% extends "base" %}{% block body %}
<p class="progress">Picture {{ number }} of {{ total }}</p>
<h1>{{ question }}</h1>
{% if check %}<p class="check" id="check">Check question: whatever the picture shows, choose
&ldquo;{{ check }}&rdquo;.</p>{% endif %}
<img class="stimulus" src="/stimuli/{{ key }}" alt="the picture to judge">
<form method="post" action="/task" id="answer-form">
<input type="hidden" name="submission_id" value="{{ submission_id }}">
<input type="hidden" name="position" value="{{ position }}">
<div class="options">
{% for option in options %}<label class="option"><input type="radio" name="answer" value="{{ option.value }}"
 data-keys="{{ option.keys }}" required><kbd>{{ option.hint }}</kbd> {{ option.label }}</label>
{% endfor %}</div>
<button type="submit" id="next">Next <kbd>Enter</kbd></button>
</form>
{% endblock %}"""

_MESSAGE = """{% extends "base" %}{% block body %}
<h1>{{ heading }}</h1><p id="message">{{ message }}</p>
{% if code %}<p>Your completion code: <strong id="completion-code">{{ code }}</strong></p>
<p>Copy it into the platform you came from. You can close this page now.</p>{% endif %}
{% if back %}<p><a href="{{ back }}">Back</a></p>{% endif %}
{% endblock %}"""

TEMPLATES = {"base": _BASE, "consent": _CONSENT, "instructions": _INSTRUCTIONS, "task": _TASK, "message": _MESSAGE}

SCRIPT = """(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  if (!form) { return; }
  var radios = Array.prototype.slice.call(form.querySelectorAll("input[type=radio]"));
  var sent = false;
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    sent = true;
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "Enter") {
      event.preventDefault();
      if (form.querySelector("input[type=radio]:checked")) { form.requestSubmit(); }
      return;
    }
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    radios.forEach(function (radio) {
      if (radio.dataset.keys.split(" ").indexOf(key) >= 0) {
        event.preventDefault();
        radio.checked = true;
        radio.focus();
      }
    });
  });
})();
"""

STYLE = """body { font-family: system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
main { max-width: 960px; margin: 0 auto; padding: 1.5rem; }
img.stimulus { display: block; max-width: 100%; margin: 1rem auto; image-rendering: pixelated; }
.options { display: flex; flex-wrap: wrap; gap: .5rem; justify-content: center; margin: 1rem 0; }
.option { border: 1px solid #999; border-radius: 6px; padding: .5rem .8rem; background: #fff; cursor: pointer; }
.option:has(input:checked) { border-color: #1a5fb4; background: #dbe8fb; }
kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 .3rem; font-size: .85em; background: #eee; }
.check { font-weight: bold; color: #8a3b00; }
.progress { color: #666; }
button, a.button { font-size: 1.1rem; padding: .5rem 1.2rem; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; }
"""


@dataclass(frozen=True)
class OptionView:
    value: str
    label: str
    keys: str  # KeyboardEvent.key values that choose it, space-separated
    hint: str


def option_views(experiment: Experiment) -> list[OptionView]:
    """The answer buttons of an experiment in screen order, with their keyboard shortcuts.

    Experiment 1 puts 'equally reasonable' between the two algorithms, as the panels are laid out;
    experiment 2's classes take the digit of their position, which is the class index of the
    study's labels ('0-fish' ... '9-parachute').
    """
    if experiment.kind == "exp1":
        return [
            OptionView("alg1", "Algorithm 1 (left)", "1 ArrowLeft", "1"),
            OptionView(NONE, "Equally reasonable", "e ArrowDown", "E"),
            OptionView("alg2", "Algorithm 2 (right)", "2 ArrowRight", "2"),
        ]
    views = []
    for index, option in enumerate(experiment.options):
        if option == NONE:
            views.append(OptionView(NONE, "None of these", "n", "N"))
        else:
            digit = str(index) if index < 10 else ""
            views.append(OptionView(option, class_name(option), digit, digit or "-"))
    return views


def class_name(label: str) -> str:
    """'3-plus' -> 'plus': the index prefix of a label is for sorting, not for participants."""
    head, _, tail = label.partition("-")
    return tail if head.isdigit() and tail else label


def option_label(experiment: Experiment, value: str) -> str:
    return next(view.label for view in option_views(experiment) if view.value == value)


def environment(extra: dict[str, str] | None = None) -> Environment:
    """Autoescaping on for every template, whatever its name; undefined names fail loudly."""
    loader = DictLoader({**TEMPLATES, **(extra or {})})
    return Environment(loader=loader, autoescape=True, undefined=StrictUndefined)
