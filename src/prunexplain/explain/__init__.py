"""Explanations: batched Grad-CAM (`GradCAM`), other CAM methods (`explain`), rendering."""

from prunexplain.explain.batched import maps_and_predictions
from prunexplain.explain.cam import METHODS, GradCAM, explain, upsample

__all__ = ["METHODS", "GradCAM", "explain", "maps_and_predictions", "upsample"]
