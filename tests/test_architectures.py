"""Any torchvision (or timm) CNN by name: built for the run's classes, ImageNet or local weights,
checkpoints that rebuild it, and the default Grad-CAM layer traced from a forward pass."""

import pytest
import torch
from torchvision import models as tv

from prunexplain.config import ModelSettings, UserError
from prunexplain.models import build_model, default_target_layer, load_checkpoint, save_checkpoint

# The architectures the issue names, and the layer a person would pick for each (grad-cam's advice:
# ResNet's last block, the last layer of `features` elsewhere).
LAYERS = {
    "resnet18": "layer4.1",
    "mobilenet_v3_small": "features.12.2",
    "efficientnet_b0": "features.8.2",
    "densenet121": "features.norm5",
    "convnext_tiny": "features.7.2",
    "googlenet": "inception5b",
    "squeezenet1_1": "classifier.2",
    "regnet_x_400mf": "trunk_output.block4.block4-11",
}


@pytest.mark.parametrize("arch", LAYERS)
def test_a_torchvision_model_gets_a_new_head_and_its_default_layer(arch):
    torch.manual_seed(0)
    model = build_model(7, ModelSettings(arch=arch)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)
    assert default_target_layer(model, 64) == LAYERS[arch]
    activation = {}
    handle = model.get_submodule(LAYERS[arch]).register_forward_hook(lambda m, i, o: activation.setdefault("x", o))
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    handle.remove()
    assert activation["x"].dim() == 4 and min(activation["x"].shape[-2:]) > 1


def test_the_study_layer_of_vgg16_is_traced_at_224_and_smaller_images_move_it_up():
    with torch.device("meta"):
        full = build_model(10, ModelSettings(width=1, pool_size=7, batch_norm=False))
        compact = build_model(10, ModelSettings())
    assert default_target_layer(full, 224) == "features.30"  # the study's: after the last pooling
    assert default_target_layer(compact, 64) == "features.43"  # 2x2 after the 5th pooling
    assert default_target_layer(compact, 32) == "features.42"  # the pooling leaves 1x1: the ReLU before it


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "regnet_x_400mf", "timm/resnet18"])
def test_checkpoints_rebuild_any_architecture_with_the_same_outputs(tmp_path, arch):
    torch.manual_seed(0)
    settings = ModelSettings(arch=arch)
    model = build_model(4, settings).eval()
    save_checkpoint(tmp_path / "model.pt", model, settings, 4)
    loaded, checkpoint = load_checkpoint(tmp_path / "model.pt")
    assert checkpoint["arch"] == arch
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_imagenet_weights_of_any_torchvision_model_come_from_the_cache(tmp_path, monkeypatch):
    """torchvision's file name in torch's cache is used as it is: no download when it is there."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    imagenet = tv.resnet18()
    url = tv.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(imagenet.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    model = build_model(3, ModelSettings(arch="resnet18", weights="imagenet"))
    assert torch.equal(model.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    assert model.fc.out_features == 3 and model.fc.in_features == 512


def test_a_local_state_dict_loads_into_any_architecture(tmp_path):
    imagenet = tv.mobilenet_v3_small()
    torch.save(imagenet.state_dict(), tmp_path / "weights.pth")
    model = build_model(5, ModelSettings(arch="mobilenet_v3_small", weights=str(tmp_path / "weights.pth")))
    assert torch.equal(model.features[1].block[0][0].weight, imagenet.features[1].block[0][0].weight)
    assert model.classifier[3].out_features == 5
    with pytest.raises(UserError, match="does not fit resnet18"):
        build_model(5, ModelSettings(arch="resnet18", weights=str(tmp_path / "weights.pth")))


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("resnet81", "unknown architecture 'resnet81' (did you mean resnet18"),
        ("mobilenet_v3", "did you mean mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large?)"),
        ("timm/resnet81", "unknown architecture 'timm/resnet81' (did you mean timm/resnet18"),
        ("vit_b_16", "model.arch='vit_b_16': a vision transformer"),
        ("swin_t", "model.arch='swin_t': a vision transformer"),
        ("timm/vit_tiny_patch16_224", "a vision transformer (attention layers)"),
    ],
)
def test_unknown_names_and_transformers_are_one_line(arch, message):
    with pytest.raises(UserError) as error, torch.device("meta"):
        build_model(10, ModelSettings(arch=arch))
    assert message in str(error.value) and "\n" not in str(error.value)
