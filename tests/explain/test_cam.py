import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM as LibraryGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from prunexplain.config import ModelSettings, UserError
from prunexplain.explain.cam import GradCAM, explain, upsample
from prunexplain.models import build_model, default_target_layer
from prunexplain.pruning.masks import apply_masks
from prunexplain.pruning.methods import METHODS, compute_masks, prunable_weights


def _model(seed=0, batch_norm=True):
    torch.manual_seed(seed)
    model = build_model(10, ModelSettings(width=0.125, pool_size=2, batch_norm=batch_norm)).eval()
    return model


def _library_maps(model, images, layer, classes):
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with LibraryGradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=images, targets=targets)


def _min_max(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def _same_normalisation(raw: torch.Tensor, size: int) -> np.ndarray:
    """The library's own scaling: min-max per image, cv2's bilinear resize, min-max again."""
    return np.float32([_min_max(cv2.resize(np.float32(_min_max(cam)), (size, size))) for cam in raw.numpy()])


@pytest.mark.parametrize("layer", ["features.43", "features.40", "features.33"])
def test_maps_match_the_grad_cam_library(layer):
    model = _model()
    images = torch.rand(6, 3, 64, 64)
    classes = torch.tensor([0, 1, 2, 3, 4, 5])
    with GradCAM(model, layer) as cam:
        ours = cam(images, classes)
    reference = _library_maps(model, images, dict(model.named_modules())[layer], classes)
    assert np.abs(_same_normalisation(ours, 64) - reference).max() < 1e-4


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "convnext_tiny", "densenet121"])
def test_maps_of_any_architecture_at_its_last_block_match_the_library(arch):
    """At the default layer, except DenseNet's: its forward applies an in-place functional ReLU to
    features.norm5's output, which overwrites the library's stored activation (as for VGG above), so
    the library is compared at the dense block before it."""
    torch.manual_seed(0)
    model = build_model(10, ModelSettings(arch=arch)).eval()
    images, classes = torch.rand(4, 3, 96, 96), torch.tensor([0, 3, 5, 9])
    layer = "features.denseblock4" if arch == "densenet121" else default_target_layer(model, 96)
    with GradCAM(model, layer) as cam:
        ours = cam(images, classes)
    assert ours.shape[-1] == 3 and ours.abs().sum() > 0  # 96 px / 32: the last stage's 3x3 maps
    reference = _library_maps(model, images, model.get_submodule(layer), classes)
    assert np.abs(_same_normalisation(ours, 96) - reference).max() < 1e-4


def test_default_class_is_the_prediction_and_pruned_models_work():
    model = _model(batch_norm=False)
    weights = prunable_weights(model, "conv")
    ones = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    apply_masks(model, compute_masks(METHODS["local_magnitude_unstructured"], weights, ones, 8, torch.Generator()))
    images = torch.rand(4, 3, 64, 64)
    with GradCAM(model) as cam:
        default = cam(images)
        explicit = cam(images, model(images).argmax(1))
    assert default.shape == (4, 2, 2) and torch.equal(default, explicit) and (default >= 0).all()


def test_hooks_flags_and_mode_are_restored_even_after_an_error():
    model = _model()
    model.train()
    model.classifier.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with GradCAM(model) as cam:
            cam(torch.rand(2, 3, 64, 64))
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags and model.training


def test_a_conv_target_before_an_inplace_relu_keeps_its_own_activation():
    """The in-place ReLU after the last conv must not overwrite the activation the map uses (on the
    CPU it overwrites the library's stored copy; so the library runs on an out-of-place copy)."""
    model = _model(batch_norm=False)
    images, classes = torch.rand(3, 3, 64, 64), torch.tensor([1, 2, 3])
    with GradCAM(model, "features.28") as cam:
        ours = cam(images, classes)
    out_of_place = _model(batch_norm=False)
    for module in out_of_place.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    reference = _library_maps(out_of_place, images, out_of_place.features[28], classes)
    assert np.abs(_same_normalisation(ours, 64) - reference).max() < 1e-4


def test_many_calls_leave_no_state_behind():
    model = _model()
    images = torch.rand(2, 3, 64, 64)
    with GradCAM(model) as cam:
        first = cam(images)
        for _ in range(100):
            cam(images)
        assert cam._activation is None
        assert torch.equal(cam(images), first)
    assert all(p.grad is None for p in model.parameters())


def test_upsample_and_explain_give_maps_at_image_size():
    model = _model()
    images = torch.rand(2, 3, 64, 64)
    maps = explain(model, images)
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    assert upsample(torch.ones(1, 2, 2), (8, 8)).shape == (1, 8, 8)
    for method in ("gradcam++", "layercam", "eigencam"):
        other = explain(model, images, method)
        assert other.shape == (2, 64, 64) and 0 <= other.min() and other.max() <= 1.0001
    with pytest.raises(UserError, match="explain.methods: unknown method 'lime'"):
        explain(model, images, "lime")
    with pytest.raises(UserError, match="no layer 'features.99'"):
        GradCAM(model, "features.99")


def _pil_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The study's resize, one map at a time: PIL's bicubic on a float ("F") image."""
    return np.stack([np.asarray(Image.fromarray(m, mode="F").resize(size[::-1], Image.BICUBIC)) for m in maps])


def _maps_with_zeros_and_negatives(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.random((4, *shape)).astype(np.float32) * 3
    maps[0] = 0  # an all-zero map (a ReLU'd map with no evidence)
    maps[1, : shape[0] // 2 + 1] = 0  # a map zero over its top half
    maps[2] -= 1.5  # negatives too
    return maps


@pytest.mark.parametrize(
    ("shape", "size"),
    [((7, 7), (224, 224)), ((2, 2), (64, 64)), ((5, 3), (17, 40)), ((10, 10), (4, 4)), ((9, 6), (9, 2))],
)
def test_the_pil_kernel_is_pils_bicubic_resize_in_one_batched_call(shape, size):
    maps = _maps_with_zeros_and_negatives(shape)
    ours = upsample(torch.from_numpy(maps), size, kernel="pil")
    assert ours.shape == (4, *size) and ours.dtype == torch.float32
    assert np.abs(ours.numpy() - _pil_resize(maps, size)).max() < 1e-5
    # a map's result does not depend on the others in its batch (to rounding: the matrix product's
    # blocking, and so its last bit, can change with the batch's size on some CPUs)
    assert torch.allclose(upsample(torch.from_numpy(maps[1:2]), size, kernel="pil")[0], ours[1], rtol=0, atol=1e-6)
    assert torch.equal(ours[0], torch.zeros(size))


def test_the_pil_kernel_keeps_the_overshoot_and_torch_clips_it():
    maps = torch.zeros(1, 7, 7)
    maps[0, 3, 3] = 1  # a single peak: bicubic rings below 0 around it
    pil, torch_kernel = upsample(maps, (224, 224), kernel="pil"), upsample(maps, (224, 224))
    assert -0.1 < pil.min() < 0 and torch_kernel.min() == 0
    assert np.abs(pil.numpy() - _pil_resize(maps.numpy(), (224, 224))).max() < 1e-6
    with pytest.raises(UserError, match="unknown kernel 'lanczos'"):
        upsample(maps, (8, 8), kernel="lanczos")


def test_the_torch_kernel_is_unchanged():
    """Byte for byte the interpolation prunexplain used before the pil kernel existed."""
    maps = torch.from_numpy(_maps_with_zeros_and_negatives((7, 7))[1:]).abs()
    before = torch.nn.functional.interpolate(maps[:, None], size=(64, 48), mode="bicubic", align_corners=False)
    assert torch.equal(upsample(maps, (64, 48)), before[:, 0].clamp(min=0))
    assert torch.equal(upsample(maps, (64, 48), kernel="torch"), upsample(maps, (64, 48)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_pil_kernel_runs_on_the_maps_device():
    maps = _maps_with_zeros_and_negatives((7, 7))
    ours = upsample(torch.from_numpy(maps).cuda(), (224, 224), kernel="pil")
    assert ours.device.type == "cuda"
    assert np.abs(ours.cpu().numpy() - _pil_resize(maps, (224, 224))).max() < 1e-5


def test_explain_with_the_pil_kernel_scales_by_the_peak_and_keeps_negatives():
    model = _model()
    images = torch.rand(3, 3, 64, 64)
    with GradCAM(model) as cam:
        raw = cam(images)
    maps = explain(model, images, upsample_kernel="pil")
    reference = _pil_resize(raw.numpy(), (64, 64))
    peaks = reference.reshape(3, -1).max(1)
    expected = reference / np.where(peaks > 0, peaks, 1)[:, None, None]
    assert np.abs(maps.numpy() - expected).max() < 1e-5
    assert torch.equal(maps.flatten(1).amax(1), (torch.from_numpy(peaks) > 0).float())
    blank = torch.zeros(2, 3, 64, 64)  # raw maps all zero: no peak to scale by, and no division by 0
    assert torch.equal(explain(model, blank, upsample_kernel="pil"), torch.zeros(2, 64, 64))
