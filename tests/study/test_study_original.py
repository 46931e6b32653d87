"""The original study's rules behind `study` settings: the selection of images (`selection`,
`images_csv`), the heatmap batch's own pairs (`heatmap_pairs`), the HIT buttons and the class names
people read. Each test's docstring states the rule it pins (see docs/deviations.md)."""

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from prunexplain.config import UserError
from prunexplain.data import class_names, dataset_root
from prunexplain.data.imagenette import CLASSES, DISPLAY_NAMES
from prunexplain.data.loaders import ImageSet, image_dataset, load_splits, stacked
from prunexplain.experiments import COMPARE, EXPERIMENTS, RECOGNISE, display_name
from prunexplain.models import load_checkpoint
from prunexplain.runs import ModelKey, StudyFolder
from prunexplain.study.build import build_study
from prunexplain.study.mturk import layout
from prunexplain.study.select import ID_SCHEMES, Selection, first, from_csv, loader_order, select
from prunexplain.study.stimuli import draw_sides, exp2_stimuli, shared_sides

IMAGENETTE = list(CLASSES.values())


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_first_selection_takes_the_first_images_of_each_class_in_the_shuffled_loader_order():
    """selection="first" (the original's experiments_prep.ipynb): a DataLoader over the test split with
    shuffle=True and generator=torch.Generator().manual_seed(seed) gives the order; per class the first
    `per_class` images every model gets right are taken, kept in that order (classes interleaved), and
    their ids are 1-based positions in that list. The order is the loader's own: it draws a base seed
    from the generator before its sampler's randperm, so it is not randperm from the same seed."""
    order = loader_order(100, 69, batch_size=50)
    loader = DataLoader(range(100), batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(69))
    assert order.tolist() == torch.cat(list(loader)).tolist()  # any batch size: the same order
    assert order.tolist() != torch.randperm(100, generator=torch.Generator().manual_seed(69)).tolist()
    assert sorted(order.tolist()) == list(range(100))

    labels = np.arange(100) % 3
    eligible = np.ones(100, bool)
    eligible[order[:4]] = False  # the loader's first four images are misclassified by some model
    chosen = first(labels, eligible, 2, order, ("a", "b", "c"))
    expected, taken = [], {0: 0, 1: 0, 2: 0}
    for index in order[4:]:
        if taken[labels[index]] < 2:
            expected.append(int(index))
            taken[labels[index]] += 1
    assert chosen.tolist() == expected
    with pytest.raises(UserError, match=r"study.per_class=40: .*\(a 3\d, b 3\d, c 3\d\)"):
        first(labels, eligible, 40, order, ("a", "b", "c"))

    images = ImageSet(tuple(Path(f"{i}.png") for i in chosen), tuple(labels[chosen].tolist()), ("a", "b", "c"))
    rows = Selection(tuple(chosen.tolist()), images, "first").rows()
    assert [row["image"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert {row["id_scheme"] for row in rows} == {ID_SCHEMES["first"]}
    assert [row["image"] for row in Selection(tuple(chosen.tolist()), images).rows()] == [0, 1, 2, 3, 4, 5]


def test_first_selection_of_a_run_follows_the_loader_order_of_its_test_split(study_run_template):
    """select(how="first") predicts the test split with every model and keeps the loader order."""
    settings, run = study_run_template
    test = load_splits(settings.data.root, settings.data.split_seed).test
    models = {key: load_checkpoint(run.checkpoint(ModelKey.parse(key)))[0] for key in settings.study.models}
    data = settings.data.model_copy(update={"image_size": 32})
    dataset = image_dataset(test, data, run.cache_dir, "test", settings.runtime)
    chosen = select(models, test, dataset, data, 1, 69, 16, "cpu", progress=False, how="first")
    order = loader_order(len(test), 69)
    # the fixture's models get every test image right: the first image of each class in loader order
    labels = np.asarray(test.labels)
    expected = [int(i) for n, i in enumerate(order) if labels[i] not in labels[order[:n]]]
    assert list(chosen.indices) == expected and chosen.ids == list(range(1, 11)) and chosen.scheme == "first"


def _test_split(tmp_path):
    root = tmp_path / "data"
    paths = []
    for label, name in enumerate(["0-disk", "1-square"]):
        for i in range(2):
            path = root / "val" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            paths.append(path)
    return root, ImageSet(tuple(paths), (0, 0, 1, 1), ("0-disk", "1-square"))


def _write_csv(path, rows, header="path,label"):
    path.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n")
    return path


def test_images_csv_shows_its_images_in_row_order_and_names_bad_rows(tmp_path):
    """images_csv: the test images a CSV lists (path relative to the dataset folder or absolute,
    label) are shown in its row order with 1-based row ids; a path that is no test image, an unknown
    label, a label the dataset does not give that image, a repeated image or a missing column stops
    with the file and the row."""
    root, test = _test_split(tmp_path)
    listed = _write_csv(tmp_path / "images.csv", [("val/1-square/0.png", "1-square"),
                                                  (str(test.paths[0]), "0-disk")])
    selection = from_csv(listed, test, root)
    assert selection.indices == (2, 0) and selection.ids == [1, 2] and selection.scheme == "csv"
    assert [row["label"] for row in selection.rows()] == [1, 0]
    bad = {
        "row 2: path 'val/0-disk/9.png' is not an image of the test split": [("val/1-square/0.png", "1-square"),
                                                                              ("val/0-disk/9.png", "0-disk")],
        r"row 1: unknown label '2-ring' \(labels: 0-disk, 1-square\)": [("val/0-disk/0.png", "2-ring")],
        "row 1: label '1-square', but the dataset labels 'val/0-disk/0.png' '0-disk'": [("val/0-disk/0.png",
                                                                                          "1-square")],
        "row 2: 'val/0-disk/0.png' repeats row 1": [("val/0-disk/0.png", "0-disk")] * 2,
    }
    for message, rows in bad.items():
        with pytest.raises(UserError, match=f"images.csv: {message}"):
            from_csv(_write_csv(tmp_path / "images.csv", rows), test, root)
    with pytest.raises(UserError, match="images.csv: no column label"):
        from_csv(_write_csv(tmp_path / "images.csv", [("val/0-disk/0.png",)], header="path"), test, root)
    with pytest.raises(UserError, match="study.images_csv: no such file"):
        from_csv(tmp_path / "missing.csv", test, root)


def test_a_study_of_listed_images_with_the_heatmap_batchs_own_pairs(study_run, tmp_path):
    """A build from images_csv names its stimuli by the CSV's 1-based rows; exp1_heatmap compares only
    study.heatmap_pairs (the original's heatmap batch: nonpruned against 2pruned and 32pruned), with
    the same model on the same side of an image as in exp1; occlusion_count="original" leaves
    int(0.1*H*W) - 1 pixels of each experiment 2 picture fully visible and one at its map value."""
    settings, run = study_run
    root = dataset_root(settings.data, run, progress=False)
    test = load_splits(root, settings.data.split_seed, class_names(settings.data)).test
    picks = [5, 0, 9]
    listed = _write_csv(tmp_path / "images.csv", [(str(Path(test.paths[i]).relative_to(root)),
                                                   test.classes[test.labels[i]]) for i in picks])
    study = settings.study.model_copy(update={
        "images_csv": listed, "heatmap_pairs": [("nonpruned", "32pruned")], "occlusion_count": "original"})
    result = build_study(settings.model_copy(update={"study": study}), run)
    assert result.images == 3 and result.stimuli == {"exp1": 9, "exp1_heatmap": 3, "exp2": 9}
    rows = _rows(run.study.selection)
    assert [int(row["test_index"]) for row in rows] == picks and [row["image"] for row in rows] == ["1", "2", "3"]
    assert {row["id_scheme"] for row in rows} == {ID_SCHEMES["csv"]}
    manifest = json.loads(run.study.manifest.read_text())
    heat = [s for s in manifest["stimuli"] if s["experiment"] == "exp1_heatmap"]
    assert {frozenset((s["left"], s["right"])) for s in heat} == {frozenset(("nonpruned", "32pruned"))}
    occluded = {(s["image"], s["left"], s["right"]) for s in manifest["stimuli"] if s["experiment"] == "exp1"}
    assert {(s["image"], s["left"], s["right"]) for s in heat} <= occluded
    assert sorted({s["image"] for s in manifest["stimuli"]}) == [1, 2, 3]

    exp2 = next(s for s in manifest["stimuli"] if s["experiment"] == "exp2" and s["image"] == 1)
    shown = np.asarray(Image.open(run.study.stimulus(exp2["file"])))[::7, ::7].astype(int)  # 32 px enlarged 7x
    original = stacked(test.subset([picks[0]]), 32)[0].permute(1, 2, 0).numpy().astype(int)
    assert (original > 0).any(-1).all()  # no black pixel: a visible pixel is one shown unchanged
    visible = (shown == original).all(-1)
    between = ~visible & (shown > 0).any(-1)
    assert visible.sum() == int(32 * 32 * 0.1) - 1 and between.sum() <= 1


def test_shared_sides_put_a_model_on_the_same_side_in_every_experiment():
    """The heatmap variant's pairs reuse the sides drawn for exp1 (a reversed pair the opposite
    rows); exp1's own rows are exactly those it drew before heatmap_pairs existed."""
    pairs = [("nonpruned", "2pruned"), ("nonpruned", "32pruned"), ("2pruned", "32pruned")]
    heat = [("32pruned", "nonpruned"), ("nonpruned", "2pruned"), ("2pruned", "64pruned")]
    occlusion, heatmap = shared_sides(21, [pairs, heat], 69)
    assert (occlusion == draw_sides(21, 3, 69)).all()
    assert (heatmap[0] == ~occlusion[1]).all() and (heatmap[1] == occlusion[0]).all()
    assert (heatmap[2] == draw_sides(21, 4, 69)[3]).all() and set(heatmap.sum(1)) <= {10, 11}


class _Buttons(HTMLParser):
    """The radio buttons of a page as (submitted value, label text), and its text a worker reads."""

    def __init__(self):
        super().__init__()
        self.buttons, self.text, self._value = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("type") == "radio":
            self._value = (attrs["name"], attrs["value"])

    def handle_data(self, data):
        self.text.append(data)
        if self._value and data.strip():
            self.buttons.append((*self._value, data.strip()))
            self._value = None


def test_hit_buttons_show_labels_and_submit_the_raw_answer_values():
    """The MTurk layouts show workers each option's label ("Algorithm 1 (left)", "Cassette Player")
    while the form submits the raw value (alg1, 2-cassetteplayer) as Answer.<group>.label, the column
    the analysis reads."""
    page = _Buttons()
    page.feed(layout(EXPERIMENTS["exp1"], IMAGENETTE))
    assert page.buttons == [("algorithms.label", "alg1", "Algorithm 1 (left)"),
                            ("algorithms.label", "none", "Equally reasonable"),
                            ("algorithms.label", "alg2", "Algorithm 2 (right)")]
    assert "alg1" not in " ".join(page.text)
    page = _Buttons()
    page.feed(layout(EXPERIMENTS["exp2"], IMAGENETTE))
    assert page.buttons == [*(("classes.label", c, DISPLAY_NAMES[c]) for c in IMAGENETTE),
                            ("classes.label", "none", "None of these")]
    assert "2-cassetteplayer" not in " ".join(page.text) and "Cassette Player, Chainsaw" in " ".join(page.text)


def test_people_read_the_class_names_the_original_showed():
    """The original's titles name Imagenette's classes exactly Fish, Dog, Cassette Player, Chainsaw,
    Church, Frenchhorn, Garbage Truck, Gaspump, Golfball, Parachute; other labels lose their index and
    are capitalised. The study server's options use the same names."""
    assert [display_name(c) for c in IMAGENETTE] == [
        "Fish", "Dog", "Cassette Player", "Chainsaw", "Church", "Frenchhorn", "Garbage Truck", "Gaspump",
        "Golfball", "Parachute"]
    assert display_name("3-plus") == "Plus" and display_name("triangle") == "Triangle"
    assert RECOGNISE.label("6-garbagetruck", IMAGENETTE) == "Garbage Truck"
    assert COMPARE.label("alg1") == "Algorithm 1 (left)"


def test_original_layout_of_experiment_2_pictures(tmp_path):
    """layout="original": each experiment 2 picture is the notebook's plt.imshow in the inline backend's
    6x4 in figure saved at 150 dpi, transparent: 900x600 px, the image about 453 px high."""
    folder = StudyFolder(tmp_path / "study")
    picture = np.random.default_rng(0).integers(1, 256, (1, 32, 32, 3), dtype=np.uint8)
    made = exp2_stimuli(EXPERIMENTS["exp2"], {"nonpruned": picture}, ["0-disk"], folder, False, [7], "original")
    assert made[0].file == "exp2/7_0-disk_nonpruned.png"
    with Image.open(folder.stimulus(made[0].file)) as image:
        assert image.size == (900, 600) and image.mode == "RGBA"
        alpha = np.asarray(image)[..., 3]
    rows = np.flatnonzero(alpha.any(1))
    assert alpha[0, 0] == 0 and 450 <= rows[-1] - rows[0] + 1 <= 456
