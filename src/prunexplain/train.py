"""Training: `fit()` with the study's early stopping, `evaluate()` top-1/top-5, and the train stage.

`fit` is also what pruning calls to fine-tune, with `after_step` re-applying masks. Under
`torchrun` the same code runs DDP: each process trains on its shard (DistributedSampler), accuracy
counts are summed over processes, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from prunexplain.config import DataSettings, RuntimeSettings, Settings, TrainSettings
from prunexplain.data import dataset_root, splits_of
from prunexplain.data.loaders import Splits, image_dataset, prepare, with_dataset_statistics
from prunexplain.models import build_model, check_parts, imagenet_weights_file, save_checkpoint, select_device
from prunexplain.runs import Run, append_json_array, fault_point, write_csv, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """Where this process stands among DDP processes (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    # 0-based epoch whose weights were restored (the study's early_stopping_epoch; -1: the weights the
    # fit started with, which restore='last_improvement' keeps when no epoch beat a valid accuracy of 0)
    best_epoch: int = 0
    stopped_epoch: int | None = None  # 0-based epoch after which early stopping ended training
    train_accuracy: float = 0.0
    valid_accuracy: float = 0.0
    seconds: float = 0.0

    @property
    def epochs_trained(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class Replay:
    """A fit that replays part of another fit's learning-rate schedule (learning-rate and weight
    rewinding): the schedule as that fit of `epochs` epochs ran it, from epoch `start` on. Steps past
    its end keep its last learning rate."""

    epochs: int
    start: int


@dataclass
class TrainResult:
    train_accuracy: float
    valid_accuracy: float
    test_top1: float
    test_top5: float
    epochs_trained: int
    best_epoch: int
    stopped_epoch: int | None
    seconds: float
    device: str
    processes: int
    checkpoint: str

    def summary(self) -> str:
        return (
            f"test top-1 {self.test_top1:.4f}, top-5 {self.test_top5:.4f}, valid {self.valid_accuracy:.4f} "
            f"after {self.epochs_trained} epochs ({self.seconds:.0f} s on {self.device}); model: {self.checkpoint}"
        )


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


def _share_buffers(model: nn.Module) -> None:
    """Give every DDP process rank 0's buffers (BN running statistics), which DDP does not keep equal
    between forward passes: evaluation then scores the one model that rank 0 saves."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def _sum_over_processes(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, data: DataSettings, device: torch.device, amp: bool = True
) -> dict[str, float]:
    """Top-1 and top-5 accuracy, mean loss, each class's top-1 accuracy (`per_class`, NaN for a class
    without images) and per image whether top-1 is right (`correct`, "0"/"1" in the dataset's order:
    what the verdict pairs between models) over the loader, summed over DDP processes."""
    model.eval()
    correct1 = correct5 = loss = count = 0.0
    hits = seen = None
    right = []
    for images, labels in loader:
        x, y = prepare(images.to(device, non_blocking=True), data), labels.to(device)
        with _autocast(device, amp):
            logits = model(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        right.append((top[:, 0] == y).cpu())
        correct1 += right[-1].sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        count += len(y)
        classes = logits.shape[1]
        hits = torch.bincount(y[top[:, 0] == y], minlength=classes).cpu() + (0 if hits is None else hits)
        seen = torch.bincount(y, minlength=classes).cpu() + (0 if seen is None else seen)
    totals = _sum_over_processes([correct1, correct5, loss, count, *_or_empty(hits), *_or_empty(seen)], device)
    correct1, correct5, loss, count = totals[:4]
    count, per_class = max(count, 1), []
    if hits is not None:
        classes = len(hits)
        per_class = [h / s if s else float("nan") for h, s in zip(totals[4:4 + classes], totals[4 + classes:])]
    return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss / count, "n": int(count),
            "per_class": per_class, "correct": _in_dataset_order(torch.cat(right) if right else torch.zeros(0))}


def _in_dataset_order(right: torch.Tensor) -> str:
    """Per image "1" (right) or "0" in the dataset's order: under DDP process r scored images r, r + world,
    ... (`make_loader`), so the processes' answers are gathered and interleaved back."""
    hits = [int(v) for v in right.tolist()]
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        parts: list[list[int]] = [[] for _ in range(world)]
        dist.all_gather_object(parts, hits)
        hits = [parts[i % world][i // world] for i in range(sum(map(len, parts)))]
    return "".join(map(str, hits))


def _or_empty(counts: torch.Tensor | None) -> list[float]:
    return [] if counts is None else counts.tolist()


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module, loader: DataLoader, data: DataSettings, device: torch.device, batches: int, seed: int
) -> int:
    """Recompute every batch-norm layer's running statistics from `batches` training batches (no
    augmentation, the shuffled order drawn from `seed`); returns the number of layers recalibrated.

    Pruning changes what each layer outputs, while the running statistics still describe the dense
    model: the pruned model then fails in eval mode although its weights still carry the signal. The
    statistics are an equal-weight average over the batches (momentum None), only the batch-norm layers
    run in training mode (dropout stays off), and no weight changes.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        with _seeded(seed, device, loader):  # the same batches on a resumed schedule
            for _, (images, _labels) in zip(range(batches), loader):
                model(prepare(images.to(device, non_blocking=True), data))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return len(norms)


def _freeze(model: nn.Module, parts: list[str]) -> None:
    """Stop training whole parts of the model (the study's vgg_no_train_parts, e.g. features)."""
    check_parts(model, parts)
    for part in parts:
        getattr(model, part).requires_grad_(False)


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "SGD":
        return torch.optim.SGD(
            params, lr=settings.learning_rate, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    return torch.optim.Adam(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int,
               replay: Replay | None = None):
    """torch's OneCycleLR over all steps of `settings.epochs` for schedule "onecycle" (of `replay.epochs`,
    stepped on to `replay.start`, when replaying); None: constant. Early stopping may end the cycle
    before its end, which keeps the weights of the best epoch so far."""
    if settings.schedule == "constant":
        return None
    steps_per_epoch = max(1, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, epochs=replay.epochs if replay else settings.epochs,
        steps_per_epoch=steps_per_epoch, pct_start=0.3,
    )
    with warnings.catch_warnings():  # stepping on before any optimiser step is the point here
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before", UserWarning)
        for _ in range(min(replay.start * steps_per_epoch, scheduler.total_steps - 1) if replay else 0):
            scheduler.step()
    return scheduler


def advance(scheduler: torch.optim.lr_scheduler.OneCycleLR) -> None:
    """The next step of the schedule; past its last step (a replay longer than what is left of it),
    its last learning rate stays."""
    if scheduler.last_epoch < scheduler.total_steps - 1:
        scheduler.step()


def _train_epoch(model, loader, optimizer, scheduler, scaler, data, runtime, device, generator, after_step, bar):
    model.train()
    correct = loss_sum = count = 0.0
    for images, labels in bar(loader):
        x = prepare(images.to(device, non_blocking=True), data, generator)
        y = labels.to(device, non_blocking=True)
        if device.type == "cuda" and runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, runtime.amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            advance(scheduler)
        if after_step is not None:
            after_step()
        correct += (logits.argmax(1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        count += len(y)
    correct, loss_sum, count = _sum_over_processes([correct, loss_sum, count], device)
    return correct / max(count, 1), loss_sum / max(count, 1)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    valid_loader: DataLoader,
    settings: TrainSettings,
    data: DataSettings,
    device: torch.device,
    runtime: RuntimeSettings = RuntimeSettings(),
    after_step: Callable[[], None] | None = None,
    description: str = "train",
    replay: Replay | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """Train until `settings.epochs` or early stopping; restore the weights `settings.restore` names.

    Early stopping as the study: an epoch improves when its valid accuracy beats the reference (the
    valid accuracy of the last improving epoch) by more than `min_improvement` (relative); `patience`
    epochs without one end training. `restore` decides which weights are kept and reported:
    - "best": the epoch of the highest valid accuracy, with its train and valid accuracy;
    - "last_improvement": the original's rule (helpers.train_model of FlorianMerkle/
      pruning_for_explainability): the reference starts at 0, the weights, epoch and valid accuracy
      are those of the last improving epoch (not always the highest valid accuracy: a later epoch
      can beat it by less than `min_improvement`), and the train accuracy is the best of all epochs.

    `replay` runs part of another fit's learning-rate schedule; `after_epoch(k)` is called after each
    epoch k (0-based) with the weights it trained.
    """
    with _seeded(settings.seed, device, train_loader):
        return _fit(model, train_loader, valid_loader, settings, data, device, runtime, after_step, description,
                    replay, after_epoch)


def train_steps(
    model: nn.Module, loader: DataLoader, settings: TrainSettings, data: DataSettings, device: torch.device,
    runtime: RuntimeSettings, steps: int, after_step: Callable[[], None], description: str,
) -> None:
    """`steps` optimiser steps over the loader, epoch after epoch, at the constant learning rate of
    `settings`: training that neither epoch ends nor early stopping interrupts (gradual pruning prunes
    in `after_step` every so many steps). Seeded like `fit`."""
    if len(loader) == 0:
        raise ValueError("train_steps: the training loader yields no batch")
    with _seeded(settings.seed, device, loader):
        optimizer, scaler, generator, show = _training(model, settings, runtime, device)
        batches = itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), steps)
        bar = lambda it: tqdm(it, total=steps, desc=description, leave=False, unit="step", disable=not show)  # noqa: E731
        _train_epoch(model, batches, optimizer, None, scaler, data, runtime, device, generator, after_step, bar)


def _training(model: nn.Module, settings: TrainSettings, runtime: RuntimeSettings, device: torch.device):
    """What every training loop needs: the optimiser, the AMP scaler, the augmentation generator (one
    stream per DDP process) and whether this process shows progress."""
    _freeze(model, settings.frozen_parts)
    optimizer = _optimizer(model, settings)
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp and device.type == "cuda")
    generator = torch.Generator().manual_seed(settings.seed + 1 + (dist.get_rank() if dist.is_initialized() else 0))
    show = runtime.progress and (not dist.is_initialized() or dist.get_rank() == 0)
    return optimizer, scaler, generator, show


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device, loader: DataLoader) -> Iterator[None]:
    """Every draw of a fit (shuffling, dropout) from its own seed, so a fit started on its own (a
    resumed pruning step) draws what it would have drawn in an uninterrupted run. The global RNG is
    restored afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(seed)
        yield


def _fit(model, train_loader, valid_loader, settings, data, device, runtime, after_step, description, replay,
         after_epoch) -> FitResult:
    optimizer, scaler, generator, show = _training(model, settings, runtime, device)
    scheduler = _scheduler(optimizer, settings, len(train_loader), replay)
    result, start = FitResult(), time.perf_counter()
    last_improvement = settings.restore == "last_improvement"
    # The original keeps the weights it started with until an epoch beats a valid accuracy of 0.
    kept = _snapshot(model) if last_improvement else None
    result.best_epoch = -1 if last_improvement else 0
    best_accuracy, reference, waited = -1.0, 0.0, 0
    epochs = tqdm(range(settings.epochs), desc=description, unit="epoch", disable=not show)
    for epoch in epochs:
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        bar = lambda it: tqdm(it, leave=False, unit="batch", disable=not show)  # noqa: E731
        train_acc, train_loss = _train_epoch(
            model, train_loader, optimizer, scheduler, scaler, data, runtime, device, generator, after_step, bar
        )
        _share_buffers(model)
        valid = evaluate(model, valid_loader, data, device, runtime.amp)
        result.history.append(
            {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
             "valid_loss": valid["loss"], "valid_accuracy": valid["top1"], "seconds": time.perf_counter() - start}
        )
        epochs.set_postfix(loss=f"{train_loss:.3f}", train=f"{train_acc:.3f}", valid=f"{valid['top1']:.3f}")
        if after_epoch is not None:
            after_epoch(epoch)
        fault_point(f"epoch:{description}/{epoch}")
        improved = valid["top1"] > reference * (1 + settings.min_improvement) or (epoch == 0 and not last_improvement)
        if improved:
            reference, waited = valid["top1"], 0
        else:
            waited += 1
        if last_improvement:
            result.train_accuracy = max(result.train_accuracy, train_acc)
            if improved:
                result.best_epoch, result.valid_accuracy = epoch, valid["top1"]
                kept = None  # free the old copy before taking the new: a copy of VGG-16 is 0.55 GB
                kept = _snapshot(model)
        elif valid["top1"] > best_accuracy:
            best_accuracy, result.best_epoch = valid["top1"], epoch
            result.train_accuracy, result.valid_accuracy = train_acc, valid["top1"]
            kept = None
            kept = _snapshot(model)
        if waited >= settings.patience:
            result.stopped_epoch = epoch
            log.info("%s: early stop after epoch %d (restoring epoch %d)", description, epoch, result.best_epoch)
            break
    if kept is not None:
        model.load_state_dict(kept)
    result.seconds = time.perf_counter() - start
    return result


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def processes(device: torch.device) -> Iterator[Processes]:
    """Join the DDP process group when started by torchrun (WORLD_SIZE > 1); leave it on exit."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Processes()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        yield Processes(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


def make_loader(
    dataset: Dataset, batch_size: int, device: torch.device, shuffle_seed: int | None = None, num_workers: int = 0
) -> DataLoader:
    """Shuffled (seeded) for training, in order for evaluation; sharded across DDP processes."""
    options = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    distributed = dist.is_available() and dist.is_initialized()
    if shuffle_seed is None:
        if distributed:  # each process scores a disjoint slice; the counts are summed
            dataset = Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))
        return DataLoader(dataset, shuffle=False, **options)
    if distributed:
        return DataLoader(dataset, sampler=DistributedSampler(dataset, seed=shuffle_seed), **options)
    return DataLoader(dataset, shuffle=True, generator=torch.Generator().manual_seed(shuffle_seed), **options)


def device_for(runtime: RuntimeSettings) -> torch.device:
    """The device of `runtime.device`; under torchrun, this process's GPU. Sets the CPU threads."""
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    if runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(runtime.deterministic)  # process-wide: each run sets it its way
    device = select_device(runtime.device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def train_stage(settings: Settings, run: Run) -> TrainResult | None:
    """Train the run's model on its dataset and write `train/`; returns None on DDP ranks > 0."""
    device = device_for(settings.runtime)
    with processes(device) as procs:
        if procs.main and settings.model.weights == "imagenet":  # offline, fail before the data is decoded
            imagenet_weights_file(settings.model, settings.runtime.progress)
        splits, loaders = run_loaders(settings, run, device, procs)
        data = with_dataset_statistics(settings.data, loaders["train"].dataset, settings.runtime.progress)
        settings = settings.model_copy(update={"data": data})
        torch.manual_seed(settings.train.seed)
        model = build_model(len(splits.train.classes), settings.model).to(device)
        if device.type == "cuda" and settings.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        trained = nn.parallel.DistributedDataParallel(model) if procs.world > 1 else model
        keep = _rewind_keeper(settings, run, model, len(splits.train.classes), procs)
        fitted = fit(trained, loaders["train"], loaders["valid"], settings.train, settings.data, device,
                     settings.runtime, after_epoch=keep)
        test = evaluate(model, loaders["test"], settings.data, device, settings.runtime.amp)
        result = TrainResult(
            train_accuracy=fitted.train_accuracy,
            valid_accuracy=fitted.valid_accuracy,
            test_top1=test["top1"],
            test_top5=test["top5"],
            epochs_trained=fitted.epochs_trained,
            best_epoch=fitted.best_epoch,
            stopped_epoch=fitted.stopped_epoch,
            seconds=round(fitted.seconds, 2),
            device=str(device),
            processes=procs.world,
            checkpoint=str(run.dense_checkpoint),
        )
        if not procs.main:
            return None
        _write_outputs(settings, run, model, splits.train.classes, fitted, result, test)
        return result


def _rewind_keeper(settings: Settings, run: Run, model: nn.Module, classes: int, procs: Processes):
    """The `after_epoch` of dense training that keeps the weights after `train.rewind_epoch` epochs
    (weight rewinding starts from them); the initial weights are kept at once for epoch 0. The snapshot
    of an earlier training is deleted first: it belongs to another model."""
    epoch = settings.train.rewind_epoch
    if procs.main:
        run.rewind_checkpoint.unlink(missing_ok=True)
    if epoch is None or not procs.main:
        return None

    def keep_after(epochs_trained: int) -> None:
        if epochs_trained == epoch:
            save_checkpoint(run.rewind_checkpoint, model, settings.model, classes, meta={"rewind_epoch": epoch})

    keep_after(0)
    return lambda index: keep_after(index + 1)  # fit calls after_epoch with the epoch's 0-based index


def run_loaders(
    settings: Settings, run: Run, device: torch.device, procs: Processes = Processes()
) -> tuple[Splits, dict[str, DataLoader]]:
    """The run's splits and their loaders: train shuffled from the seed, valid and test in order.

    With `data.augment_at = "full_size"` the train loader yields images augmented per item at full size
    (`AugmentedImages`), which `prepare` does not augment again."""
    splits, datasets = _datasets_on_main_first(settings, run, procs)
    batch, seed, workers = settings.train.batch_size, settings.train.seed, settings.runtime.num_workers
    loaders = {name: make_loader(datasets[name], batch, device, num_workers=workers) for name in ("valid", "test")}
    return splits, {"train": make_loader(datasets["train"], batch, device, seed, workers), **loaders}


def _datasets_on_main_first(settings: Settings, run: Run, procs: Processes):
    """Rank 0 generates the dataset and decodes the caches; the others wait, then find them ready."""

    def prepare_all(runtime: RuntimeSettings):
        root = dataset_root(settings.data, run, runtime.progress)
        splits = splits_of(settings.data, root)
        names = ("train", "valid", "test")
        datasets = {
            name: image_dataset(getattr(splits, name), settings.data, run.cache_dir, name, runtime,
                                train=name == "train")
            for name in names
        }
        return splits, datasets

    if procs.main:
        prepared = prepare_all(settings.runtime)
    if procs.world > 1:
        dist.barrier()
    return prepared if procs.main else prepare_all(settings.runtime.model_copy(update={"progress": False}))


def _write_outputs(settings, run, model, classes, fitted: FitResult, result: TrainResult, test: dict) -> None:
    meta = {
        "classes": list(classes),
        "data": settings.data.model_dump(mode="json", include={"image_size", "normalize", "mean", "std"}),
        "train": asdict(result),
        # as every pruned checkpoint keeps them: each class's test accuracy, each test image's right answer
        "per_class": test["per_class"],
        "test_correct": test["correct"],
    }
    path = save_checkpoint(run.dense_checkpoint, model, settings.model, len(classes), meta=meta)
    write_csv(run.train_history, fitted.history)
    write_json(run.train_result, {"run": settings.run.name, **asdict(result)})
    if settings.runtime.model_path is not None:
        save_checkpoint(settings.runtime.model_path, model, settings.model, len(classes), meta=meta)
    if settings.runtime.results_path is not None:
        append_json_array(settings.runtime.results_path, {"run": settings.run.name, **asdict(result)})
    log.info("trained model in %s", path)
