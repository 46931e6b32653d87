import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from prunexplain.explain.render import (
    Exp1Panels,
    exp1_panel,
    exp2_image,
    heatmap,
    occlude,
    original_visibility,
    top_pixels,
    visibility,
)


@pytest.mark.parametrize(("size", "share"), [(64, 0.10), (224, 0.10), (37, 0.25), (10, 0.05)])
def test_occlusion_keeps_exactly_p_percent_of_the_pixels(size, share):
    maps = torch.rand(5, size, size)
    maps[0] = 0  # all ties
    maps[1, :4] = 1  # a block of ties at the top
    masks = top_pixels(maps, share)
    assert (masks.flatten(1).sum(1) == round(share * size * size)).all()
    kept, dropped = maps[2][masks[2]], maps[2][~masks[2]]
    assert kept.min() >= dropped.max()


def test_ties_are_broken_by_pixel_order_deterministically():
    masks = top_pixels(torch.zeros(1, 10, 10), 0.1)
    assert masks[0, 0].all() and masks.sum() == 10
    assert torch.equal(top_pixels(torch.zeros(1, 10, 10), 0.1), masks)


def test_occlude_shows_only_the_kept_pixels():
    image = np.full((4, 4, 3), 200, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    out = occlude(image, mask)
    assert (out[1, 2] == 200).all() and out.sum() == 600


def test_heatmap_is_jet_blended_over_the_image():
    image = np.zeros((2, 2, 3), np.uint8)
    cam = np.array([[0.0, 0.0], [0.0, 1.0]])
    out = heatmap(image, cam, alpha=1.0)
    assert tuple(out[1, 1]) == (127, 0, 0)  # jet's top: dark red
    assert tuple(out[0, 0]) == (0, 0, 127)  # jet's bottom: dark blue
    assert (heatmap(image, cam, alpha=0.0) == 0).all()


def test_panels_are_written_as_pngs(tmp_path):
    picture = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    panel = exp1_panel(picture, picture, picture, "3-chainsaw", tmp_path / "exp1.png")
    single = exp2_image(picture, tmp_path / "exp2.png")
    with Image.open(panel) as image:
        assert image.size[0] > 2.5 * image.size[1]
    with Image.open(single) as image:
        assert image.size == (256, 256)
        assert np.array_equal(np.asarray(image)[::4, ::4], picture)


def test_panels_drawn_in_one_figure_equal_panels_drawn_alone(tmp_path):
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    other = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    alone = exp1_panel(*pictures, "0-disk", tmp_path / "alone.png")
    with Exp1Panels() as draw:
        draw(*other, "9-a-much-longer-label", tmp_path / "before.png")
        after = draw(*pictures, "0-disk", tmp_path / "after.png")
    assert alone.read_bytes() == after.read_bytes()
    assert alone.read_bytes() != (tmp_path / "before.png").read_bytes()


def test_original_occlusion_count_leaves_one_pixel_fewer_and_one_at_its_map_value():
    """occlusion_count="original" (gradcam/utils.py, create_occlusion): sort the map ascending, set the
    lowest N - int(0.1N) pixels to 0 and the pixels after the next one to 1, so int(0.1N) - 1 pixels
    are fully visible (5016 at 224x224) and the pixel at ascending rank N - int(0.1N) keeps its map
    value, drawn here as a blend at that value clipped to 0..1."""
    maps = torch.rand(2, 224, 224)
    weights = original_visibility(maps, 0.1)
    assert (weights == 1).flatten(1).sum(1).tolist() == [5016, 5016]
    flat = maps[0].flatten().numpy()
    ranked = np.argsort(flat)  # the rule, ascending: distinct values, so the order is unique
    cut = flat.size - int(flat.size * 0.1)
    expected = np.zeros_like(flat)
    expected[ranked[cut + 1:]] = 1
    expected[ranked[cut]] = flat[ranked[cut]]
    assert np.array_equal(weights[0].flatten().numpy(), expected)
    assert torch.equal(visibility(maps, 0.1, "round"), top_pixels(maps, 0.1))  # round(0.1N) = 5018 visible
    assert top_pixels(maps, 0.1).flatten(1).sum(1).tolist() == [5018, 5018]

    big = torch.arange(100.0).view(1, 10, 10) / 50  # 0..1.98: the pixel between is clipped to 1
    assert (original_visibility(big, 0.1) == 1).sum() == 10 and original_visibility(big / 2, 0.1).max() == 1
    assert original_visibility(big / 2, 0.1)[0, 9, 0] == pytest.approx(0.90)
    image = np.full((1, 2, 3), 201, np.uint8)
    assert occlude(image, np.array([[0.5, 1.0]]))[0].tolist() == [[100] * 3, [201] * 3]  # truncated as uint8
    assert np.array_equal(occlude(image, np.array([[0.0, 1.0]])), occlude(image, np.array([[False, True]])))


def test_heatmap_exponent_and_alpha_reproduce_the_original_overlay():
    """The original's overlay_heatmap colours jet(map ** 2) and blends 0.7 * image + 0.3 * colours,
    truncated to uint8: heatmap_exponent is the power of the 0..1-scaled map before the colour map,
    heatmap_alpha the weight of the colours."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cam = rng.random((16, 16))
    cam[0, 0], cam[0, 1] = 0, 1
    colours = matplotlib.colormaps["jet"](cam**2)[..., :3] * 255
    expected = (0.7 * image + 0.3 * colours).astype(np.uint8)
    assert np.array_equal(heatmap(image, cam, alpha=0.3, exponent=2), expected)
    assert np.array_equal(heatmap(image, cam * 5 + 1, alpha=0.3, exponent=2), expected)  # scaled first
    assert not np.array_equal(heatmap(image, cam, alpha=0.3), expected)


def test_panel_titles_name_the_class_as_the_original_did(tmp_path):
    """Panel titles use the study's display names: 'Both algorithms predict 'Cassette Player''."""
    picture = np.zeros((8, 8, 3), np.uint8)
    with Exp1Panels() as draw:
        draw(picture, picture, picture, "2-cassetteplayer", tmp_path / "a.png")
        assert draw.title.get_text() == "Both algorithms predict 'Cassette Player'"
        draw(picture, picture, picture, "3-plus", tmp_path / "b.png")
        assert draw.title.get_text() == "Both algorithms predict 'Plus'"


def test_original_layout_panels_are_the_notebooks_figure(tmp_path):
    """layout="original": experiment 1 panels as the notebook's plt.subplots(ncols=3, figsize=(25, 8))
    saved at dpi 150 with transparent=True: 3750x1200 px RGBA, a transparent background, the suptitle
    (22 pt) and the three axes titles (15 pt) drawn above the pictures, no tight_layout."""
    picture = np.full((32, 32, 3), 255, np.uint8)
    with Exp1Panels("original") as draw:
        draw(picture, picture, picture, "0-fish", tmp_path / "panel.png")
        assert draw.title.get_fontsize() == 22 and draw.title.get_text() == "Both algorithms predict 'Fish'"
        assert [a.title.get_fontsize() for a in draw.figure.axes] == [15, 15, 15]
        assert [a.title.get_text() for a in draw.figure.axes] == ["Algorithm 1", "Original Image", "Algorithm 2"]
    with Image.open(tmp_path / "panel.png") as image:
        assert image.size == (3750, 1200) and image.mode == "RGBA"
        alpha = np.asarray(image)[..., 3] > 0
    assert not alpha[0].any() and not alpha[-1].any() and not alpha[:, :400].any()  # a transparent background
    assert alpha[:90, 1500:2250].any() and not alpha[90:120].any()  # the suptitle, centred at the top
    for left in (469, 1494, 2520):  # each axes: about 855 px square, its title above it
        assert alpha[120:168, left:left + 855].any() and alpha[180:1020, left + 5:left + 850].all()


@pytest.mark.parametrize("layout", ["compact", "original"])
def test_stimuli_carry_no_metadata_beside_the_picture(tmp_path, layout):
    """Blind stimuli: no text chunk (software, title, anything) in the PNGs workers download."""
    from prunexplain.explain.render import Exp2Pictures

    picture = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    with Exp1Panels(layout) as draw:
        draw(picture, picture, picture, "0-fish", tmp_path / "exp1.png")
    with Exp2Pictures(layout) as draw:
        draw(picture, tmp_path / "exp2.png")
    for name in ("exp1.png", "exp2.png"):
        with Image.open(tmp_path / name) as image:
            assert image.text == {} and not {"Software", "Title", "Comment"} & set(image.info), name
