import json

import numpy as np
import pytest
from PIL import Image

from prunexplain.config import SyntheticSettings, UserError
from prunexplain.data.synthetic import CLASSES, generate, render

SIZE = tuple(SyntheticSettings().object_size)


def test_same_seed_same_image_other_seed_other_image():
    a, mask_a = render(0, 0, 5, 3, 64, 5, SIZE)
    b, mask_b = render(0, 0, 5, 3, 64, 5, SIZE)
    c, _ = render(1, 0, 5, 3, 64, 5, SIZE)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(a, c)


def test_the_class_object_is_a_minority_of_the_image_and_its_mask_is_exact():
    for index in range(40):
        label = index % 10
        image, mask = render(0, 0, index, label, 64, 5, SIZE)
        inside = mask == 255
        assert 0.01 < inside.mean() < 0.25, CLASSES[label]
        # the object is one flat colour: pixels deep inside the mask barely vary, the image does
        core = np.asarray(Image.fromarray(mask).resize((64, 64)).filter(_erode())) == 255
        if core.sum() >= 10:
            assert image[core].std(axis=0).max() < 12, CLASSES[label]
        assert image.reshape(-1, 3).std(axis=0).max() > 20


def test_the_middle_of_every_class_object_lies_on_it():
    """What the pointing game needs: a map peaking at the middle of the object peaks on its mask
    (a ring's hole or a crescent's hollow would not)."""
    for label in range(len(CLASSES)):
        for index in range(5):
            _, mask = render(0, 0, index, label, 64, 0, SIZE)
            ys, xs = np.nonzero(mask)
            assert mask[round(ys.mean()), round(xs.mean())] == 255, CLASSES[label]


def _erode():
    from PIL import ImageFilter

    return ImageFilter.MinFilter(5)


def test_object_place_scale_and_colour_vary_within_a_class():
    centres, areas, colours = [], [], []
    for index in range(30):
        image, mask = render(0, 0, index, 1, 64, 5, SIZE)
        ys, xs = np.nonzero(mask)
        centres.append((xs.mean(), ys.mean()))
        areas.append(len(xs))
        colours.append(image[ys, xs].mean(axis=0))
    assert np.std(centres, axis=0).min() > 6
    assert max(areas) > 2 * min(areas)
    assert np.std(colours, axis=0).min() > 30


def test_generate_writes_an_image_folder_with_masks_and_skips_when_present(tmp_path):
    settings = SyntheticSettings(train_per_class=3, val_per_class=2)
    info = generate(settings, 48, tmp_path / "ds", progress=False)
    assert info.images == 50 and info.classes == CLASSES
    for split, count in (("train", 3), ("val", 2)):
        for label in CLASSES:
            images = sorted((tmp_path / "ds" / split / label).glob("*.png"))
            masks = sorted((tmp_path / "ds" / "masks" / split / label).glob("*.png"))
            assert len(images) == count and [m.name for m in masks] == [i.name for i in images]
            assert Image.open(images[0]).size == (48, 48)
            assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}
    manifest = tmp_path / "ds" / "dataset.json"
    stamp = manifest.stat().st_mtime_ns
    generate(settings, 48, tmp_path / "ds", progress=False)
    assert manifest.stat().st_mtime_ns == stamp
    assert json.loads(manifest.read_text())["settings"]["seed"] == 0
    assert not (tmp_path / ".ds.tmp").exists()


def test_written_files_are_the_rendered_ones(tmp_path):
    generate(SyntheticSettings(train_per_class=2, val_per_class=1), 32, tmp_path, progress=False)
    image, mask = render(0, 0, 2 * 4 + 1, 4, 32, SyntheticSettings().distractors, SIZE)
    stored = tmp_path / "train" / CLASSES[4] / "00009.png"
    assert np.array_equal(np.asarray(Image.open(stored)), image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "masks" / "train" / CLASSES[4] / "00009.png")), mask)


def test_a_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(UserError, match="is not a synthetic dataset"):
        generate(SyntheticSettings(train_per_class=1, val_per_class=1), 32, tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_a_file_or_a_path_through_a_file_is_refused_before_writing(tmp_path):
    file = tmp_path / "data"
    file.write_text("precious")
    settings = SyntheticSettings(train_per_class=1, val_per_class=1)
    with pytest.raises(UserError, match=f"{file}: is a file; the synthetic dataset needs a new or empty folder"):
        generate(settings, 32, file, progress=False)
    with pytest.raises(UserError, match=f"{file / 'inner'}: {file} is a file, so no folder can be made inside it"):
        generate(settings, 32, file / "inner", progress=False)
    assert file.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_damaged_manifest_rebuilds_the_dataset(tmp_path):
    settings = SyntheticSettings(train_per_class=1, val_per_class=1)
    generate(settings, 32, tmp_path / "ds", progress=False)
    (tmp_path / "ds" / "dataset.json").write_text("{")
    generate(settings, 32, tmp_path / "ds", progress=False)
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["images"] == 20


def test_object_size_sets_the_radius_range_of_the_class_object():
    """A disk of radius r covers pi r^2 of the image: the drawn radius follows `object_size`."""
    for low, high in ((0.12, 0.12), (0.25, 0.25)):
        areas = [render(0, 0, i, 0, 64, 0, (low, high))[1].mean() / 255 for i in range(4)]  # label 0: disk
        assert np.allclose(areas, np.pi * low * high, rtol=0.12), (low, areas)
    small = np.mean([render(0, 0, i, 4, 64, 5, (0.12, 0.15))[1].mean() for i in range(6)])
    large = np.mean([render(0, 0, i, 4, 64, 5, (0.2, 0.26))[1].mean() for i in range(6)])
    assert large > 2 * small
