"""`data.dataset = "imagefolder"`: a researcher's own folder, whatever its class names, image modes
and layout, with masks beside it and nothing written into it."""

from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from prunexplain.config import UserError, load_settings
from prunexplain.data import check_root, splits_of
from prunexplain.data.loaders import decode, object_masks, scan_split
from prunexplain.experiments import KINDS, display_name, file_label
from prunexplain.pipeline import run_pipeline
from prunexplain.runs import Run
from tests.imagefolder import ODD_CLASSES, write_image_folder


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("flat"), per_class=(7, 3), flat=True)


def _data(root, *overrides):
    return load_settings(None, ['data.dataset="imagefolder"', f'data.root="{root}"', *overrides]).data


def test_every_mode_decodes_to_the_pixels_of_its_greyscale_or_colour_original(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert Image.open(tmp_path / "16bit.png").mode.startswith("I")
    sixteen = decode(tmp_path / "16bit.png", 20)
    assert sixteen.shape == (20, 20, 3) and np.abs(sixteen[..., 0].astype(int) - grey).max() <= 1  # not white
    assert np.array_equal(decode(tmp_path / "rgba.png", 20), rgb)  # alpha dropped
    assert np.abs(decode(tmp_path / "cmyk.tif", 20).astype(int) - rgb).max() <= 1
    assert decode(tmp_path / "palette.png", 20).shape == (20, 20, 3)


def test_one_folder_is_divided_per_class_by_the_shares_and_the_seed(flat):
    splits = splits_of(_data(flat), flat)
    assert list(splits.train.classes) == sorted(ODD_CLASSES)
    parts = [set(map(str, s.paths)) for s in (splits.train, splits.valid, splits.test)]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 10 * len(ODD_CLASSES)  # disjoint, complete
    for split, expected in ((splits.train, 7), (splits.valid, 1), (splits.test, 2)):
        assert [split.labels.count(k) for k in range(len(ODD_CLASSES))] == [expected] * len(ODD_CLASSES)
    assert splits_of(_data(flat), flat) == splits  # deterministic
    other = splits_of(_data(flat, "data.split_seed=1"), flat)
    assert set(map(str, other.test.paths)) != parts[2]
    masks = object_masks(splits.test, 32)  # PNG masks of JPEG and PNG images, same relative paths
    assert masks.shape == (len(splits.test), 32, 32) and 0 < masks.mean() < 0.5
    assert all(m.suffix == ".png" and "masks" in m.parts for m in splits.test.masks)


def test_bad_folders_and_shares_are_one_line(tmp_path, flat):
    with pytest.raises(UserError, match="data.split"):
        _data(flat, "data.split=[0.5, 0.2, 0.2]")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no class folders"):
        check_root(_data(tmp_path / "empty"), Run(tmp_path / "run"))
    few = write_image_folder(tmp_path / "few", classes=("a", "b"), per_class=(1, 1), flat=True)
    with pytest.raises(UserError, match=r"few/a: 2 image\(s\); data.split needs at least 3"):
        splits_of(_data(few), few)
    (flat / "masks" / ODD_CLASSES[0] / "000.png").rename(tmp_path / "moved.png")
    try:
        with pytest.raises(UserError, match=r"000.png: no object mask for this image"):
            scan_split(flat, "")
    finally:
        (tmp_path / "moved.png").rename(flat / "masks" / ODD_CLASSES[0] / "000.png")


def test_class_names_become_safe_stimulus_names_that_parse_back_and_read_as_given():
    for kind in KINDS.values():
        models = ("nonpruned", "2pruned")[: len(kind.shows)]
        for label in ODD_CLASSES:
            name = kind.stimulus_name(3, label, models)
            assert quote(name) == name and "/" not in name
            parsed = kind.parse_name(name)
            assert parsed["label"] == file_label(label) and parsed["image"] == "3"
    assert len({file_label(label) for label in ODD_CLASSES}) == len(ODD_CLASSES)
    assert file_label("0-fish") == "0-fish" and file_label("3-plus") == "3-plus"  # the study's names stay
    assert [display_name(c) for c in ("x_y", "Golden Retriever", "0-fish", "3-plus")] == [
        "X y", "Golden Retriever", "Fish", "Plus"]


def test_a_run_writes_nothing_into_the_dataset_folder(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=("a b", "c"), per_class=(6, 4))
    before = sorted(p for p in root.rglob("*"))
    settings = load_settings(None, [
        f'run.root="{tmp_path / "runs"}"', 'data.dataset="imagefolder"', f'data.root="{root}"',
        "data.image_size=32", "model.width=0.0625", "train.epochs=1", "runtime.progress=false",
    ])
    run = Run(settings.run_dir)
    run_pipeline(settings, run, until="train")
    assert sorted(p for p in root.rglob("*")) == before
    assert len(list(run.cache_dir.glob("*.npy"))) == 3  # train, valid, test decoded under the run
