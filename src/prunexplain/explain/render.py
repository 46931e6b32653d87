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

from prunexplain.runs import write_with


def top_pixels(maps: torch.Tensor, share: float = 0.10) -> torch.Tensor:
    """Boolean masks `[B, H, W]` of exactly round(share * H * W) pixels per map: the highest values,
    ties broken by pixel index (row-major, earlier first), so equal maps give equal masks."""
    flat = maps.flatten(1).float()
    keep = round(share * flat.shape[1])
    order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :keep]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return mask.view(maps.shape)


def occlude(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The study's occlusion map: only the masked pixels of the image visible, the rest black."""
    return np.where(mask[..., None], image, 0).astype(np.uint8)


def heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Jet colour map of the map (scaled to 0..1) blended over the image with weight `alpha`."""
    scaled = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-12)
    colours = matplotlib.colormaps["jet"](scaled)[..., :3] * 255
    return np.clip(alpha * colours + (1 - alpha) * image, 0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> Path:
    return write_with(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))


def _pretty(label: str) -> str:
    """'3-chainsaw' -> 'Chainsaw': the class as the study's titles name it."""
    return label.split("-", 1)[-1].capitalize()


class Exp1Panels:
    """Experiment 1 panels, "Algorithm 1 | Original Image | Algorithm 2", titled with the predicted
    class: `with Exp1Panels() as draw: draw(left, original, right, label, path)`.

    One figure is redrawn for every panel: building a matplotlib figure costs several times more
    than drawing it, and a study has thousands of panels. The output does not depend on what the
    figure showed before, so each panel is the same bytes as one drawn alone.
    """

    _TITLES = ("Algorithm 1", "Original Image", "Algorithm 2")

    def __enter__(self) -> Exp1Panels:
        self.figure = Figure(figsize=(9, 3.4), dpi=100)
        FigureCanvasAgg(self.figure)  # one Agg canvas measures the layout and draws every panel
        axes = self.figure.subplots(1, 3)
        self.pictures = []
        for axis, title in zip(axes, self._TITLES):
            self.pictures.append(axis.imshow(np.zeros((2, 2, 3), np.uint8)))
            axis.set_title(title, fontsize=12)
            axis.axis("off")
        self.title = self.figure.suptitle("Both algorithms predict '...'", fontsize=14)
        # once, leaving room under the title: a layout computed per panel would depend on the panel before
        self.figure.tight_layout(rect=(0, 0, 1, 0.95))
        return self

    def __exit__(self, *exc) -> None:
        self.figure.clear()  # its artists hold the last panel's pictures

    def __call__(self, left: np.ndarray, original: np.ndarray, right: np.ndarray, label: str, path: Path) -> Path:
        for shown, picture in zip(self.pictures, (left, original, right)):
            shown.set_data(picture)
            shown.set_extent((-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5))
            shown.set_interpolation("nearest" if picture.shape[0] < 128 else "antialiased")
            shown.axes.set_xlim(-0.5, picture.shape[1] - 0.5)
            shown.axes.set_ylim(picture.shape[0] - 0.5, -0.5)
        self.title.set_text(f"Both algorithms predict '{_pretty(label)}'")
        write_with(path, lambda handle: self.figure.savefig(handle, format="png"))
        return Path(path)


def exp1_panel(left: np.ndarray, original: np.ndarray, right: np.ndarray, label: str, path: Path) -> Path:
    """One experiment 1 panel (see `Exp1Panels` for many)."""
    with Exp1Panels() as draw:
        return draw(left, original, right, label, path)


def exp2_image(occluded: np.ndarray, path: Path, size: int = 224) -> Path:
    """Experiment 2: one occluded image, enlarged (nearest pixels) to at least `size` for a screen."""
    scale = max(1, round(size / occluded.shape[0]))
    big = Image.fromarray(occluded).resize((occluded.shape[1] * scale, occluded.shape[0] * scale), Image.NEAREST)
    return save_png(np.asarray(big), path)
