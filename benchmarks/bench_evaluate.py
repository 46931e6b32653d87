"""The evaluate stage on 13 compact models x 86 images at 32 px (2 methods x 6 rates and the dense model,
Grad-CAM): the case that took 5 min 18 s on 2 cores before the metrics were batched and shared.

Builds a throwaway run (the embedded data, 2 training epochs, pruning without fine-tuning: the
models' accuracy does not change what evaluate computes), then times `evaluate_stage` once with
every metric and the sanity check, and once more with the meta-evaluation's noisy copies (32 images)
on top; prints seconds and each part's share.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from prunexplain.config import load_settings
from prunexplain.evaluate.stage import evaluate_stage
from prunexplain.pipeline import run_pipeline
from prunexplain.runs import Run

SETTINGS = [
    "data.image_size=32", "data.synthetic.train_per_class=60", "data.synthetic.val_per_class=20",
    "model.pool_size=1", "train.epochs=2", "prune.max_epochs=0", "prune.rates=[2, 4, 8, 16, 32, 64]",
    'prune.methods=["local_magnitude_unstructured", "local_random_unstructured"]',
    "explain.images=86", 'explain.target_layer="features.32"', "runtime.progress=false",
]


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(None, [*SETTINGS, f'run.root="{Path(folder)}"', 'run.name="bench"'])
        run = Run(settings.run_dir)
        run_pipeline(settings, run, until="explain")
        print(f"{len(run.models())} models x {settings.explain.images} images at 32 px, cpu "
              f"({torch.get_num_threads()} threads)")
        for meta_images in (0, 32):
            timed = settings.model_copy(update={"evaluate": settings.evaluate.model_copy(
                update={"meta_images": meta_images})})
            start = time.perf_counter()
            evaluate_stage(timed, run)
            label = "every metric + sanity check" + (f" + noise test ({meta_images} images)" if meta_images else "")
            print(f"{label:<60} {time.perf_counter() - start:6.1f} s")


if __name__ == "__main__":
    main()
