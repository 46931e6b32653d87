"""A researcher's own ImageFolder beyond the happy path: every image mode decoded to the right pixels,
masks non-zero on the object (and the synthetic masks exactly as before), small classes divided,
a read-only dataset folder, and odd class names through stimulus file names and back out of the
analysis."""

import os
import stat
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prunexplain.analysis.load import parse_tables
from prunexplain.analysis.preprocess import preprocessed_table
from prunexplain.analysis.run import analyze_run
from prunexplain.config import DataSettings, RuntimeSettings, UserError, load_settings, read_json
from prunexplain.data.loaders import AugmentedImages, ImageSet, decode, image_dataset, load_splits, object_masks
from prunexplain.experiments import KINDS, display_name, file_label, label_of_file
from prunexplain.runs import Run, write_json
from tests.imagefolder import ODD_CLASSES, write_image_folder


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("odd"), per_class=(6, 6))


def test_pil_turns_the_16_bit_images_white_and_decode_scales_them(odd):
    files = [p for p in sorted(odd.rglob("*.png")) if "masks" not in p.parts and Image.open(p).mode == "I;16"]
    assert files
    for path in files:
        raw = np.asarray(Image.open(path), np.float64)
        assert np.asarray(Image.open(path).convert("RGB")).mean() > 250  # PIL clips 16 bits at 255: white
        expected = Image.fromarray(np.round(raw / 257).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        got = decode(path, 32)
        assert (got[..., 0] == got[..., 2]).all() and np.abs(got[..., 0].astype(int) - np.asarray(expected)).max() <= 1


def _grey(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return rgb, np.asarray(Image.fromarray(rgb).convert("L"))


@pytest.mark.parametrize("mode", ["LA", "I;16B", "I", "F"])
def test_greyscale_modes_decode_to_their_grey_values(tmp_path, mode):
    rgb, grey = _grey(tmp_path)
    if mode == "LA":
        image, file = Image.fromarray(rgb).convert("LA"), "la.png"
    elif mode == "I;16B":
        image, file = Image.fromarray(grey.astype(">u2") * 257), "big.png"
    elif mode == "I":  # 32-bit integers: scaled by the image's maximum, here 255 * 1000
        image, file = Image.fromarray(np.where(grey == grey.max(), 255, grey).astype(np.int32) * 1000, "I"), "i.tif"
        grey = np.where(grey == grey.max(), 255, grey)
    else:  # float greyscale in 0..1, scaled by its maximum (1.0 here)
        grey = np.where(grey == grey.max(), 255, grey)
        image, file = Image.fromarray((grey / 255).astype(np.float32), "F"), "f.tif"
    image.save(tmp_path / file)
    got = decode(tmp_path / file, 16)
    assert np.abs(got.astype(int) - grey[..., None]).max() <= 1


def test_palette_with_transparency_keeps_its_colours_and_rgba_drops_alpha(tmp_path):
    rgb, _ = _grey(tmp_path)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "p.png", transparency=0)
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: the colours stay (alpha dropped, not composited)
    rgba.save(tmp_path / "a.png")
    assert np.array_equal(decode(tmp_path / "p.png", 16), np.asarray(palette.convert("RGB")))
    assert np.array_equal(decode(tmp_path / "a.png", 16), rgb)


def test_the_full_size_path_decodes_16_bit_images_as_decode_does(odd):
    path = next(p for p in sorted((odd / "train").rglob("*.png")) if Image.open(p).mode == "I;16")
    data = DataSettings(image_size=32, hflip=False, vflip=False, rotation=0, augment_at="full_size")
    item, _ = AugmentedImages(ImageSet((path,), (0,), ("a",)), data)[0]
    assert np.array_equal(item.permute(1, 2, 0).numpy(), decode(path, 32))


def test_a_truncated_file_is_one_line_naming_it(tmp_path, odd):
    source = next(p for p in sorted((odd / "train").rglob("*.jpeg")))
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.jpeg: cannot read image") as error:
        decode(cut, 32)
    assert "\n" not in str(error.value)


def _old_masks(images: ImageSet, size: int) -> np.ndarray:
    """The masks as read before non-zero counted: grey, bilinear resize, >= 128."""
    return np.stack([np.asarray(Image.open(m).convert("L").resize((size, size), Image.BILINEAR)) >= 128
                     for m in images.masks])


def test_the_synthetic_masks_read_exactly_as_before(tiny_dataset):
    val = load_splits(tiny_dataset).test
    for size in (24, 32, 45):
        assert np.array_equal(object_masks(val, size), _old_masks(val, size))


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "P"])
def test_any_non_zero_mask_value_is_the_object(tmp_path, mode):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "image.jpg")
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 1  # a class index, not 255
    if mode == "I;16":
        mask = Image.fromarray(label.astype(np.uint16))
    elif mode == "RGBA":  # colour plus an opaque alpha: alpha is no object
        mask = Image.fromarray(np.stack([label * 200, label * 0, label * 0, np.full_like(label, 255)], 2), "RGBA")
    elif mode == "P":  # palette: index 0 black, index 1 red
        mask = Image.fromarray(label, "P")
        mask.putpalette([0, 0, 0, 255, 0, 0])
    else:
        mask = Image.fromarray(label)
    (tmp_path / "masks").mkdir()
    mask.save(tmp_path / "masks" / "image.png")
    images = ImageSet((tmp_path / "image.jpg",), (0,), ("a",), (tmp_path / "masks" / "image.png",))
    got = object_masks(images, 20)[0]
    assert got.sum() == 100 and got[5:15, 5:15].all()


def test_small_classes_get_one_image_in_every_split_whatever_the_shares(tmp_path):
    root = write_image_folder(tmp_path / "small", classes=("a", "b c"), per_class=(2, 1), masks=False, flat=True)
    for shares in ([0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]):
        splits = load_splits(root, 3, None, shares)
        for split in (splits.train, splits.valid, splits.test):
            assert sorted(split.labels) == [0, 1]


def test_a_read_only_dataset_folder_loads_and_caches_under_the_run(tmp_path, odd):
    """Root ignores permissions, so the check that counts is that the folder's files stay as they were."""
    before = {p: p.stat().st_mtime_ns for p in odd.rglob("*")}
    modes = {p: p.stat().st_mode for p in [odd, *odd.rglob("*")] if p.is_dir()}
    for folder in modes:
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        splits = load_splits(odd, 69)
        data, runtime = DataSettings(image_size=32), RuntimeSettings(progress=False)
        dataset = image_dataset(splits.train, data, tmp_path / "run" / "cache", "train", runtime)
        assert len(dataset) == len(splits.train) and dataset[0][0].shape == (3, 32, 32)
    finally:
        for folder, mode in modes.items():
            os.chmod(folder, mode)
    assert {p: p.stat().st_mtime_ns for p in odd.rglob("*")} == before
    assert len(list((tmp_path / "run" / "cache").glob("train-32-*.npy"))) == 1


def test_file_labels_are_url_safe_unique_and_map_back():
    labels = [*ODD_CLASSES, "0-fish", "9-parachute", "0-disk", "a.b+c"]
    names = [file_label(label) for label in labels]
    assert names[len(ODD_CLASSES):] == labels[len(ODD_CLASSES):]  # safe labels (the study's) stay as they are
    assert len(set(names)) == len(names) and all(quote(n, safe="+") == n and "_" not in n for n in names)
    assert [label_of_file(n, labels) for n in names] == labels
    assert label_of_file("unknown-label", labels) == "unknown-label"
    assert [display_name(c) for c in ("x_y", "0-disk", "8-golfball")] == ["X y", "Disk", "Golfball"]


def _answers_table(kind, classes, layout):
    """One HIT per image, every option answered once, stimulus names made by the kind's scheme."""
    models = [("nonpruned", "2pruned"), ("32pruned", "nonpruned")] if kind.compares else [("nonpruned",), ("4pruned",)]
    rows = [{"HITId": f"H{i}", "WorkerId": f"W{worker}", "label": label, "answer": answer,
             "Input.image_url": "https://b.example/x/" + quote(kind.stimulus_name(i, label, models[i % 2]))}
            for i, label in enumerate(classes) for worker, answer in enumerate(kind.options(list(classes)))]
    table = pd.DataFrame(rows)
    if layout == "label column":
        table[kind.prefix + "label"] = table["answer"]
    else:
        for option, column in zip(kind.options(list(classes)), kind.columns(list(classes))):
            table[column] = (table["answer"] == option).map({True: "true", False: "false"})
    return table.drop(columns=["answer"]), rows


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
@pytest.mark.parametrize("layout", ["true/false columns", "label column"])
def test_the_analysis_reads_odd_class_names_back_from_stimulus_names(kind, layout):
    classes = sorted(ODD_CLASSES)
    table, rows = _answers_table(kind, classes, layout)
    given = () if kind.asks_class else classes  # exp1 files name no classes: the study's manifest does
    answers = parse_tables(kind.name, [("odd.csv", table.drop(columns=["label"]))], classes=given)
    assert answers.problems == [] and list(answers.frame["label"]) == [r["label"] for r in rows]
    assert answers.labels == classes
    if not kind.asks_class:  # without the manifest the file-name forms stand in for the labels
        alone = parse_tables(kind.name, [("odd.csv", table.drop(columns=["label"]))])
        assert sorted(alone.labels) == sorted(file_label(c) for c in classes)
    again = parse_tables(kind.name, [("pre.csv", preprocessed_table(answers).astype(str))])
    assert again.problems == [] and list(again.frame["label"]) == [r["label"] for r in rows]  # img_class names them


def test_a_runs_analysis_names_the_classes_of_its_manifest(tmp_path):
    """Experiment 1's answer files name no classes: the run's analysis takes them from the study's manifest."""
    settings = load_settings(None, [f'run.root="{tmp_path}"', "analysis.plots=false", "analysis.bootstrap=0"])
    run = Run(settings.run_dir)
    classes = sorted(ODD_CLASSES)
    table, _ = _answers_table(KINDS["exp1"], classes, "true/false columns")
    answers = tmp_path / "exp1.csv"
    table.drop(columns=["label"]).to_csv(answers, index=False)
    write_json(run.study.manifest, {"classes": classes})
    write_json(run.study.crowd, {"exp1": {"kind": "exp1", "files": [str(answers)], "source": "real"}})
    analyze_run(settings, run)
    summary = read_json(run.analysis("exp1") / "summary.json")
    assert sorted({row["class"] for row in summary["classes"]}) == classes
