import pytest
import torch
from torchvision import models as tv

from prunexplain.config import ModelSettings, UserError
from prunexplain.models import (
    build_model,
    check_weights,
    imagenet_weights_file,
    import_pickled_module,
    load_checkpoint,
    save_checkpoint,
)

FULL = ModelSettings(width=1, pool_size=7, batch_norm=False)


def test_full_model_is_torchvision_vgg16_with_a_new_last_layer():
    model, reference = build_model(10, FULL), tv.vgg16(num_classes=10)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
    assert model.classifier[6].out_features == 10


def test_imagenet_weights_from_a_local_file_load_everywhere_but_the_head(tmp_path):
    imagenet = tv.vgg16()
    torch.save(imagenet.state_dict(), tmp_path / "vgg16.pth")
    model = build_model(10, FULL.model_copy(update={"weights": str(tmp_path / "vgg16.pth")}))
    assert torch.equal(model.features[0].weight, imagenet.features[0].weight)
    assert torch.equal(model.classifier[3].weight, imagenet.classifier[3].weight)
    assert model.classifier[6].weight.shape == (10, 4096)


def test_weights_errors_name_the_setting(tmp_path):
    with pytest.raises(UserError, match="model.weights: no such file"):
        build_model(10, FULL.model_copy(update={"weights": str(tmp_path / "missing.pth")}))
    with pytest.raises(UserError, match="fit only the full VGG-16"):
        build_model(10, ModelSettings(weights="imagenet"))
    with pytest.raises(UserError, match=r"unknown architecture 'resnet' \(did you mean resnet50, resnet34"):
        build_model(10, ModelSettings(arch="resnet"))


def test_compact_model_keeps_the_vgg16_topology():
    model = build_model(10, ModelSettings(width=0.125, pool_size=2))
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 13 and len(linears) == 3
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    settings = ModelSettings(width=0.0625, pool_size=1)
    model = build_model(4, settings).eval()
    masks = {"features.0.weight": torch.rand_like(model.features[0].weight) > 0.5}
    path = save_checkpoint(tmp_path / "m.pt", model, settings, 4, masks, {"classes": list("abcd")})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"arch", "num_classes", "state_dict", "masks", "meta"}
    loaded, checkpoint = load_checkpoint(path)
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(checkpoint["masks"]["features.0.weight"], masks["features.0.weight"])
    assert checkpoint["meta"]["classes"] == list("abcd")


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(UserError, match="x.pt: not a prunexplain checkpoint"):
        load_checkpoint(path)


class _Payload:
    """A pickle that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))


def _bad_files(tmp_path) -> dict[str, object]:
    import io
    import os
    import pickle

    buffer = io.BytesIO()
    torch.save({"a": torch.ones(3)}, buffer)
    contents = {
        "random.pt": os.urandom(4096),
        "empty.pt": b"",
        "text.pt": b"hello world\n",
        "payload.pt": pickle.dumps(_Payload()),
        "truncated.pt": buffer.getvalue()[: len(buffer.getvalue()) // 2],
    }
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
    return {name: tmp_path / name for name in contents}


def test_a_file_torch_cannot_read_is_one_line_without_unsafe_advice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(UserError) as error:
            load_checkpoint(path)
        message = str(error.value)
        assert message.startswith(f"{path}: not a prunexplain checkpoint"), name
        assert "\n" not in message and "weights_only" not in message, name
    assert not (tmp_path / "PWNED").exists()


def test_a_checkpoint_of_the_wrong_shape_is_one_line(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match=r"list.pt: not a prunexplain checkpoint \(expected keys .*got list\)"):
        load_checkpoint(tmp_path / "list.pt")
    settings = ModelSettings(width=0.0625, pool_size=1)
    path = save_checkpoint(tmp_path / "m.pt", build_model(4, settings), settings, 4)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["num_classes"] = 5
    torch.save(checkpoint, tmp_path / "other.pt")
    with pytest.raises(UserError) as error:
        load_checkpoint(tmp_path / "other.pt")
    assert "other.pt: not a prunexplain checkpoint (RuntimeError: " in str(error.value)
    assert "\n" not in str(error.value)
    checkpoint["meta"]["model"]["width"] = "wide"
    torch.save(checkpoint, tmp_path / "meta.pt")
    with pytest.raises(UserError, match="meta.pt: not a prunexplain checkpoint"):
        load_checkpoint(tmp_path / "meta.pt")


def test_bad_weights_files_are_one_line_naming_the_setting(tmp_path):
    files = _bad_files(tmp_path)
    with pytest.raises(UserError, match=r"random.pt: not a state dict \(torch.load cannot read it"):
        build_model(10, FULL.model_copy(update={"weights": str(files["random.pt"])}))
    torch.save({"features.0.weight": torch.ones(1)}, tmp_path / "small.pth")
    with pytest.raises(UserError) as error:
        build_model(10, FULL.model_copy(update={"weights": str(tmp_path / "small.pth")}))
    expected = f"model.weights: {tmp_path / 'small.pth'}: does not fit vgg16 with batch_norm=False"
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(UserError, match=r"list.pth: not a state dict \(a dict of tensors"):
        build_model(10, FULL.model_copy(update={"weights": str(tmp_path / "list.pth")}))


def test_check_weights_needs_no_file_read(tmp_path):
    check_weights(ModelSettings())
    check_weights(FULL.model_copy(update={"weights": "imagenet"}))
    with pytest.raises(UserError, match=r"model.weights: is a folder '.*' \(give 'imagenet', a local .pth state dict"):
        check_weights(FULL.model_copy(update={"weights": str(tmp_path)}))
    with pytest.raises(UserError, match=r"model.weights='w.pth': ImageNet weights fit only the full VGG-16"):
        check_weights(ModelSettings(weights="w.pth"))


def test_an_offline_imagenet_download_is_one_line_naming_the_url_the_cache_and_a_local_file(tmp_path, monkeypatch):
    import urllib.error

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as error:
        imagenet_weights_file(FULL.model_copy(update={"weights": "imagenet"}))
    message = str(error.value)
    assert "\n" not in message and "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert f"put that file in {tmp_path / 'hub' / 'checkpoints'}" in message
    assert 'set model.weights to a local copy (--set model.weights="path/to/vgg16-397923af.pth")' in message
    cached = tmp_path / "hub" / "checkpoints" / "vgg16_bn-6c64b313.pth"
    cached.write_bytes(b"a file once downloaded is not fetched again")
    assert imagenet_weights_file(FULL.model_copy(update={"weights": "imagenet", "batch_norm": True})) == cached


def _tiny_torchvision_vgg(num_classes: int = 10) -> torch.nn.Module:
    """torchvision's VGG class with VGG-16's layout at 1/16 width, a 1x1 pool and a 256-wide head."""
    layout = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]
    model = tv.VGG.__new__(tv.VGG)  # VGG's own __init__ would draw a 25088x4096 head only to drop it
    torch.nn.Module.__init__(model)
    model.features, model.avgpool = tv.vgg.make_layers(layout), torch.nn.AdaptiveAvgPool2d(1)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(32, 256), torch.nn.ReLU(True), torch.nn.Dropout(), torch.nn.Linear(256, 256),
        torch.nn.ReLU(True), torch.nn.Dropout(), torch.nn.Linear(256, num_classes),
    )
    return model.eval()


def _zeros(tensors) -> int:
    return sum(int((t == 0).sum()) for t in tensors)


def test_a_pickled_pruned_module_of_the_original_imports_as_a_checkpoint(tmp_path):
    """As the original's vgg_pruning.py saved models: torch.nn.utils.prune on every Conv2d (twice on
    one, which stacks a PruningContainer), then torch.save of the whole module."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    module = _tiny_torchvision_vgg()
    convs = {f"features.{i}": m for i, m in enumerate(module.features) if isinstance(m, torch.nn.Conv2d)}
    for conv in convs.values():
        prune.l1_unstructured(conv, "weight", amount=0.5)
    prune.l1_unstructured(convs["features.0"], "weight", amount=0.5)
    torch.save(module, tmp_path / "pruned.pt")
    effective = [getattr(m, name) for m in module.modules() for name in ("weight", "bias") if hasattr(m, name)]

    meta = import_pickled_module(tmp_path / "pruned.pt", tmp_path / "model.pt", trust_pickle=True)
    loaded, checkpoint = load_checkpoint(tmp_path / "model.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))
    assert _zeros(loaded.parameters()) == _zeros(effective) > 0
    assert sorted(checkpoint["masks"]) == sorted(f"{name}.weight" for name in convs) == meta["imported"]["pruned"]
    assert torch.equal(checkpoint["masks"]["features.0.weight"], convs["features.0"].weight_mask.bool())
    assert checkpoint["meta"]["classes"][0] == "0-fish" and checkpoint["meta"]["data"] == {"image_size": 224,
                                                                                         "normalize": False}
    assert checkpoint["meta"]["model"]["width"] == 0.0625 and checkpoint["meta"]["model"]["pool_size"] == 1


class _Planted:
    """An object whose unpickling makes a folder: stands for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.marker),)


def test_a_pickle_is_opened_only_when_trusted_and_only_a_vgg16_imports(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save(_Planted(marker), tmp_path / "planted.pt")
    with pytest.raises(UserError, match="runs any code the file holds; give --trust-pickle"):
        import_pickled_module(tmp_path / "planted.pt", tmp_path / "out.pt")
    assert not marker.exists()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "linear.pt")
    with pytest.raises(UserError, match="a Linear, not torchvision's VGG"):
        import_pickled_module(tmp_path / "linear.pt", tmp_path / "out.pt", trust_pickle=True)
    torch.save(_tiny_torchvision_vgg(4), tmp_path / "four.pt")
    with pytest.raises(UserError, match="--classes: 3 names for a model of 4 classes"):
        import_pickled_module(tmp_path / "four.pt", tmp_path / "out.pt", True, ["a", "b", "c"])
    assert not (tmp_path / "out.pt").exists()
