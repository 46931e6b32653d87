import numpy as np
import pytest
import torch
from PIL import Image

from prunexplain.explain.render import Exp1Panels, exp1_panel, exp2_image, heatmap, occlude, top_pixels


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
