"""The job backends side by side, and what they would buy on the study's full grid.

1. A tiny 2x2 sweep (compact VGG-16 at 32 px, one pruning method at 2x and 4x, through pruning: 4
   points x 3 jobs) run serially, on a local pool of 2 workers and on a local Ray with 2 CPUs, each
   from scratch, then once more on its finished folder: that second pass finds every job done and
   measures each engine's overhead per job.
2. The study's grid scheduled on 1, 4 and 8 GPUs by the same rule the driver follows (a job starts
   when its inputs are done and a GPU is free): the published pruning chain of local magnitude
   pruning (24 + 29 + 53 + 82 + 82 + 80 minutes for rates 2..64), the random chain taken as equal,
   and the dense training and each seed's explaining and scoring as stated assumptions.
"""

from __future__ import annotations

import heapq
import importlib.util
import tempfile
import time
from pathlib import Path

from prunexplain.jobs.sweep import sweep

TINY = {
    "data": ['image_size = 32', 'synthetic.train_per_class = 30', 'synthetic.val_per_class = 10'],
    "model": ["width = 0.125", "pool_size = 1"],
    "train": ["epochs = 2"],
    "prune": ["rates = [2, 4]", 'methods = ["local_magnitude_unstructured"]'],
    "runtime": ["progress = false"],
}
CHAIN_MINUTES = [24.4, 28.6, 53.5, 82.2, 82.3, 80.2]  # the study's local magnitude chain, rates 2..64
DENSE_MINUTES = 60.0  # assumed: fine-tuning the ImageNet VGG-16 on Imagenette
MODELS_MINUTES = 10.0  # assumed: explaining and scoring 13 models of one seed


def _grid(folder: Path) -> Path:
    (folder / "base.toml").write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in TINY.items()))
    grid = folder / "grid.toml"
    grid.write_text(f'name = "bench"\nbase = "base.toml"\nroot = "{folder / "sweeps"}"\n'
                    '[[axis]]\nkey = "prune.max_epochs"\nvalues = [1, 2]\n'
                    '[[axis]]\nkey = "prune.learning_rate"\nvalues = [0.001, 0.002]\n')
    return grid


def _timed(backend: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as folder:
        grid = _grid(Path(folder))
        start = time.perf_counter()
        sweep(grid, backend, workers=2, until="prune")
        first = time.perf_counter() - start
        start = time.perf_counter()
        sweep(grid, backend, workers=2, until="prune")
        return first, time.perf_counter() - start


def makespan(jobs: dict[str, tuple[float, tuple[str, ...]]], gpus: int) -> float:
    """Minutes until every job ends when each starts as soon as its inputs are done and a GPU is free
    (in the order given), one job per GPU."""
    done: dict[str, float] = {}
    free = [0.0] * gpus
    waiting = list(jobs)
    while waiting:
        ready = [name for name in waiting if all(n in done for n in jobs[name][1])]
        name = min(ready, key=lambda n: max((done[i] for i in jobs[n][1]), default=0.0))
        waiting.remove(name)
        gpu_free = heapq.heappop(free)
        start = max(gpu_free, max((done[i] for i in jobs[name][1]), default=0.0))
        done[name] = start + jobs[name][0]
        heapq.heappush(free, done[name])
    return max(done.values())


def study_grid(seeds: int) -> dict[str, tuple[float, tuple[str, ...]]]:
    jobs: dict[str, tuple[float, tuple[str, ...]]] = {}
    for seed in range(seeds):
        jobs[f"{seed} train"] = (DENSE_MINUTES, ())
        for method in ("magnitude", "random"):
            jobs[f"{seed} {method}"] = (sum(CHAIN_MINUTES), (f"{seed} train",))
        jobs[f"{seed} models"] = (MODELS_MINUTES, (f"{seed} magnitude", f"{seed} random"))
    return jobs


def main() -> None:
    backends = ["serial", "local"] + (["ray"] if importlib.util.find_spec("ray") else [])
    print("tiny 2x2 sweep through pruning (12 jobs), 2 cores   from scratch   finished   overhead per job")
    for backend in backends:
        first, again = _timed(backend)
        print(f"  {backend:<48} {first:8.1f} s   {again:6.1f} s   {again / 12:8.2f} s")
    print(f"the study's grid (dense {DENSE_MINUTES:g} min and models {MODELS_MINUTES:g} min per seed assumed; "
          f"pruning chains {sum(CHAIN_MINUTES):.0f} min each)")
    for seeds in (1, 3):
        jobs = study_grid(seeds)
        spans = {gpus: makespan(jobs, gpus) / 60 for gpus in (1, 4, 8)}
        critical = (DENSE_MINUTES + sum(CHAIN_MINUTES) + MODELS_MINUTES) / 60
        print(f"  {seeds} seed(s): " + ", ".join(f"{g} GPU(s) {h:.1f} h" for g, h in spans.items())
              + f"; critical path {critical:.1f} h")


if __name__ == "__main__":
    main()
