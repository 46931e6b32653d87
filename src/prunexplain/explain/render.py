"""Pictures of explanations for people: occlusion maps, jet heatmaps and the study's panels.

Images are uint8 `[H, W, 3]` arrays, maps float `[H, W]` at the image's size (`cam.upsample`).
Figures are `matplotlib.figure.Figure`s drawn on their own Agg canvas: no pyplot, no global figure
state, no backend switched at import, so importing this module changes nothing for its caller.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from prunexplain.experiments import display_name
from prunexplain.runs import write_with

LAYOUTS = ("compact", "original")


def top_pixels(maps: torch.Tensor, share: float = 0.10) -> torch.Tensor:
    """Boolean masks `[B, H, W]` of exactly round(share * H * W) pixels per map: the highest values,
    ties broken by pixel index (row-major, earlier first), so equal maps give equal masks."""
    flat = maps.flatten(1).float()
    keep = round(share * flat.shape[1])
    order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :keep]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return mask.view(maps.shape)


def original_visibility(maps: torch.Tensor, share: float = 0.10) -> torch.Tensor:
    """How visible each pixel is `[B, H, W]` (0..1) under the original study's occlusion count.

    Its `create_occlusion` (gradcam/utils.py) sorts the map ascending, sets the lowest
    N - int(share*N) pixels to 0 and every pixel after the next one to 1: int(share*N) - 1 pixels are
    fully visible (5016 of 50176 at 224 px, where round() gives 5018) and the pixel between keeps its
    map value. The study drew that over the image with a grey colour map whose alpha runs from 1 at 0
    to 0 at 1, autoscaled. Simplification: that one pixel is shown at its map value clipped to 0..1
    (image x value), not with the grey tint and the autoscaling (which matter only for that pixel
    while the map stays within 0..1). Ties are broken as in `top_pixels`.
    """
    flat = maps.flatten(1).float()
    count = int(flat.shape[1] * share)  # the original's int(len(act) * thres)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    weights = torch.zeros_like(flat)
    if count >= 1:
        weights.scatter_(1, order[:, :count - 1], 1.0)
        between = order[:, count - 1:count]
        weights.scatter_(1, between, flat.gather(1, between).clamp(0, 1))
    return weights.view(maps.shape)


def visibility(maps: torch.Tensor, share: float = 0.10, count: str = "round") -> torch.Tensor:
    """The occlusion of `maps` by pixel count rule: `round` -> boolean masks of exactly
    round(share*H*W) pixels (`top_pixels`); `original` -> the original study's weights
    (`original_visibility`)."""
    if count == "round":
        return top_pixels(maps, share)
    if count == "original":
        return original_visibility(maps, share)
    raise ValueError(f"unknown occlusion count {count!r} (round, original)")


def occlude(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The study's occlusion map: only the masked pixels of the image visible, the rest black.

    A float mask is a visibility in 0..1 (`original_visibility`): each pixel is scaled by it and
    truncated to uint8, so weights of exactly 0 and 1 give the same picture as a boolean mask."""
    if mask.dtype == bool:
        return np.where(mask[..., None], image, 0).astype(np.uint8)
    return (image * np.clip(mask, 0, 1)[..., None]).astype(np.uint8)


def heat_weights(maps: np.ndarray, exponent: float = 1.0) -> np.ndarray:
    """Maps `[..., H, W]` each scaled to 0..1 (a constant map to 0), then raised to `exponent`: how
    strongly a heatmap colours each pixel. The model-based observers weight pictures by the same."""
    low, high = maps.min(axis=(-2, -1), keepdims=True), maps.max(axis=(-2, -1), keepdims=True)
    scaled = (maps - low) / np.maximum(high - low, 1e-12)
    return scaled**exponent if exponent != 1 else scaled


def heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, exponent: float = 1.0) -> np.ndarray:
    """Jet colour map of the map (scaled to 0..1, then raised to `exponent`) blended over the image
    with weight `alpha` for the colours.

    The original's `overlay_heatmap` is `exponent=2, alpha=0.3`: jet(map ** 2) at weight 0.3 over the
    image at 0.7, truncated to uint8. It squared the upsampled map as Grad-CAM returned it (not
    scaled, so its colours depended on the map's magnitude) and truncated the colours to uint8
    before blending; here the map is scaled first and the colours blend unrounded (at most one level
    brighter), which keeps the default pictures as they were.
    """
    colours = matplotlib.colormaps["jet"](heat_weights(cam, exponent))[..., :3] * 255
    return np.clip(alpha * colours + (1 - alpha) * image, 0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> Path:
    return write_with(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))


class Exp1Panels:
    """Experiment 1 panels, "Algorithm 1 | Original Image | Algorithm 2", titled with the predicted
    class: `with Exp1Panels(layout) as draw: draw(left, original, right, label, path)`.

    One figure is redrawn for every panel: building a matplotlib figure costs several times more
    than drawing it, and a study has thousands of panels. The output does not depend on what the
    figure showed before, so each panel is the same bytes as one drawn alone.

    Layouts: `compact` (900x340 px, tight); `original`, the study's figure (experiments_prep.ipynb):
    `plt.subplots(ncols=3, figsize=(25, 8))` saved at 150 dpi with `transparent=True` = 3750x1200 px,
    suptitle at 22 pt, axes titles at 15 pt, no tight_layout, and the notebook's inline backend's
    subplot bottom of 0.125 (its rc also set the 6x4 in default size experiment 2 used).
    """

    _TITLES = ("Algorithm 1", "Original Image", "Algorithm 2")

    def __init__(self, layout: str = "compact"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r} ({', '.join(LAYOUTS)})")
        self.layout = layout

    def __enter__(self) -> Exp1Panels:
        original = self.layout == "original"
        if original:
            self.figure = Figure(figsize=(25, 8), dpi=150)
            self.figure.subplots_adjust(bottom=0.125)  # the inline backend's rc
        else:
            self.figure = Figure(figsize=(9, 3.4), dpi=100)
        FigureCanvasAgg(self.figure)  # one Agg canvas measures the layout and draws every panel
        axes = self.figure.subplots(1, 3)
        self.pictures = []
        for axis, title in zip(axes, self._TITLES):
            self.pictures.append(axis.imshow(np.zeros((2, 2, 3), np.uint8)))
            # y=1.0 is where automatic placement puts it over hidden axes, without measuring them at every draw
            axis.set_title(title, fontsize=15 if original else 12, y=1.0)
            axis.axis("off")
        self.title = self.figure.suptitle("Both algorithms predict '...'", fontsize=22 if original else 14)
        if not original:
            # once, leaving room under the title: a layout computed per panel would depend on the panel before
            self.figure.tight_layout(rect=(0, 0, 1, 0.95))
            self.figure.set_layout_engine(None)  # else tight_layout stays the engine: a second draw per save
        return self

    def __exit__(self, *exc) -> None:
        self.figure.clear()  # its artists hold the last panel's pictures

    def __call__(self, left: np.ndarray, original: np.ndarray, right: np.ndarray, label: str, path: Path) -> Path:
        for shown, picture in zip(self.pictures, (left, original, right)):
            _show(shown, picture, self.layout)
        self.title.set_text(f"Both algorithms predict '{display_name(label)}'")
        return _save(self.figure, path, self.layout)


class Exp2Pictures:
    """Experiment 2 pictures: `with Exp2Pictures(layout) as draw: draw(occluded, path)`.

    `compact`: the occluded image alone, enlarged (`exp2_image`). `original`: as the study's notebook
    saved it, `plt.imshow` in the inline backend's default 6x4 in figure (subplot bottom 0.125), axis
    off, at 150 dpi with `transparent=True`: 900x600 px with the image about 453 px high in the middle.
    """

    def __init__(self, layout: str = "compact"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r} ({', '.join(LAYOUTS)})")
        self.layout = layout

    def __enter__(self) -> Exp2Pictures:
        if self.layout == "original":
            self.figure = Figure(figsize=(6, 4), dpi=150)
            self.figure.subplots_adjust(bottom=0.125)  # the inline backend's rc
            FigureCanvasAgg(self.figure)
            axis = self.figure.add_subplot()
            self.picture = axis.imshow(np.zeros((2, 2, 3), np.uint8))
            axis.axis("off")
        return self

    def __exit__(self, *exc) -> None:
        if self.layout == "original":
            self.figure.clear()

    def __call__(self, occluded: np.ndarray, path: Path) -> Path:
        if self.layout == "compact":
            return exp2_image(occluded, path)
        _show(self.picture, occluded, self.layout)
        return _save(self.figure, path, self.layout)


def _show(shown, picture: np.ndarray, layout: str) -> None:
    """Put `picture` into an axes' image artist, the axes fitted to it."""
    shown.set_data(picture)
    shown.set_extent((-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5))
    small = picture.shape[0] < 128 and layout == "compact"
    shown.set_interpolation("nearest" if small else "antialiased")  # matplotlib's default when the study ran
    shown.axes.set_xlim(-0.5, picture.shape[1] - 0.5)
    shown.axes.set_ylim(picture.shape[0] - 0.5, -0.5)


def _save(figure: Figure, path: Path, layout: str) -> Path:
    """A stimulus carries no text chunk (matplotlib writes its name and version by default): nothing in
    the file a worker downloads but the picture."""
    blank = {"metadata": {"Software": None}}
    if layout == "original":
        # the study's plt.savefig(..., dpi=150, transparent=True): no figure or axes background
        write_with(path, lambda handle: figure.savefig(handle, format="png", dpi=150, transparent=True, **blank))
    else:
        write_with(path, lambda handle: figure.savefig(handle, format="png", **blank))
    return Path(path)


def exp1_panel(left: np.ndarray, original: np.ndarray, right: np.ndarray, label: str, path: Path,
               layout: str = "compact") -> Path:
    """One experiment 1 panel (see `Exp1Panels` for many)."""
    with Exp1Panels(layout) as draw:
        return draw(left, original, right, label, path)


def exp2_image(occluded: np.ndarray, path: Path, size: int = 224) -> Path:
    """Experiment 2: one occluded image, enlarged (nearest pixels) to at least `size` for a screen."""
    scale = max(1, round(size / occluded.shape[0]))
    big = Image.fromarray(occluded).resize((occluded.shape[1] * scale, occluded.shape[0] * scale), Image.NEAREST)
    return save_png(np.asarray(big), path)
