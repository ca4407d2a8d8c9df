"""Any folder of class subfolders (or a .tar/.tar.gz/.tgz of one), decoded once into memory.

Layouts:
  - `root/train/<class>/<image>` and `root/test/<class>/<image>`: the two folders are the
    splits (names set by `train_dir`, `test_dir`);
  - `root/<class>/<image>`: the test split is carved with a seed (`test_size`).
Either way the validation split is then carved from train with a seed (see base.py).

Every image is decoded with `torchvision.io.decode_image` and resized or cropped as a uint8
tensor, all at setup, into ONE uint8 tensor `(N, C, H, W)`; training then never touches a
file or a PIL image. Two caches under `cache_dir` make the second run start in a second:
  - `extracted/<archive name>-<size>-<mtime_ns>/`: the archive, extracted once, with a
    marker written last, so an extraction cut short is redone;
  - `decoded/<name>-<key>.pt`: the decoded tensors, keyed by the file list (paths, sizes,
    mtimes) and by the options that change pixels (image_size, channels, resize, center_crop).
Lightning builds both in `prepare_data`, on one process; `setup` then only loads them.

Decoding is serial: on 32x32 JPEGs a thread pool was 2x slower than one loop on 2 cores
(each decode is ~30 us, so the GIL hand-offs cost more than they save).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_image

from gen_lightning.data.base import Binarize, ImageDataModule, ValueRange, check_split_size, one_line, split_train_val
from gen_lightning.errors import ConfigError, DatasetNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
EXTRACTED_MARKER = ".gen_lightning_extracted"
DECODE_CHUNK = 2048  # images decoded, then resized as a batch, at a time: bounds memory for big photos
CACHE_FORMAT = 1  # bump when the decoded cache's content changes meaning


class ImageFolderDataModule(ImageDataModule):
    """Class-folder images; `num_classes` is the number of class folders, named in `class_names`.

    `image_size=None` keeps the native size, which every image must then share. With an
    `image_size`, `resize` scales the shorter side to it and `center_crop` cuts the square.
    """

    def __init__(
        self,
        root: str,
        name: str | None = None,
        image_size: int | None = None,
        channels: Literal[1, 3] = 3,
        resize: bool = True,
        center_crop: bool = True,
        train_dir: str = "train",
        test_dir: str = "test",
        test_size: int | float = 0.1,
        cache_dir: str = "~/.cache/gen_lightning",
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 0.1,
        value_range: ValueRange = "0,1",
        binarize: Binarize = "none",
        horizontal_flip: bool = False,
        seed: int = 0,
        predict_size: int = 64,
    ):
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_size=val_size,
            value_range=value_range,
            binarize=binarize,
            horizontal_flip=horizontal_flip,
            seed=seed,
            predict_size=predict_size,
        )
        if image_size is not None and image_size < 1:
            raise ConfigError(f"image_size must be >= 1 or null (native size), got {image_size}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if not train_dir or not test_dir or train_dir == test_dir:
            raise ConfigError(f"train_dir and test_dir must be two different folder names, got {train_dir!r} and {test_dir!r}")
        check_split_size(test_size, "test_size")
        self.root = root
        self.name = name
        self.image_size = image_size
        self.channels = channels
        self.resize = resize
        self.center_crop = center_crop
        self.train_dir, self.test_dir = train_dir, test_dir
        self.test_size = test_size
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self._class_names: list[str] = []
        self._test_split = ""

    # ---- the contract -------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        return self.name or source_stem(Path(self.root).expanduser().resolve())

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """Known from the options with an `image_size`; else read from the data (runs `setup`)."""
        if self.image_size is not None:
            return (self.channels, self.image_size, self.image_size)
        self.setup()
        return tuple(self._splits["train"][0].shape[1:])

    @property
    def class_names(self) -> list[str]:
        """Class folder names in label order (sorted); reading it before setup runs `setup`."""
        self.setup()
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return super().describe() | {
            "source": str(Path(self.root).expanduser()),
            "resize": self.resize if self.image_size is not None else "native size",
            "center_crop": self.center_crop if self.image_size is not None else "native size",
            "test_split": self._test_split,
        }

    # ---- loading ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Extract and decode once, on one process (Lightning calls this before `setup` on every process)."""
        self._decoded_cache()

    def setup(self, stage: str | None = None) -> None:
        if self._splits:  # loaded already: setup runs once per stage
            return
        data = torch.load(self._decoded_cache(), weights_only=True)
        self._class_names = data["class_names"]
        splits = data["splits"]
        if "all" in splits:  # no train/test folders: carve the test split with the seed
            x, y = splits["all"]
            keep, held = split_train_val(len(x), self.test_size, self.seed, name="test_size")
            train, test = (x[keep], y[keep]), (x[held], y[held])
            self._test_split = f"seeded (seed {self.seed}) test_size={self.test_size} of the class folders"
        else:
            train, test = splits["train"], splits["test"]
            self._test_split = f"folder {self.test_dir}/"
        self._set_splits(train=train, test=test)

    def _decoded_cache(self) -> Path:
        """Path of the `.pt` holding the decoded images, decoding them first if it is missing."""
        folders = find_splits(self._image_root(), self.train_dir, self.test_dir)
        class_names = same_classes(folders)
        files = {split: list_images(folder, class_names) for split, folder in folders.items()}
        options = {"image_size": self.image_size, "channels": self.channels, "resize": self.resize, "center_crop": self.center_crop}
        stem = source_stem(Path(self.root).expanduser().resolve())
        path = self.cache_dir / "decoded" / f"{stem}-{cache_key(folders, files, options)}.pt"
        if not path.exists():
            splits = {split: (self._decode(paths), labels) for split, (paths, labels) in files.items()}
            save_atomically({"class_names": class_names, "splits": splits}, path)
        return path

    def _decode(self, paths: list[str]) -> torch.Tensor:
        return decode_images(paths, self.channels, self.image_size, self.resize, self.center_crop)

    def _image_root(self) -> Path:
        """The folder to read: `root` itself, or the archive extracted into the cache."""
        path = Path(self.root).expanduser().resolve()
        if not path.exists():
            raise DatasetNotFoundError(
                f"ImageFolderDataModule found nothing at {path}; set `root` to a folder of class subfolders "
                "or to a .tar, .tar.gz or .tgz archive of one"
            )
        if path.is_dir():
            return path
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise ConfigError(f"root {path} is a file but not a .tar, .tar.gz or .tgz archive; point `root` at a folder or an archive")
        return unwrap_single_folder(extract_once(path, self.cache_dir / "extracted"))


# ---- archives -----------------------------------------------------------------------------
def source_stem(path: Path) -> str:
    """The folder name, or the archive name without .tar/.tar.gz/.tgz."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name.removesuffix(suffix)
    return path.name


def extract_once(archive: Path, cache_dir: Path) -> Path:
    """Extract `archive` into `cache_dir`, keyed by its name, size and mtime; reuse a complete extraction.

    The marker is written after the last file, so a folder without it is a half-done
    extraction and is redone. `filter="data"` refuses absolute paths, links out of the
    folder and device files, so an archive cannot write outside its folder.
    """
    stat = archive.stat()
    dest = cache_dir / f"{archive.name}-{stat.st_size}-{stat.st_mtime_ns}"
    if (dest / EXTRACTED_MARKER).exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as err:
        raise ConfigError(f"{archive} holds an unsafe member ({err}); extract it yourself and point `root` at the folder") from None
    except (tarfile.ReadError, EOFError) as err:
        raise ConfigError(f"{archive} is not a readable tar archive ({one_line(err)}); check the file or point `root` at a folder") from None
    (dest / EXTRACTED_MARKER).touch()
    return dest


def unwrap_single_folder(folder: Path) -> Path:
    """Archives often wrap everything in one top folder (`flowers/daisy/...`): read inside it.

    Only a lone folder that holds no images itself is unwrapped; a lone folder of images is
    a one-class dataset and stays as it is (it then fails as "no class subfolders").
    """
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not any(p.is_file() and is_image_name(p.name) for p in entries[0].iterdir()):
        return entries[0]
    return folder


# ---- listing ------------------------------------------------------------------------------
def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def find_splits(folder: Path, train_dir: str, test_dir: str) -> dict[str, Path]:
    """`{"train": ..., "test": ...}` when both split folders exist, else `{"all": folder}`."""
    train, test = folder / train_dir, folder / test_dir
    if train.is_dir() and test.is_dir():
        return {"train": train, "test": test}
    if train.is_dir() or test.is_dir():
        present, missing = (train_dir, test_dir) if train.is_dir() else (test_dir, train_dir)
        raise DatasetNotFoundError(
            f"{folder} has a {present}/ folder but no {missing}/; add {missing}/<class>/ folders, "
            "or set train_dir and test_dir to the names of the two split folders"
        )
    return {"all": folder}


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the class subfolders; the label of a class is its index here."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetNotFoundError(
            f"{folder} has no class subfolders; expected {folder}/<class>/<image> "
            f"({', '.join(IMAGE_SUFFIXES)}), or train/ and test/ folders of those"
        )
    return names


def same_classes(folders: dict[str, Path]) -> list[str]:
    """The class names, checked to be the same in every split folder."""
    names = {split: class_folders(folder) for split, folder in folders.items()}
    first_split, first = next(iter(names.items()))
    for split, other in names.items():
        if other != first:
            odd = sorted(set(first) ^ set(other))
            raise DatasetNotFoundError(
                f"{folders[split]} and {folders[first_split]} hold different class folders ({', '.join(odd)}); "
                "give both splits the same classes"
            )
    return first


def list_images(folder: Path, class_names: list[str]) -> tuple[list[str], torch.Tensor]:
    """Image paths in class order, then file-name order, and their labels `(N,)`.

    os.scandir, not Path.iterdir + is_file: it knows file types without a stat per file,
    which matters at 60,000 files.
    """
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        with os.scandir(folder / name) as entries:
            found = sorted(e.path for e in entries if e.is_file() and is_image_name(e.name))
        if not found:
            raise DatasetNotFoundError(f"{folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove the folder")
        paths += found
        labels += [label] * len(found)
    return paths, torch.tensor(labels, dtype=torch.long)


# ---- decoding -----------------------------------------------------------------------------
def decode_images(
    paths: list[str], channels: int, image_size: int | None, resize: bool, center_crop: bool
) -> torch.Tensor:
    """All images as one uint8 tensor `(N, C, H, W)`, decoded and fitted a chunk at a time."""
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    out: torch.Tensor | None = None
    for start in range(0, len(paths), DECODE_CHUNK):
        chunk = paths[start : start + DECODE_CHUNK]
        images = [decode_one(p, mode) for p in chunk]
        if out is None:  # the first image fixes the size when there is no image_size
            height, width = (image_size, image_size) if image_size else images[0].shape[-2:]
            out = torch.empty((len(paths), channels, height, width), dtype=torch.uint8)
        for idx, batch in batches_by_size(images):
            batch = fit(batch, image_size, resize, center_crop)
            if batch.shape[-2:] != out.shape[-2:]:
                raise ConfigError(size_mismatch(chunk[idx[0]], batch.shape[-2:], paths[0], out.shape[-2:], image_size, resize))
            out[start + idx] = batch
    return out


def decode_one(path: str, mode: ImageReadMode) -> torch.Tensor:
    """One image as uint8 `(C, H, W)`; 16-bit PNGs are scaled down to 8 bits."""
    try:
        image = decode_image(path, mode=mode)
    except RuntimeError as err:
        raise ConfigError(f"cannot decode {path} ({one_line(err)}); remove it or re-encode it as PNG or JPEG") from None
    return image if image.dtype == torch.uint8 else F.to_dtype(image, torch.uint8, scale=True)


def batches_by_size(images: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group same-size images into stacked batches `(k, C, H, W)`, with their positions `(k,)`."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    return [(torch.tensor(idx), torch.stack([images[i] for i in idx])) for idx in groups.values()]


def fit(batch: torch.Tensor, image_size: int | None, resize: bool, center_crop: bool) -> torch.Tensor:
    """Resize the shorter side to `image_size`, then cut the central square; None keeps the size."""
    if image_size is None:
        return batch
    if resize:
        batch = F.resize(batch, [image_size], antialias=True)
    if center_crop and min(batch.shape[-2:]) >= image_size:  # a smaller image would be padded: refused later
        batch = F.center_crop(batch, [image_size, image_size])
    return batch


def size_mismatch(path: str, size, first: str, expected, image_size: int | None, resize: bool) -> str:
    """One sentence naming the first image that does not fit, and the option that would fix it."""
    got, want = "x".join(map(str, size)), "x".join(map(str, expected))
    if image_size is None:
        return f"{path} is {got} but {first} is {want}; set image_size to resize every image to one size"
    if not resize:
        return f"{path} is {got}, not {want}, and resize is off; set resize: true or an image_size no larger than every image"
    return f"{path} is {got} after resizing its shorter side, not {want}; set center_crop: true or use square images"


# ---- cache --------------------------------------------------------------------------------
def cache_key(folders: dict[str, Path], files: dict[str, tuple[list[str], torch.Tensor]], options: dict) -> str:
    """A hash of every file's path, size and mtime, and of the options that change the pixels."""
    listing = {split: [file_stamp(p, len(str(folders[split])) + 1) for p in paths] for split, (paths, _) in files.items()}
    text = json.dumps({"format": CACHE_FORMAT, "options": options, "files": listing}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: str, prefix_len: int) -> tuple[str, int, int]:
    """(path relative to its split folder, size, mtime_ns)."""
    stat = os.stat(path)
    return path[prefix_len:], stat.st_size, stat.st_mtime_ns


def save_atomically(obj, path: Path) -> None:
    """Write to a temporary file, then rename: a reader never sees half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
