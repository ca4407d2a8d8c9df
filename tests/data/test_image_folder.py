"""ImageFolderDataModule on small PNG/JPEG folders and archives written here.

The random test images carry their own index in pixel (0, 0) of the red channel and the
values 0 and 255 in pixels (0, 1) and (0, 2), so a loaded image can be matched to the
written one and the value range is hit exactly at both ends.
"""

import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from gen_lightning.data import ImageFolderDataModule
from gen_lightning.data import image_folder
from gen_lightning.errors import ConfigError, DatasetNotFoundError

CLASSES = ["cat", "dog", "fox"]  # sorted: labels 0, 1, 2


def random_image(index: int, size=(12, 12), channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(index)
    image = torch.randint(0, 256, (channels, *size), generator=g, dtype=torch.uint8)
    image[0, 0, 0], image[:, 0, 1], image[:, 0, 2] = index, 0, 255
    return image


def constant_image(color, size) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.uint8)[:, None, None].expand(len(color), *size).contiguous()


def write_image(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        write_png(image, str(path))
    else:
        write_jpeg(image, str(path), quality=95)


def write_classes(folder: Path, per_class: int, first_index: int) -> dict[int, tuple[torch.Tensor, int]]:
    """`folder/<class>/<index>.png` for each class; returns {index: (image, label)}."""
    written = {}
    for label, name in enumerate(CLASSES):
        for k in range(per_class):
            index = first_index + label * per_class + k
            written[index] = (random_image(index), label)
            write_image(folder / name / f"{index:03d}.png", written[index][0])
    return written


@pytest.fixture
def pets(tmp_path: Path) -> tuple[Path, dict, dict]:
    """pets/train/<class>/ with 6 images per class, pets/test/<class>/ with 2."""
    root = tmp_path / "pets"
    return root, write_classes(root / "train", 6, first_index=0), write_classes(root / "test", 2, first_index=100)


def make(root: Path, tmp_path: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), **{"val_size": 3, "batch_size": 8} | kwargs)
    dm.setup()
    return dm


def indices(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].tolist()


def assert_same_as_written(x: torch.Tensor, y: torch.Tensor, written: dict) -> None:
    for image, label in zip(x, y):
        expected, expected_label = written[int(image[0, 0, 0])]
        assert torch.equal(image, expected) and label.item() == expected_label


def tar_folder(folder: Path, archive: Path, arcname: str = "") -> Path:
    mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(Path(arcname) / path.relative_to(folder)), recursive=False)
    return archive


def count_calls(monkeypatch, owner, name: str) -> list:
    calls = []
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# ---- layouts --------------------------------------------------------------------------------
def test_train_and_test_folders_are_the_splits(pets, tmp_path):
    root, train, test = pets
    dm = make(root, tmp_path)
    assert [len(dm.split(n)) for n in ("train", "val", "test")] == [15, 3, 6]
    assert dm.class_names == CLASSES and dm.num_classes == 3
    assert dm.data_shape == (3, 12, 12) and dm.dataset_name == "pets"
    for name, written in (("train", train), ("val", train), ("test", test)):
        x, y = dm._splits[name]
        assert x.dtype == torch.uint8 and y.dtype == torch.long
        assert_same_as_written(x, y, written)  # PNG is lossless: every pixel and label as written
    assert sorted(indices(dm._splits["train"][0]) + indices(dm._splits["val"][0])) == sorted(train)
    assert dm.describe()["test_split"] == "folder test/"


def test_batches_convert_to_the_value_range_exactly(pets, tmp_path):
    for value_range, (lo, hi) in (("0,1", (0.0, 1.0)), ("-1,1", (-1.0, 1.0))):
        dm = make(pets[0], tmp_path, value_range=value_range)
        x8, y = next(iter(dm.train_dataloader()))
        assert x8.shape == (8, 3, 12, 12) and x8.dtype == torch.uint8
        x, _ = dm.on_after_batch_transfer((x8, y), 0)
        assert x.dtype == torch.float32 and x.min().item() == lo and x.max().item() == hi


def test_flat_class_folders_get_a_seeded_test_split(tmp_path):
    written = write_classes(tmp_path / "flowers", 10, first_index=0)
    dm = make(tmp_path / "flowers", tmp_path, test_size=0.2, val_size=4)
    assert [len(dm.split(n)) for n in ("train", "val", "test")] == [20, 4, 6]
    everything = [i for n in ("train", "val", "test") for i in indices(dm._splits[n][0])]
    assert sorted(everything) == sorted(written)  # a partition of the folder
    for name in ("train", "val", "test"):
        assert_same_as_written(*dm._splits[name], written)
    tests = [indices(make(tmp_path / "flowers", tmp_path, test_size=6, seed=s)._splits["test"][0]) for s in (0, 0, 1)]
    assert tests[0] == tests[1] and tests[0] != tests[2]
    assert "test_size=0.2" in dm.describe()["test_split"]


def test_jpeg_images_decode_close_to_the_original(tmp_path):
    ramp = torch.arange(16, dtype=torch.uint8)[None, :] * 16  # smooth: JPEG keeps it within a few levels
    image = torch.stack([ramp.expand(16, 16), ramp.T.expand(16, 16), torch.full((16, 16), 128, dtype=torch.uint8)])
    for name in CLASSES:
        write_image(tmp_path / "jpegs" / name / "a.jpg", image)
        write_image(tmp_path / "jpegs" / name / "b.JPEG", image.flip(-1))
    dm = make(tmp_path / "jpegs", tmp_path, test_size=0, val_size=0)
    x, y = dm._splits["train"]
    assert x.shape == (6, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    originals = torch.stack([image if x_i[0, 0, 0] < 120 else image.flip(-1) for x_i in x])
    assert (x.float() - originals.float()).abs().mean().item() < 3.0


def test_grayscale_and_rgb_conversion(tmp_path):
    for name, value in zip(CLASSES, (10, 128, 250)):
        write_image(tmp_path / "gray" / name / "rgb.png", constant_image((value, value, value), (8, 8)))
        write_image(tmp_path / "gray" / name / "one.png", constant_image((value,), (8, 8)))
    gray = make(tmp_path / "gray", tmp_path, channels=1, test_size=0, val_size=0)
    x, y = gray._splits["train"]
    assert x.shape == (6, 1, 8, 8) and gray.data_shape == (1, 8, 8)
    for image, label in zip(x, y):  # R = G = B = v has luma v, whatever the weights
        assert (image.int() - (10, 128, 250)[label]).abs().max() <= 1
    rgb = make(tmp_path / "gray", tmp_path, channels=3, test_size=0, val_size=0)
    x, y = rgb._splits["train"]
    assert x.shape == (6, 3, 8, 8)  # a 1-channel PNG is expanded to 3 equal channels
    assert all((image == (10, 128, 250)[label]).all() for image, label in zip(x, y))


# ---- sizes ----------------------------------------------------------------------------------
def centered_white_square(height: int, width: int) -> torch.Tensor:
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    top, left = (height - min(height, width)) // 2, (width - min(height, width)) // 2
    image[:, top : top + min(height, width), left : left + min(height, width)] = 255
    return image


def test_image_size_resizes_the_shorter_side_and_crops_the_center(tmp_path):
    folder = tmp_path / "mixed"
    for name in CLASSES:
        write_image(folder / name / "wide.png", centered_white_square(10, 30))  # crop only
        write_image(folder / name / "tall.png", centered_white_square(40, 10))  # crop only
        write_image(folder / name / "big.png", constant_image((30, 60, 90), (20, 40)))  # resize and crop
    dm = make(folder, tmp_path, image_size=10, test_size=0, val_size=0)
    assert dm.data_shape == (3, 10, 10)
    x, _ = dm._splits["train"]
    assert x.shape == (9, 3, 10, 10)
    white = (x == 255).flatten(1).all(1)
    assert white.sum() == 6  # the central square of every wide/tall image
    assert (x[~white] == torch.tensor([30, 60, 90], dtype=torch.uint8)[:, None, None]).all()  # a flat color stays flat


def test_crop_without_resize_cuts_at_native_scale(tmp_path):
    for name in CLASSES:
        write_image(tmp_path / "wide" / name / "a.png", centered_white_square(12, 30))
    dm = make(tmp_path / "wide", tmp_path, image_size=12, resize=False, test_size=0, val_size=0)
    assert (dm._splits["train"][0] == 255).all()


@pytest.mark.parametrize(
    "kwargs, sizes, match",
    [
        ({}, [(12, 12), (12, 12), (10, 12)], "set image_size"),
        ({"image_size": 8, "center_crop": False}, [(16, 16), (16, 24)], "set center_crop: true"),
        ({"image_size": 14, "resize": False}, [(16, 16), (12, 16)], "set resize: true"),
    ],
)
def test_images_that_do_not_fit_name_the_first_odd_file_and_the_fix(tmp_path, kwargs, sizes, match):
    for i, size in enumerate(sizes):
        write_image(tmp_path / "odd" / CLASSES[0] / f"{i}.png", random_image(i, size))
    odd = f"{len(sizes) - 1}.png"
    with pytest.raises(ConfigError, match=match) as err:
        make(tmp_path / "odd", tmp_path, test_size=0, val_size=0, **kwargs)
    assert odd in str(err.value) and "\n" not in str(err.value)


def test_data_shape_is_known_without_reading_when_image_size_is_set(tmp_path):
    dm = ImageFolderDataModule(root=str(tmp_path / "not-there"), image_size=32, channels=1)
    assert dm.data_shape == (1, 32, 32)


def test_native_data_shape_and_classes_are_read_on_demand(pets, tmp_path):
    dm = ImageFolderDataModule(root=str(pets[0]), cache_dir=str(tmp_path / "cache"), val_size=3)
    assert dm.data_shape == (3, 12, 12) and dm.num_classes == 3  # runs setup()
    assert len(dm.split("test")) == 6


# ---- archives and caches ----------------------------------------------------------------------
def test_archive_is_extracted_once_and_decoded_once(pets, tmp_path, monkeypatch):
    root, train, test = pets
    archive = tar_folder(root, tmp_path / "pets.tar.gz")
    from_folder = make(root, tmp_path / "other")
    extractions = count_calls(monkeypatch, tarfile.TarFile, "extractall")
    decodes = count_calls(monkeypatch, image_folder, "decode_images")
    first = make(archive, tmp_path, name="Pets (PNG)")
    assert len(extractions) == 1 and len(decodes) == 2  # train and test
    assert first.dataset_name == "Pets (PNG)" and first.describe()["dataset"] == "Pets (PNG)"
    for name in ("train", "val", "test"):
        assert torch.equal(first._splits[name][0], from_folder._splits[name][0])
    again = make(archive, tmp_path)
    assert len(extractions) == 1 and len(decodes) == 2  # both caches reused
    assert again.dataset_name == "pets"
    for name in ("train", "val", "test"):
        assert torch.equal(first._splits[name][0], again._splits[name][0])
    assert len(list((tmp_path / "cache" / "extracted").iterdir())) == 1


def test_half_done_extraction_is_redone(pets, tmp_path):
    archive = tar_folder(pets[0], tmp_path / "pets.tgz")
    dest = image_folder.extract_once(archive, tmp_path / "extracted")
    (dest / image_folder.EXTRACTED_MARKER).unlink()  # as if the process died mid-way
    (dest / "train" / "cat" / "000.png").unlink()
    (dest / "junk.txt").write_text("left over")
    assert image_folder.extract_once(archive, tmp_path / "extracted") == dest
    assert (dest / "train" / "cat" / "000.png").exists() and not (dest / "junk.txt").exists()
    assert (dest / image_folder.EXTRACTED_MARKER).exists()


@pytest.mark.parametrize("name", ["pets.tar", "pets.tgz", "wrapped.tar.gz"])
def test_archive_kinds_and_a_wrapping_top_folder(pets, tmp_path, name):
    arcname = "pets" if name.startswith("wrapped") else ""
    archive = tar_folder(pets[0], tmp_path / name, arcname=arcname)
    dm = make(archive, tmp_path)
    assert dm.class_names == CLASSES and [len(dm.split(n)) for n in ("train", "val", "test")] == [15, 3, 6]
    assert dm.dataset_name == name.split(".")[0]


def test_unsafe_archive_is_refused_and_writes_nothing_outside(tmp_path):
    evil = tmp_path / "evil.png"
    write_image(evil, random_image(0))
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(evil, arcname="../../escaped.png")
    with pytest.raises(ConfigError, match="unsafe member"):
        make(archive, tmp_path)
    assert not list(tmp_path.rglob("escaped.png"))


def test_decoded_cache_is_keyed_by_options_and_file_contents(pets, tmp_path, monkeypatch):
    root = pets[0]
    decodes = count_calls(monkeypatch, image_folder, "decode_images")
    make(root, tmp_path)
    make(root, tmp_path, channels=1)
    make(root, tmp_path, channels=1, value_range="-1,1", seed=5)  # options that do not change pixels
    assert len(decodes) == 4 and len(list((tmp_path / "cache" / "decoded").glob("*.pt"))) == 2
    replacement = random_image(0)
    replacement[:, 5:] = 7
    write_image(root / "test" / "dog" / "102.png", replacement)  # same name, new content
    dm = make(root, tmp_path)
    assert len(decodes) == 6
    assert any(torch.equal(x, replacement) for x in dm._splits["test"][0])


# ---- errors ---------------------------------------------------------------------------------
def test_missing_root_gives_one_sentence(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        make(tmp_path / "nowhere", tmp_path)
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)


def test_folder_without_class_folders_or_images(tmp_path):
    write_image(tmp_path / "loose" / "a.png", random_image(0))
    with pytest.raises(DatasetNotFoundError, match="no class subfolders"):
        make(tmp_path / "loose", tmp_path)
    (tmp_path / "empty_class" / "cat").mkdir(parents=True)
    (tmp_path / "empty_class" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError, match="holds no images"):
        make(tmp_path / "empty_class", tmp_path)


def test_split_folders_must_come_in_pairs_with_the_same_classes(pets, tmp_path):
    root = pets[0]
    (root / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetNotFoundError, match="no test/"):
        make(root, tmp_path)
    write_classes(root / "holdout", 2, first_index=100)
    (root / "holdout" / "fox").rename(root / "holdout" / "wolf")
    with pytest.raises(DatasetNotFoundError, match="different class folders.*fox, wolf"):
        make(root, tmp_path, test_dir="holdout")


def test_unreadable_image_and_non_archive_file(tmp_path):
    write_classes(tmp_path / "broken", 1, first_index=0)
    (tmp_path / "broken" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot decode .*bad.png"):
        make(tmp_path / "broken", tmp_path, test_size=0, val_size=0)
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(ConfigError, match="not a .tar, .tar.gz or .tgz"):
        make(tmp_path / "data.zip", tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": 2}, "channels must be 1"),
        ({"image_size": 0}, "image_size must be >= 1"),
        ({"test_size": -1}, "test_size must be >= 0"),
        ({"test_size": 1.0}, r"test_size as a fraction must be in \[0, 1\)"),
        ({"test_dir": "train"}, "two different folder names"),
    ],
)
def test_bad_values_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImageFolderDataModule(root="anywhere", **kwargs)
