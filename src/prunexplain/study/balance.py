"""Counterbalancing, verified on the stimuli a build made before anything is written about them.

What a reviewer asks of the design, checked and recorded in the manifest (`counterbalancing`):
- experiment 1: every pair shows each of its models on the left on half of the images (one more
  where the count is odd), and within one image a pair puts the same model on the same side in
  every rendering (so the heatmap and occlusion batches differ only in the rendering);
- every stimulus is one HIT: each image shows each pair (experiment 1) or each model (experiment 2)
  exactly once, and each stimulus is one row of its input CSV, so the HIT's assignments, which
  MTurk gives to distinct workers, are the stimulus' distinct workers (`answers_per_stimulus` on
  the self-hosted study, which also never shows one participant two maps of one image in
  experiment 2: `study.server.assign`).
A violation stops the build with one line naming the experiment, the pair or model and the image.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from prunexplain.errors import UserError
from prunexplain.study.stimuli import Stimulus


def check_balance(stimuli: list[Stimulus], inputs: dict[str, list[str]]) -> dict:
    """Verify the design of `stimuli` (with `inputs`: each experiment's input CSV files in order)
    and return what the manifest records; a UserError names the first violation."""
    experiments = list(dict.fromkeys(s.experiment for s in stimuli))
    record = {}
    for key in experiments:
        own = [s for s in stimuli if s.experiment == key]
        _once_each(key, own)
        _one_row_each(key, own, inputs.get(key, []))
        record[key] = _sides(key, own) if own[0].left is not None else _maps(own)
    _same_sides_across(stimuli)
    return record


def _shown(stimulus: Stimulus) -> tuple[str, ...]:
    """What one stimulus shows, sides ignored: the pair in sorted order, or the model."""
    return tuple(sorted((stimulus.left, stimulus.right))) if stimulus.left is not None else (stimulus.model,)


def _once_each(key: str, stimuli: list[Stimulus]) -> None:
    seen = Counter((s.image, _shown(s)) for s in stimuli)
    twice = next(((image, shown) for (image, shown), n in seen.items() if n > 1), None)
    if twice:
        raise UserError(f"study build: counterbalancing: {key} shows {' vs '.join(twice[1])} on image {twice[0]} "
                        "more than once")
    images = {s.image for s in stimuli}
    for shown in {_shown(s) for s in stimuli}:
        missing = sorted(images - {s.image for s in stimuli if _shown(s) == shown})
        if missing:
            raise UserError(f"study build: counterbalancing: {key} lacks {' vs '.join(shown)} on image {missing[0]} "
                            f"({len(missing)} image(s) in all)")


def _one_row_each(key: str, stimuli: list[Stimulus], rows: list[str]) -> None:
    counts = Counter(rows)
    for stimulus in stimuli:
        if counts.get(stimulus.file, 0) != 1:
            raise UserError(f"study build: counterbalancing: {stimulus.file} is {counts.get(stimulus.file, 0)} rows "
                            f"of {key}'s input CSV, not one (one HIT per stimulus)")


def _sides(key: str, stimuli: list[Stimulus]) -> dict:
    left = defaultdict(Counter)
    for s in stimuli:
        left[_shown(s)][s.left] += 1
    pairs = []
    for (a, b), counts in left.items():
        if abs(counts[a] - counts[b]) > 1:
            raise UserError(f"study build: counterbalancing: {key} pair {a} vs {b} puts {a} left on {counts[a]} and "
                            f"{b} left on {counts[b]} images (at most one apart)")
        pairs.append({"a": a, "b": b, "a_left": counts[a], "b_left": counts[b]})
    return {"pairs": pairs, "images": len({s.image for s in stimuli})}


def _maps(stimuli: list[Stimulus]) -> dict:
    per_model = Counter(s.model for s in stimuli)
    return {"maps_per_model": dict(per_model), "images": len({s.image for s in stimuli}),
            "one_map_per_image_per_participant": "the self-hosted study's assignment; MTurk cannot restrict "
                                                 "a worker's HITs within one batch"}


def _same_sides_across(stimuli: list[Stimulus]) -> None:
    """A pair on one image keeps its sides in every experiment that compares."""
    first: dict[tuple, tuple[str, str]] = {}
    for s in stimuli:
        if s.left is None:
            continue
        where = (s.image, _shown(s))
        shown = first.setdefault(where, (s.experiment, s.left))
        if shown[1] != s.left:
            a, b = where[1]
            raise UserError(f"study build: counterbalancing: pair {a} vs {b} on image {s.image} has {shown[1]} left "
                            f"in {shown[0]} but {s.left} left in {s.experiment}")
