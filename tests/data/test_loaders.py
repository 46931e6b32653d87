import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from prunexplain.config import DataSettings, RuntimeSettings, UserError
from prunexplain.data.loaders import (
    AugmentedImages,
    CachedImages,
    FolderImages,
    ImageSet,
    augment,
    decoded_cache,
    full_size_augmentation,
    image_dataset,
    load_splits,
    object_masks,
    prepare,
    read_mask,
    scan_split,
    split_sizes,
    with_dataset_statistics,
)


def test_the_reference_split_sizes_and_their_scaling():
    assert split_sizes(3925) == (2800, 1125)
    assert split_sizes(60) == (43, 17)


def test_split_is_the_studys_random_split_of_the_imagefolder_order(tiny_dataset):
    splits = load_splits(tiny_dataset, split_seed=69)
    folder = ImageFolder(tiny_dataset / "val")
    generator = torch.Generator().manual_seed(69)
    test, valid = torch.utils.data.random_split(folder, split_sizes(len(folder)), generator)
    assert [str(p) for p in splits.test.paths] == [folder.samples[i][0] for i in test.indices]
    assert [str(p) for p in splits.valid.paths] == [folder.samples[i][0] for i in valid.indices]
    assert list(splits.test.labels) == [folder.samples[i][1] for i in test.indices]
    assert len(splits.train) == 80 and splits.train.classes[0] == "0-disk"
    other = load_splits(tiny_dataset, split_seed=70)
    assert other.test.paths != splits.test.paths


def test_masks_follow_their_images(tiny_dataset):
    images = scan_split(tiny_dataset, "train")
    assert images.masks is not None
    pairs = zip(images.paths, images.masks)
    assert all(m.exists() and m.name == p.name and m.parent.name == p.parent.name for p, m in pairs)
    assert images.subset([3, 1]).masks == (images.masks[3], images.masks[1])


def test_cache_holds_exactly_the_decoded_images_and_is_reused(tiny_dataset, tmp_path):
    images = scan_split(tiny_dataset, "val")
    array = decoded_cache(images, 24, tmp_path, "val", progress=False)
    cached, plain = CachedImages(images, array), FolderImages(images, 24)
    for i in (0, 7, len(images) - 1):
        assert torch.equal(cached[i][0], plain[i][0]) and cached[i][1] == plain[i][1]
    assert cached[0][0].shape == (3, 24, 24) and cached[0][0].dtype == torch.uint8
    files = list(tmp_path.glob("*.npy"))
    decoded_cache(images, 24, tmp_path, "val", progress=False)
    assert list(tmp_path.glob("*.npy")) == files
    decoded_cache(images, 16, tmp_path, "val", progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_a_corrupt_image_is_named(tiny_dataset, tmp_path):
    images = scan_split(tiny_dataset, "val")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = type(images)((broken,), (0,), images.classes)
    with pytest.raises(UserError, match="broken.png: cannot read image"):
        FolderImages(bad, 32)[0]
    with pytest.raises(UserError, match="broken.png: cannot read image"):
        decoded_cache(bad, 32, tmp_path, "bad", progress=False)
    with pytest.raises(UserError, match="broken.png: cannot read image"):
        AugmentedImages(bad, DataSettings(augment_at="full_size"))[0]
    assert not list(tmp_path.glob("*.npy"))


def test_augment_without_rotation_is_the_flips():
    x = torch.rand(64, 3, 8, 8)
    settings = DataSettings(rotation=0)
    out = augment(x, settings, torch.Generator().manual_seed(0))
    draws = torch.rand(2, 64, generator=torch.Generator().manual_seed(0))
    for i in range(64):
        expected = x[i]
        if draws[0, i] < 0.5:
            expected = expected.flip(-1)
        if draws[1, i] < 0.5:
            expected = expected.flip(-2)
        assert torch.allclose(out[i], expected, atol=1e-5)
    assert 10 < (draws[0] < 0.5).sum() < 54


def test_rotation_is_seeded_and_bounded():
    x = torch.zeros(1, 1, 33, 33)
    x[..., 16, :] = 1  # a horizontal line through the centre
    settings = DataSettings(hflip=False, vflip=False, rotation=10)
    a = augment(x.expand(200, 1, 33, 33), settings, torch.Generator().manual_seed(1))
    b = augment(x.expand(200, 1, 33, 33), settings, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    for image in a[:, 0]:
        w = image.clamp(min=0)
        slope = ((w * (xs - 16) * (ys - 16)).sum() / (w * (xs - 16) ** 2).sum()).item()
        assert abs(np.degrees(np.arctan(slope))) <= 10.5


def test_prepare_scales_and_normalises():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.equal(prepare(batch, DataSettings(normalize=False)), torch.ones(2, 3, 4, 4))
    normalised = prepare(batch, DataSettings(normalize=True))
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(normalised[0, :, 0, 0], expected)


def test_folder_errors_name_the_folder(tmp_path):
    from prunexplain.data.folders import scan_image_folder

    with pytest.raises(UserError, match=f"{tmp_path / 'nope'}: no such folder"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "a" / "x.png").write_bytes(b"")
    with pytest.raises(UserError, match=f"{tmp_path / 'train' / 'b'}: empty class folder"):
        scan_image_folder(tmp_path / "train")
    with pytest.raises(UserError, match=r"class folders do not match \(unknown: \['a', 'b'\], missing: \['c'\]\)"):
        scan_image_folder(tmp_path / "train", {"c": "0-c"})


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("RGB", (32, 32)).save(path)
    images = ImageSet((path,), (0,), ("a",))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 1024 pixels: PIL only warns below 2x the limit
    with pytest.raises(UserError, match=r"bomb.png: image too large to decode \(Image size \(1024 pixels\) exceeds"):
        FolderImages(images, 16)[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # above 2x: PIL's DecompressionBombError
    with pytest.raises(UserError) as error:
        decoded_cache(images, 16, tmp_path, "bomb", progress=False)
    assert str(error.value).startswith(f"{path}: image too large to decode") and "\n" not in str(error.value)
    assert not list(tmp_path.glob("*.npy"))


def test_masks_are_read_at_the_models_size(tiny_dataset):
    images = scan_split(tiny_dataset, "val").subset([0, 5])
    masks = object_masks(images, 16)
    assert masks.shape == (2, 16, 16) and masks.dtype == bool and 0 < masks.mean() < 0.6
    assert object_masks(ImageSet(images.paths, images.labels, images.classes), 16) is None


def test_a_mask_of_another_size_than_its_image_is_refused(tiny_dataset, tmp_path):
    from PIL import Image

    images = scan_split(tiny_dataset, "val").subset([0])
    wrong = tmp_path / "mask.png"
    Image.new("L", (40, 32)).save(wrong)
    bad = ImageSet(images.paths, images.labels, images.classes, (wrong,))
    with pytest.raises(UserError) as error:
        object_masks(bad, 16)
    assert str(error.value) == (f"{wrong}: object mask is 40x32 pixels, its image {images.paths[0]} is 32x32; "
                                "a mask must match its image")
    with pytest.raises(UserError, match=r"missing.png: no such image file"):
        read_mask(tmp_path / "missing.png", images.paths[0], 16)


def test_data_root_must_be_a_folder(tmp_path):
    from prunexplain.data import check_root, dataset_root
    from prunexplain.runs import Run

    file = tmp_path / "data.zip"
    file.write_bytes(b"PK")
    run = Run(tmp_path / "run")
    for dataset in ("imagenette", "synthetic"):
        with pytest.raises(UserError, match=f"data.root: .*{file}.*is a file"):
            dataset_root(DataSettings(dataset=dataset, root=file), run, progress=False)
    with pytest.raises(UserError, match=r"data.root: no such folder"):
        check_root(DataSettings(dataset="imagenette", root=tmp_path / "none"), run)
    assert not (tmp_path / "run").exists()


def _random_images(folder, sizes=((45, 37), (37, 50), (33, 33))) -> ImageSet:
    """Noise images larger than the model's 32 px, values 1..255 so that 0 can only be a fill."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (width, height) in enumerate(sizes):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(1, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    return ImageSet(tuple(paths), tuple(range(len(paths))), ("a", "b", "c"))


def _full_size(**changes) -> DataSettings:
    return DataSettings(image_size=32, augment_at="full_size", **changes)


def _rgb(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def test_full_size_without_augmentation_is_the_cache_and_the_originals_test_transform(tmp_path):
    from torchvision import transforms

    images = _random_images(tmp_path)
    data = _full_size(hflip=False, vflip=False, rotation=0)
    runtime = RuntimeSettings(cache_dir=tmp_path, progress=False)
    train = image_dataset(images, data, tmp_path, "train", runtime, train=True)
    cached = image_dataset(images, data, tmp_path, "train", runtime)
    assert isinstance(train, AugmentedImages) and isinstance(cached, CachedImages)
    test_transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])  # helpers.py
    for i in range(len(images)):
        assert train[i][0].dtype == torch.uint8 and train[i][0].shape == (3, 32, 32)
        assert torch.equal(train[i][0], cached[i][0]) and train[i][1] == cached[i][1] == i
        original = test_transform(_rgb(images.paths[i]))
        assert torch.equal((original * 255).round().to(torch.uint8), cached[i][0])


def test_full_size_items_are_the_originals_train_transform_under_the_same_seed(tmp_path):
    from torchvision import transforms

    images = _random_images(tmp_path)
    dataset = AugmentedImages(images, _full_size())
    train_transform = transforms.Compose([  # helpers.py imagenette_dataloader, at 32 px
        transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(), transforms.RandomRotation(10),
        transforms.Resize((32, 32)), transforms.ToTensor(),
    ])
    outputs = set()
    for seed in range(8):
        torch.manual_seed(seed)
        ours = dataset[seed % len(images)][0]
        torch.manual_seed(seed)
        original = train_transform(_rgb(images.paths[seed % len(images)]))
        assert torch.equal(ours, (original * 255).round().to(torch.uint8))
        outputs.add(ours.numpy().tobytes())
    assert len(outputs) == 8


def test_forced_flips_flip_the_full_size_image_before_the_resize(tmp_path):
    from PIL import Image

    images = _random_images(tmp_path)
    def draws(seed):  # the two flips' draws, in the order the transforms take them
        torch.manual_seed(seed)
        return torch.rand(1).item(), torch.rand(1).item()

    seed = next(s for s in range(100) if max(draws(s)) < 0.5)  # both flip (p = 0.5 each)
    dataset = AugmentedImages(images, _full_size(rotation=0))
    torch.manual_seed(seed)
    item = dataset[0][0]
    flipped = _rgb(images.paths[0]).transpose(Image.FLIP_LEFT_RIGHT).transpose(Image.FLIP_TOP_BOTTOM)
    expected = torch.from_numpy(np.array(flipped.resize((32, 32), Image.BILINEAR))).permute(2, 0, 1)
    assert torch.equal(item, expected) and not torch.equal(item, FolderImages(images, 32)[0][0])


def test_full_size_rotation_is_nearest_with_black_corners_on_the_same_canvas(tmp_path):
    images = _random_images(tmp_path, sizes=((41, 41),))
    source = _rgb(images.paths[0])
    rotate = full_size_augmentation(DataSettings(hflip=False, vflip=False, rotation=10))
    assert len(rotate.transforms) == 1
    torch.manual_seed(3)
    angle = torch.empty(1).uniform_(-10, 10).item()
    torch.manual_seed(3)
    out, pixels = np.array(rotate(source)), np.array(source)
    assert abs(angle) > 3 and out.shape == pixels.shape and not np.array_equal(out, pixels)
    assert (out[[0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()
    colours = {tuple(p) for p in pixels.reshape(-1, 3)} | {(0, 0, 0)}
    assert {tuple(p) for p in out.reshape(-1, 3)} <= colours
    unchanged = full_size_augmentation(DataSettings(hflip=False, vflip=False, rotation=0))
    assert np.array_equal(np.array(unchanged(source)), pixels)


@pytest.mark.parametrize("workers", [0, 2])
def test_full_size_batches_are_seeded(tiny_dataset, workers):
    from prunexplain.train import make_loader

    dataset = AugmentedImages(scan_split(tiny_dataset, "train"), _full_size())

    def batches(seed):  # seeded as fit() seeds the draws of its loader
        loader = make_loader(dataset, 16, torch.device("cpu"), seed, workers)
        torch.manual_seed(seed)
        loader.generator.manual_seed(seed)
        return [images for images, _ in loader][:2]

    first, again, other = batches(5), batches(5), batches(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_prepare_does_not_augment_full_size_batches_again():
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    full, cached = DataSettings(augment_at="full_size"), DataSettings()
    plain = prepare(batch, cached)
    assert torch.equal(prepare(batch, full, torch.Generator().manual_seed(0)), plain)
    assert not torch.equal(prepare(batch, cached, torch.Generator().manual_seed(0)), plain)


def test_run_loaders_augment_only_the_train_split_at_full_size(tmp_path, tiny_dataset):
    from prunexplain.runs import Run
    from prunexplain.train import run_loaders
    from tests.conftest import tiny_settings

    settings = tiny_settings(tmp_path, tiny_dataset, "data.augment_at=full_size")
    _, loaders = run_loaders(settings, Run(settings.run_dir), torch.device("cpu"))
    assert isinstance(loaders["train"].dataset, AugmentedImages)
    assert isinstance(loaders["valid"].dataset, CachedImages) and isinstance(loaders["test"].dataset, CachedImages)


def test_dataset_statistics_are_the_training_images_mean_and_std():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, 0] //= 4  # channels of different means
    train = torch.utils.data.TensorDataset(images, torch.zeros(10, dtype=torch.long))
    data = with_dataset_statistics(DataSettings(normalize="dataset"), train)
    x = images.double() / 255
    assert data.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert data.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    normalised = prepare(images, data).double()
    assert normalised.mean((0, 2, 3)).abs().max() < 1e-5
    assert (normalised.std((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
    for other in (DataSettings(normalize=True), DataSettings(normalize="imagenet"), DataSettings()):
        assert with_dataset_statistics(other, train) is other  # only normalize='dataset' computes them
    imagenet = prepare(images, DataSettings(normalize="imagenet"))
    assert torch.equal(imagenet, prepare(images, DataSettings(normalize=True)))
    with pytest.raises(UserError, match="computed by `prunexplain train`"):
        prepare(images, DataSettings(normalize="dataset"))


@pytest.mark.parametrize(("fields", "message"), [
    ({"normalize": True, "mean": [0.5] * 3, "std": [0.2] * 3}, "statistics of normalize='dataset'"),
    ({"normalize": "dataset", "mean": [0.5] * 3}, "give both or neither"),
    ({"normalize": "dataset", "mean": [0.5] * 3, "std": [0.2, 0, 0.2]}, "all positive"),
    ({"normalize": "dataset", "mean": [0.5] * 2, "std": [0.2] * 3}, "three values"),
    ({"normalize": "ImageNet"}, "normalize"),
])
def test_bad_normalisation_settings_say_what_is_wrong(fields, message):
    with pytest.raises(ValueError, match=message):
        DataSettings(**fields)
