"""The one model factory, the default explanation layer of any CNN, and the checkpoint format.

`build_model(num_classes, settings)` builds `settings.arch`:
- `vgg16`: prunexplain's VGG-16. At width 1 and pool 7 it is torchvision's VGG-16 with its last
  classifier layer replaced for the number of classes, as the study did; a width multiplier and a
  smaller pooled map give the compact VGG-16 (same 13 conv + 3 FC topology) the demo trains on a CPU.
- any other classification model torchvision knows (`resnet18`, `mobilenet_v3_small`, `densenet121`,
  `convnext_tiny`, ...), built with its 1000 ImageNet outputs first so ImageNet weights load, then
  its head (the last layer with 1000 outputs, whatever its name) replaced for the number of classes;
- `timm/<name>`: a timm model (the optional `timm` extra), its head reset through timm's own API.
Vision transformers are refused: Grad-CAM and channel pruning as built here need convolutional maps.

Checkpoints are `{"arch", "num_classes", "state_dict", "masks", "meta"}` saved with `torch.save`
and read with `weights_only=True`: never a pickled module. `meta["model"]` holds the settings that
rebuild the architecture, so any stage can load any checkpoint without being told its shape.
"""

from __future__ import annotations

import difflib
import http.client
import logging
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from torchvision import models as tv

from prunexplain.config import ModelSettings, UserError
from prunexplain.runs import file_digest, write_with

log = logging.getLogger(__name__)

# torchvision's VGG-16 layout ("D"): conv widths, "M" = 2x2 max pool.
VGG16_LAYOUT: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG16_HIDDEN = 4096

_IMAGENET_WEIGHTS = {False: tv.VGG16_Weights.IMAGENET1K_V1, True: tv.VGG16_BN_Weights.IMAGENET1K_V1}


def _create_vgg16(num_classes: int, settings: ModelSettings) -> nn.Module:
    """VGG-16 with 1000 ImageNet outputs first, so ImageNet weights load; then the head is replaced."""
    scale = settings.width
    layout = [v if v == "M" else max(1, round(v * scale)) for v in VGG16_LAYOUT]
    hidden = max(1, round(VGG16_HIDDEN * scale))
    features = tv.vgg.make_layers(layout, batch_norm=settings.batch_norm)
    model = tv.VGG(features, num_classes=1000, dropout=settings.dropout)
    if (scale, settings.pool_size) != (1, 7):
        model.avgpool = nn.AdaptiveAvgPool2d(settings.pool_size)
        model.classifier = _classifier(layout[-2] * settings.pool_size**2, hidden, 1000, settings.dropout)
    if settings.weights is not None:
        _load_pretrained(model, settings)
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    return model


def _classifier(inputs: int, hidden: int, outputs: int, dropout: float) -> nn.Sequential:
    """torchvision's VGG head (same module indices, so classifier[6] is the last layer).

    Linear layers keep PyTorch's fan-in init: torchvision's N(0, 0.01) suits 4096-wide layers but
    shrinks the signal about 40x per layer at width 256, and the narrow model then never leaves chance.
    """
    head = nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.ReLU(True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(True),
        nn.Dropout(dropout),
        nn.Linear(hidden, outputs),
    )
    return head


TIMM_PREFIX = "timm/"
# googlenet and inception_v3 train with auxiliary classifiers whose outputs are no plain logits tensor;
# torchvision drops them from ImageNet weights when asked to, as here.
_BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
IMAGENET_OUTPUTS = 1000


def _create_torchvision(num_classes: int, settings: ModelSettings) -> nn.Module:
    """torchvision's model of that name with 1000 outputs (ImageNet's weights, a local state dict, or
    random), then its head replaced for `num_classes`."""
    options = _BUILD_OPTIONS.get(settings.arch, {})
    if settings.weights == "imagenet":
        imagenet_weights_file(settings)  # in torch's cache now, where torchvision looks before downloading
        model = tv.get_model(settings.arch, weights="DEFAULT", **options)
    else:
        model = tv.get_model(settings.arch, weights=None, **options)
        if settings.weights is not None:
            _load_pretrained(model, settings)
    replace_head(model, num_classes, settings.arch)
    return model


def _create_timm(num_classes: int, settings: ModelSettings) -> nn.Module:
    """timm's model `timm/<name>`: ImageNet weights through timm (from the Hugging Face hub), or a
    local state dict of the 1000-class model; the head reset by timm's `reset_classifier`."""
    timm = _import_timm(settings.arch)
    name = settings.arch[len(TIMM_PREFIX):]
    try:
        model = timm.create_model(name, pretrained=settings.weights == "imagenet")
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(f"model.weights='imagenet': timm cannot load the weights of {name!r} "
                        f"({_first_line(error)}); set model.weights to a local state dict instead") from None
    if settings.weights not in (None, "imagenet"):
        _load_pretrained(model, settings)
    model.reset_classifier(num_classes)
    return model


def _import_timm(arch: str):
    try:
        import timm
    except ImportError:
        raise UserError(f"model.arch={arch!r}: timm is not installed (pip install 'prunexplain[timm]')") from None
    return timm


def classifier_head(model: nn.Module) -> str:
    """The name of the layer that outputs the ImageNet logits: the last Linear (or 1x1-conv, as
    SqueezeNet's) with 1000 outputs, whatever the model calls it (`fc`, `classifier.6`, `head`)."""
    for name, module in reversed(list(model.named_modules())):
        outputs = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and outputs == IMAGENET_OUTPUTS:
            return name
    raise UserError("model.arch: the model has no layer with 1000 outputs (ImageNet's classes) to replace")


def replace_head(model: nn.Module, num_classes: int, arch: str) -> None:
    """A fresh last layer with `num_classes` outputs in place of the ImageNet head, as the study did."""
    name = classifier_head(model)
    head = model.get_submodule(name)
    if isinstance(head, nn.Linear):
        new: nn.Module = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        new = nn.Conv2d(head.in_channels, num_classes, head.kernel_size, head.stride, head.padding)
    model.set_submodule(name, new)
    log.debug("%s: head %s replaced for %d classes", arch, name, num_classes)


def check_weights(settings: ModelSettings) -> None:
    """Refuse `model.weights` that cannot load, before any data or weights are read: ImageNet
    weights of prunexplain's vgg16 (torchvision's or a local copy) fit only the full VGG-16, and a
    local file must exist."""
    if settings.weights is None:
        return
    if settings.arch == "vgg16" and (settings.width, settings.pool_size) != (1, 7):
        raise UserError(
            f"model.weights={settings.weights!r}: ImageNet weights fit only the full VGG-16 "
            f"(model.width=1, model.pool_size=7), not width={settings.width}, pool_size={settings.pool_size}"
        )
    if settings.weights == "imagenet":
        return
    path = Path(settings.weights)
    if not path.is_file():
        found = "is a folder" if path.is_dir() else "no such file"
        raise UserError(f"model.weights: {found} {str(path)!r} (give 'imagenet', a local .pth state dict, or none)")


def _pretrained_state(settings: ModelSettings) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's weights API, or a local state-dict file."""
    check_weights(settings)
    if settings.weights == "imagenet":
        path = imagenet_weights_file(settings)
        return _read_torch_file(path, "torchvision's ImageNet weights (delete the file to download it again)")
    path = Path(settings.weights)
    state = _read_torch_file(path, "a state dict")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.weights: {path}: not a state dict (a dict of tensors, as model.state_dict() gives)")
    return state


def imagenet_weights_file(settings: ModelSettings, progress: bool = True) -> Path:
    """torchvision's ImageNet weights of the model, downloaded once into torch's hub cache, where
    torchvision itself keeps them (<torch.hub.get_dir()>/checkpoints/<file of the URL>).

    Done here rather than through torchvision so a failed download (offline, a proxy, a wrong hash)
    is one line saying which file was wanted and the two ways round it: the file put in the cache,
    or `model.weights` set to a local copy; torchvision's own failure is a long traceback.
    """
    url = _imagenet_url(settings)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(urllib.parse.urlparse(url).path).name
    if path.is_file():
        return path
    digest = torch.hub.HASH_REGEX.search(path.name)  # the file name holds a prefix of its SHA-256
    log.info("downloading torchvision's ImageNet weights %s to %s", url, folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), digest.group(1) if digest else None, progress=progress)
    except (OSError, http.client.HTTPException, RuntimeError) as error:  # urllib's are OSErrors; a bad hash
        raise UserError(
            f"model.weights='imagenet': cannot download {url} ({_first_line(error)}); put that file in {folder} "
            f"(torch's cache), or set model.weights to a local copy (--set model.weights=\"path/to/{path.name}\")"
        ) from None
    return path


def _imagenet_url(settings: ModelSettings) -> str:
    if settings.arch == "vgg16":
        return _IMAGENET_WEIGHTS[settings.batch_norm].url
    return tv.get_model_weights(settings.arch).DEFAULT.url


def _load_pretrained(model: nn.Module, settings: ModelSettings) -> None:
    """The weights of `model.weights` into the 1000-class model; a file of another model is one line."""
    try:
        model.load_state_dict(_pretrained_state(settings))
    except RuntimeError as error:
        raise UserError(f"model.weights: {settings.weights}: does not fit {settings.arch} with "
                        f"batch_norm={settings.batch_norm} ({_first_line(error)})") from None


def _read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)`; a file torch cannot read is one line naming it.

    torch's own messages span lines and advise `weights_only=False`, which would run any code the
    file holds: never pass them on. Any exception of the unpickler means the same thing, that the
    file is not what it should be, so all of them are caught.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise about a bad file
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None
    except Exception:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip), KeyError, ...
        raise UserError(f"{path}: not {what} (torch.load cannot read it: damaged, or another kind of file)") from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


ARCHITECTURES: dict[str, Callable[[int, ModelSettings], nn.Module]] = {"vgg16": _create_vgg16}


_GLOBAL_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def default_target_layer(model: nn.Module, image_size: int) -> str:
    """The layer Grad-CAM explains by default: the last module whose output is a spatial map
    `[B, C, H, W]` with H, W > 1, before the head's (adaptive) pooling, found by tracing one forward
    pass of an `image_size` input (on the model's device; the meta device traces shapes only).

    A container's output is its last child's, so the trace descends from the last such module into
    the last child of each `nn.Sequential` while that child runs once: VGG-16's `features` becomes
    `features.30` (the study's layer: after the last ReLU and pooling), ResNet's `layer4` becomes
    `layer4.1` (the last block), DenseNet's `features` `features.norm5`. Modules called more than
    once (a ReLU reused in a block) are never chosen: a hook on them sees several activations.
    """
    finished: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and not isinstance(module, _GLOBAL_POOLING):
                finished.append((name, tuple(output.shape)))
        return hook

    modules = dict(model.named_modules())
    handles = [module.register_forward_hook(record(name)) for name, module in modules.items() if name]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    spatial = [name for name, shape in finished if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
    if not spatial:
        raise UserError(f"explain.target_layer: no layer of the model outputs a spatial map at {image_size} px; "
                        "name a layer, or use larger images (data.image_size)")
    name = spatial[-1]
    while isinstance(modules[name], nn.Sequential) and len(modules[name]):
        child = f"{name}.{list(modules[name]._modules)[-1]}"
        if calls.get(child) != 1:
            break
        name = child
    return name


def check_parts(model: nn.Module, parts: list[str]) -> None:
    """`train.frozen_parts` names top-level parts of the model (the study froze `features`)."""
    known = [name for name, _ in model.named_children()]
    for part in parts:
        if part not in known:
            raise UserError(f"train.frozen_parts: the model has no part {part!r} (parts: {', '.join(known)})")


def build_model(num_classes: int, settings: ModelSettings = ModelSettings()) -> nn.Module:
    """The model of `settings.arch` (see the module's docstring); unknown names fail with the close
    matches, vision transformers with one line."""
    check_arch(settings)
    create = ARCHITECTURES.get(settings.arch)
    if create is None:
        create = _create_timm if settings.arch.startswith(TIMM_PREFIX) else _create_torchvision
    model = create(num_classes, settings)
    _refuse_transformer(model, settings.arch)
    return model


def check_arch(settings: ModelSettings) -> None:
    """`model.arch` names prunexplain's vgg16, a torchvision classifier or `timm/<name>`."""
    arch = settings.arch
    if arch in ARCHITECTURES:
        return
    if arch.startswith(TIMM_PREFIX):
        known = [TIMM_PREFIX + name for name in _import_timm(arch).list_models()]
    else:
        known = [*ARCHITECTURES, *tv.list_models(module=tv)]
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else (
            "any torchvision classification model, e.g. resnet18, or timm/<name> with the timm extra")
        raise UserError(f"model.arch: unknown architecture {arch!r} ({hint})")


def _refuse_transformer(model: nn.Module, arch: str) -> None:
    """Attention layers (ViT, Swin, MaxViT, ...) mean token maps, not the convolutional feature maps
    Grad-CAM and channel pruning work on here."""
    if any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention") for m in model.modules()):
        raise UserError(f"model.arch={arch!r}: a vision transformer (attention layers); prunexplain explains and "
                        "prunes convolutional networks only for now")


def save_checkpoint(
    path: Path,
    model: nn.Module,
    settings: ModelSettings,
    num_classes: int,
    masks: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Atomically write the checkpoint contract of DESIGN.md; tensors are moved to the CPU."""
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    checkpoint = {
        "arch": settings.arch,
        "num_classes": num_classes,
        "state_dict": state,
        "masks": {k: v.cpu() for k, v in (masks or {}).items()},
        "meta": {"model": settings.model_dump(mode="json"), **(meta or {})},
    }
    return write_with(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint file; returns (model in eval mode, the checkpoint dict)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    checkpoint = _read_torch_file(path, "a prunexplain checkpoint")
    if not isinstance(checkpoint, dict) or not _CHECKPOINT_KEYS <= set(checkpoint):
        keys = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserError(f"{path}: not a prunexplain checkpoint (expected keys {sorted(_CHECKPOINT_KEYS)}, got {keys})")
    try:
        model = with_weights(checkpoint["num_classes"], model_settings(checkpoint), checkpoint["state_dict"])
    except (KeyError, TypeError, AttributeError, RuntimeError, ValidationError) as error:
        reason = f"{type(error).__name__}: {_first_line(error)}"
        raise UserError(f"{path}: not a prunexplain checkpoint ({reason})") from None
    return model.to(device).eval(), checkpoint


_CHECKPOINT_KEYS = {"arch", "num_classes", "state_dict", "meta"}


def with_weights(num_classes: int, settings: ModelSettings, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model of `settings` holding the weights of `state` (on the CPU).

    Built on the meta device and given memory only then: the random initialisation that `state`
    replaces costs seconds for any VGG-16 (torchvision's VGG draws its 25088x4096 head even for the
    compact model), on every checkpoint load. A model with a buffer the state does not hold is
    built as usual, so nothing is left uninitialised.
    """
    model = skeleton(num_classes, settings)
    if _on_meta(model):
        if {name for name, _ in model.named_buffers()} - set(model.state_dict()):
            model = build_model(num_classes, settings.model_copy(update={"weights": None}))
        else:
            model = model.to_empty(device="cpu")
    model.load_state_dict(state)
    return model


def skeleton(num_classes: int, settings: ModelSettings) -> nn.Module:
    """The model of `settings` without weights: on the meta device (shapes only, milliseconds even for
    the full VGG-16), or on the CPU for the few builders that compute with tensors (RegNet's widths)."""
    settings = settings.model_copy(update={"weights": None})
    try:
        with torch.device("meta"):
            return build_model(num_classes, settings)
    except NotImplementedError:  # "Cannot copy out of meta tensor": the builder read a tensor's value
        return build_model(num_classes, settings)


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def check_fits(checkpoint: dict[str, Any], path: Path, classes: list[str], image_size: int) -> None:
    """Refuse a checkpoint made for other data than the run's (classes, image size): its results
    would be silently wrong, e.g. a 5-class model scored on a 10-class test split."""
    meta = checkpoint.get("meta", {})
    saved = meta.get("classes")
    if saved is not None and list(saved) != list(classes):
        raise UserError(f"{path}: made for {len(saved)} classes ({', '.join(saved[:4])}...), the run's data has "
                        f"{len(classes)} ({', '.join(classes[:4])}...); train it again for this data")
    size = meta.get("data", {}).get("image_size")
    if size is not None and size != image_size:
        raise UserError(f"{path}: made for {size}-pixel images, the run's data.image_size is {image_size}")


def select_device(name: str) -> torch.device:
    """`auto`: cuda when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"runtime.device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"runtime.device={name!r}: CUDA is not available on this machine")
    return device


def model_settings(checkpoint: dict[str, Any]) -> ModelSettings:
    """The architecture settings stored in a checkpoint (weights come from its state dict)."""
    return ModelSettings.model_validate({**checkpoint["meta"]["model"], "weights": None})


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def import_pickled_module(
    source: Path,
    dest: Path,
    trust_pickle: bool = False,
    classes: list[str] | None = None,
    image_size: int = 224,
    normalize: bool = False,
) -> dict[str, Any]:
    """A whole pickled VGG-16 module, as the original saved its models (`torch.save(model)` in
    helpers.save_model of FlorianMerkle/pruning_for_explainability), rewritten as a prunexplain
    checkpoint at `dest`; returns the checkpoint's `meta`.

    Unpickling runs whatever code the file names, so it is done only when `trust_pickle` says the
    file is trusted. torch.nn.utils.prune's reparametrisation of a pruned model (`weight_orig` times
    the buffer `weight_mask`, applied by a forward hook) is folded into plain weights, as the hook
    computes them, and the masks are kept as the checkpoint's masks. The architecture is read from
    the module and checked by rebuilding it with `build_model`; `image_size` and `normalize` say what
    the model was trained on (the original's: 224 px, not normalised), `classes` its class names
    (default: Imagenette's labels for a 10-class model).
    """
    source, dest = Path(source), Path(dest)
    if not trust_pickle:
        raise UserError(f"{source}: importing a pickled module runs any code the file holds; give --trust-pickle "
                        "only for a file you trust (such as one the original code saved)")
    module = _unpickled_module(source)
    masks = _fold_pruning(module)
    settings = _vgg_settings(module, source)
    num_classes = module.classifier[-1].out_features
    try:
        model = with_weights(num_classes, settings, module.state_dict())
    except RuntimeError as error:
        raise UserError(f"{source}: a VGG that prunexplain's vgg16 cannot rebuild ({_first_line(error)})") from None
    meta: dict[str, Any] = {
        "data": {"image_size": image_size, "normalize": normalize},
        "imported": {"source": str(source), "sha256": file_digest(source), "pruned": sorted(masks)},
    }
    names = _class_names(classes, num_classes)
    if names is not None:
        meta["classes"] = names
    save_checkpoint(dest, model, settings, num_classes, masks, meta)
    return {"model": settings.model_dump(mode="json"), "num_classes": num_classes, **meta}


def _unpickled_module(source: Path) -> nn.Module:
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SourceChangeWarning: the module's code changed since it was saved
            loaded = torch.load(source, map_location="cpu", weights_only=False)
    except OSError as error:
        raise UserError(f"{source}: cannot read ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 - whatever the unpickler met: a missing class, a damaged file
        raise UserError(f"{source}: cannot unpickle it ({type(error).__name__}: {_first_line(error)})") from None
    if isinstance(loaded, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        loaded = loaded.module
    if isinstance(loaded, dict):
        raise UserError(f"{source}: a dict, not a pickled module (a state dict needs no import: model.weights "
                        "takes one)")
    if not isinstance(loaded, nn.Module):
        raise UserError(f"{source}: holds a {type(loaded).__name__}, not a pickled model")
    return loaded


def _fold_pruning(model: nn.Module) -> dict[str, torch.Tensor]:
    """Replace each `<name>_orig` * `<name>_mask` of torch.nn.utils.prune by the plain parameter
    `<name>` (what the forward hook computed); returns the masks as bool, keyed like the state dict."""
    from torch.nn.utils import prune

    masks: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for key in [k for k in module._parameters if k.endswith("_orig") and f"{k[:-5]}_mask" in module._buffers]:
            masks[prefix + key[:-5]] = module._buffers[f"{key[:-5]}_mask"].detach().bool()
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
        for name in [k[:-5] for k in module._parameters if k.endswith("_orig")]:  # a reparametrisation left
            if f"{name}_mask" in module._buffers:  # without its hook: folded by hand
                orig, mask = module._parameters.pop(f"{name}_orig"), module._buffers.pop(f"{name}_mask")
                module.__dict__.pop(name, None)
                module.register_parameter(name, nn.Parameter(orig.detach() * mask))
    return masks


def _vgg_settings(model: nn.Module, source: Path) -> ModelSettings:
    """The ModelSettings that rebuild a torchvision VGG-16 (full or narrowed) from its layers."""
    if not isinstance(model, tv.VGG):
        raise UserError(f"{source}: a {type(model).__name__}, not torchvision's VGG; only VGG-16 models import")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    if len(convs) != sum(v != "M" for v in VGG16_LAYOUT):
        raise UserError(f"{source}: a VGG with {len(convs)} conv layers, not VGG-16's 13")
    pool = model.avgpool.output_size
    pool = pool if isinstance(pool, int) else pool[0] if len(set(pool)) == 1 else None
    dropout = next((m.p for m in model.classifier if isinstance(m, nn.Dropout)), 0.5)
    values = {"arch": "vgg16", "width": convs[0].out_channels / VGG16_LAYOUT[0], "pool_size": pool,
              "batch_norm": any(isinstance(m, nn.BatchNorm2d) for m in model.features), "dropout": dropout}
    try:
        return ModelSettings.model_validate(values)
    except ValidationError as error:
        raise UserError(f"{source}: a VGG that prunexplain's vgg16 cannot rebuild ({values}: "
                        f"{_first_line(error)})") from None


def _class_names(classes: list[str] | None, num_classes: int) -> list[str] | None:
    if classes:
        if len(classes) != num_classes:
            raise UserError(f"--classes: {len(classes)} names for a model of {num_classes} classes")
        return list(classes)
    from prunexplain.data.imagenette import CLASSES

    if num_classes == len(CLASSES):
        return list(CLASSES.values())
    log.warning("a model of %d classes: no class names stored (give them with --classes)", num_classes)
    return None
