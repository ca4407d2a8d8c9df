"""The contract every DataModule keeps, and the in-memory fast path for image datasets.

Every DataModule yields batches `(x, y)` and exposes:
  - `data_shape`: `(C, H, W)` for images, `(2,)` for 2-D GMM;
  - `num_classes`: an int, or None when the data has no labels;
  - `value_range`: `(lo, hi)` of the x it yields, or None when unbounded (GMM);
  - `binarize`: "none", "dynamic" or "threshold", so likelihood models know if x is binary.

Image datasets are held as one uint8 tensor `(N, C, H, W)`. A batch is fetched with one
indexing operation (`__getitems__`), moved to the device as uint8, and only then converted
to float, binarized and scaled, in `on_after_batch_transfer`, on the accelerator when
there is one. Nothing is converted one PIL image at a time.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gen_lightning.errors import ConfigError

Binarize = Literal["none", "dynamic", "threshold"]
ValueRange = Literal["0,1", "-1,1"]


@runtime_checkable
class GenerativeData(Protocol):
    """What a model reads from its DataModule (`GenerativeModel.bind_data`), and all it may read.

    `log_prob(x) -> (B,)` nats is optional: the data's exact density, where it has one (GMMDataModule),
    for KL(data || model); test it with `has_density(dm)`, never with `hasattr`.
    """

    dataset_name: str
    data_shape: tuple[int, ...]           # (C, H, W) for images, (2,) for 2-D GMM
    num_classes: int | None               # None: no labels
    value_range: tuple[float, float] | None  # of the x it yields; None when unbounded
    binarize: Binarize                    # "none" for 8-bit values and continuous data

    def describe(self) -> dict: ...


def has_density(dm) -> bool:
    """Whether the DataModule knows its data's exact log-density (`dm.log_prob(x)`), as GMMDataModule does."""
    return callable(getattr(dm, "log_prob", None))


class TensorPairDataset(Dataset):
    """`(x, y)` pairs held as two tensors; `__getitems__` fetches a whole batch at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} items but y has {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        # index_select, not x[idx]: on CPU, advanced indexing of a uint8 (128, 1, 28, 28) batch
        # measured 5x (1 thread) to 13x (2 threads) slower
        return self.x.index_select(0, idx), self.y.index_select(0, idx)


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from `seed + epoch`, so data order never touches the global RNG.

    Lightning calls `set_epoch` before each epoch (as for DistributedSampler, which replaces
    this sampler under DDP), and the permutation is drawn lazily on the first batch, so a run
    resumed from a checkpoint sees the same order as an uninterrupted one. `resume_at`
    (epoch, samples already seen) makes the first pass over that epoch skip what a mid-epoch
    checkpoint had already trained on.
    """

    def __init__(self, n: int, seed: int = 0, resume_at: tuple[int, int] | None = None):
        self.n, self.seed, self.epoch = n, seed, 0
        self.resume_at = resume_at

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            order = order[self.resume_at[1]:]
        self.resume_at = None  # one epoch only
        yield from order


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                resume_at: tuple[int, int] | None = None) -> DataLoader:
    """DataLoader over a batched-fetch dataset; shuffling is epoch-seeded (see EpochShuffleSampler)."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(ds), seed, resume_at) if shuffle else None,
        num_workers=num_workers,
        collate_fn=collate_batch,
        persistent_workers=num_workers > 0,
        # the loader's worker base seed comes from its own generator, not the global RNG
        generator=torch.Generator().manual_seed(seed),
    )


class ResumableDataModule(L.LightningDataModule):
    """A DataModule whose checkpoints say how far into the epoch training was, for a mid-epoch resume.

    `gen fit` interrupted by SIGTERM or Ctrl+C saves a checkpoint after the batch in flight
    (callbacks.interruption). Lightning stores this DataModule's `state_dict` in it; on
    `--ckpt_path`, `train_dataloader` skips the batches of that epoch already trained on, so the
    resumed run sees exactly the batches that an uninterrupted run would have.
    """

    batch_size: int
    _resume_at: tuple[int, int] | None = None  # (epoch, batches of it already trained on)

    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"epoch": trainer.current_epoch, "batches_done": done, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state and state.get("batch_size") == self.batch_size:
            self._resume_at = (state["epoch"], state["batches_done"])

    def train_loader(self, ds: Dataset, seed: int, num_workers: int = 0) -> DataLoader:
        """The shuffled training loader, starting where a mid-epoch checkpoint left off."""
        resume = self._resume_at
        self._resume_at = None
        resume_samples = None if resume is None else (resume[0], resume[1] * self.batch_size)
        return make_loader(ds, self.batch_size, True, seed, num_workers, resume_samples)


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch is already stacked by `__getitems__`; a module-level function so workers can pickle it."""
    return batch


def check_split_size(size: int | float, name: str = "val_size") -> None:
    """A held-out size is a count (int >= 0) or a fraction (float in [0, 1))."""
    if isinstance(size, float) and not 0.0 <= size < 1.0:
        raise ConfigError(f"{name} as a fraction must be in [0, 1), got {size}; or give a count of items")
    if size < 0:
        raise ConfigError(f"{name} must be >= 0, got {size}")


def split_train_val(
    n: int, val_size: int | float, seed: int, name: str = "val_size"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation of `range(n)` into kept and held-out indices (`name` is the option, for errors)."""
    check_split_size(val_size, name)
    n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
    if n_val >= n:
        raise ConfigError(f"{name}={val_size} leaves no training data out of {n} items; use a smaller {name}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def fixed_bernoulli(x_uint8: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded Bernoulli draw of uint8 intensities, stored as uint8 in {0, 255}."""
    g = torch.Generator().manual_seed(seed)
    probs = x_uint8.float().div_(255.0)
    return torch.bernoulli(probs, generator=g).to(torch.uint8).mul_(255)


class ImageDataModule(ResumableDataModule):
    """Base for image DataModules: subclasses fill `self._splits` in `setup()`.

    `_splits` maps "train", "val" and "test" to `(x_uint8 (N, C, H, W), y_long (N,))`.
    Validation and test images are binarized once with a seeded draw (dynamic mode), so
    their likelihoods are comparable from run to run; training images get a fresh draw in
    every batch.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 5000,
        value_range: ValueRange = "0,1",
        binarize: Binarize = "none",
        horizontal_flip: bool = False,
        seed: int = 0,
        predict_size: int = 64,
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        if predict_size < 1:
            raise ConfigError(f"predict_size must be >= 1, got {predict_size}")
        check_split_size(val_size, "val_size")
        if binarize != "none" and value_range != "0,1":
            raise ConfigError(f"binarize={binarize!r} yields {{0, 1}} values; set value_range: '0,1'")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.value_range_name = value_range
        self.binarize = binarize
        self.horizontal_flip = horizontal_flip
        self.seed = seed
        self.predict_size = predict_size
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- the contract (subclasses add `data_shape` and `num_classes`) ------------------
    @property
    def value_range(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.value_range_name == "0,1" else (-1.0, 1.0)

    @property
    def dataset_name(self) -> str:
        return type(self).__name__.removesuffix("DataModule")

    # ---- subclasses call this from setup() ---------------------------------------------
    def _set_splits(self, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Carve the seeded validation split from `train` and fix the binarization of val/test."""
        x, y = train
        if len(x) == 0:
            raise ConfigError(f"{self.dataset_name} has an empty training set; check the data root")
        train_idx, val_idx = split_train_val(len(x), self.val_size, self.seed)
        splits = {"train": (x[train_idx], y[train_idx]), "val": (x[val_idx], y[val_idx]), "test": test}
        if self.binarize == "dynamic":
            # one fixed draw per held-out split, different seeds so the two are independent
            for offset, name in enumerate(("val", "test"), start=1):
                xs, ys = splits[name]
                splits[name] = (fixed_bernoulli(xs, self.seed + offset), ys)
        self._splits = splits

    def split(self, name: str) -> TensorPairDataset:
        if name not in self._splits:
            raise RuntimeError(f"split {name!r} is not set up; call setup() first")
        return TensorPairDataset(*self._splits[name])

    # ---- loaders --------------------------------------------------------------------------
    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return make_loader(self.split(name), self.batch_size, shuffle, self.seed, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.split("train"), self.seed, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.predict_size, self.batch_size)

    # ---- per-batch conversion, on the device ------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        if x.dtype != torch.uint8:  # predict batches carry sample indices, not images
            return batch
        training = self.trainer is not None and self.trainer.training
        return self.convert(x, train=training), y

    def convert(self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 `(B, C, H, W)` -> float in `value_range`, binarized and flipped as configured."""
        x = x.float().div_(255.0)
        if self.binarize == "dynamic" and train:
            x = torch.bernoulli(x, generator=generator)
        elif self.binarize == "threshold":
            x = (x > 0.5).float()
        if self.horizontal_flip and train:
            flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.value_range_name == "-1,1":
            x = x.mul_(2.0).sub_(1.0)
        return x

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the scaling in `convert`: float in `value_range` -> uint8 in [0, 255]."""
        lo, hi = self.value_range
        return ((x.float() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)

    def describe(self) -> dict:
        """What a result depends on; written next to every metric."""
        return {
            "dataset": self.dataset_name,
            "data_shape": list(self.data_shape),
            "value_range": list(self.value_range),
            "binarize": self.binarize,
            "binarize_convention": {
                "none": "8-bit intensities",
                "dynamic": "train: fresh Bernoulli draw per batch; val/test: one fixed draw "
                f"(seeds {self.seed + 1}/{self.seed + 2})",
                "threshold": "pixel > 0.5",
            }[self.binarize],
        }


def one_line(err: Exception) -> str:
    """The most specific line of a (possibly multi-line, wrapped) error, to quote in a one-line message.

    torchvision's download errors list every mirror tried; the last line holds the cause
    (`<urlopen error [Errno -2] Name or service not known>`, `Permission denied: ...`).
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else 'no message'}"


def predict_loader(num_samples: int, batch_size: int) -> DataLoader:
    """Batches of sample indices `(idx, idx)`; `predict_step` draws one sample per index."""
    if num_samples < 1:
        raise ConfigError(f"the number of samples to predict must be >= 1, got {num_samples}")
    idx = torch.arange(num_samples)
    return make_loader(TensorPairDataset(idx, idx), batch_size, shuffle=False)
