"""MNISTDataModule on tiny IDX files written here, and once on the real MNIST if it is present.

The fake images carry their own index in pixel (0, 2), so a test can tell which written
image a loaded one is. Pixels (0, 0) and (0, 1) are 0 and 255 in every image, so the value
range is hit exactly at both ends.
"""

import struct
import urllib.error
import urllib.request
from pathlib import Path

import lightning as L
import pytest
import torch

from gen_lightning.data import MNISTDataModule
from gen_lightning.errors import ConfigError, DatasetNotFoundError

N_TRAIN, N_TEST = 64, 16
REAL_ROOT = Path(__file__).parents[2].parent / "shared" / "data"


def fake_images(n: int, seed: int) -> torch.Tensor:
    x = torch.randint(0, 256, (n, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    x[:, 0, 0], x[:, 0, 1] = 0, 255
    x[:, 0, 2] = torch.arange(n, dtype=torch.uint8)  # the image's index
    return x


def label_train(i: int) -> int:
    return i % 10


def label_test(i: int) -> int:
    return (i + 3) % 10


def write_idx(path: Path, array: torch.Tensor) -> None:
    """IDX: two zero bytes, type 0x08 (uint8), the number of dims, big-endian int32 dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.numpy().tobytes())


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", fake_images(N_TRAIN, seed=0))
    write_idx(raw / "train-labels-idx1-ubyte", torch.tensor([label_train(i) for i in range(N_TRAIN)], dtype=torch.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", fake_images(N_TEST, seed=1))
    write_idx(raw / "t10k-labels-idx1-ubyte", torch.tensor([label_test(i) for i in range(N_TEST)], dtype=torch.uint8))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    """Every urlopen fails as it does offline, so no test reaches (or waits for) the internet."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def make(root: Path, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(root=str(root), **{"val_size": 16, "batch_size": 16} | kwargs)
    dm.setup()
    return dm


def indices(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 2].tolist()


# ---- loading --------------------------------------------------------------------------------
def test_splits_shapes_dtypes_and_labels(mnist_root):
    dm = make(mnist_root)
    sizes = {name: len(dm.split(name)) for name in ("train", "val", "test")}
    assert sizes == {"train": N_TRAIN - 16, "val": 16, "test": N_TEST}
    assert dm.data_shape == (1, 28, 28) and dm.num_classes == 10 and dm.dataset_name == "MNIST"
    for name, label in (("train", label_train), ("val", label_train), ("test", label_test)):
        x, y = dm._splits[name]
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28) and y.dtype == torch.long
        assert y.tolist() == [label(i) for i in indices(x)]
    # train and val are a partition of the written training images
    assert sorted(indices(dm._splits["train"][0]) + indices(dm._splits["val"][0])) == list(range(N_TRAIN))
    assert torch.equal(dm._splits["test"][0][:, 0], fake_images(N_TEST, seed=1))  # test order is kept


def test_batches_are_uint8_until_converted_to_the_value_range(mnist_root):
    for value_range, (lo, hi) in (("0,1", (0.0, 1.0)), ("-1,1", (-1.0, 1.0))):
        dm = make(mnist_root, value_range=value_range)
        x8, y = next(iter(dm.train_dataloader()))
        assert x8.dtype == torch.uint8 and x8.shape == (16, 1, 28, 28) and y.shape == (16,)
        x, _ = dm.on_after_batch_transfer((x8, y), 0)
        assert x.dtype == torch.float32
        assert x.min().item() == lo and x.max().item() == hi  # pixels 0 and 255 land exactly on the ends
        assert dm.value_range == (lo, hi)
        assert torch.equal(dm.to_uint8(x), x8)  # to_uint8 inverts the scaling


def test_val_split_is_fixed_by_the_seed(mnist_root):
    val = [indices(make(mnist_root, seed=s)._splits["val"][0]) for s in (0, 0, 1)]
    assert val[0] == val[1]
    assert val[0] != val[2]


def test_fraction_val_size_and_train_order_per_epoch(mnist_root):
    dm = make(mnist_root, val_size=0.25)
    assert len(dm.split("val")) == 16
    loader = dm.train_dataloader()
    epoch0 = torch.cat([x for x, _ in loader])
    again = torch.cat([x for x, _ in loader])
    loader.sampler.set_epoch(1)
    epoch1 = torch.cat([x for x, _ in loader])
    assert torch.equal(epoch0, again)  # the order is drawn from seed + epoch, not the global RNG
    assert sorted(indices(epoch0)) == sorted(indices(epoch1)) and indices(epoch0) != indices(epoch1)


def test_setup_loads_once(mnist_root):
    dm = make(mnist_root)
    train = dm._splits["train"][0]
    dm.setup("test")
    assert dm._splits["train"][0] is train


# ---- binarization ---------------------------------------------------------------------------
def test_dynamic_binarization_draws_fresh_train_bits_and_fixed_val_test_bits(mnist_root):
    dm = make(mnist_root, binarize="dynamic")
    x8, _ = next(iter(dm.train_dataloader()))
    a, b = dm.convert(x8, train=True), dm.convert(x8, train=True)
    assert not torch.equal(a, b)  # a fresh Bernoulli draw each time a batch is seen
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    draws = torch.stack([dm.convert(x8, train=True) for _ in range(20)])
    # mean of 20 * 16 * 784 Bernoulli(p) bits vs the mean p: sd ~ 0.001
    assert draws.mean().item() == pytest.approx(x8.float().div(255).mean().item(), abs=0.01)
    # val/test: one seeded draw, the same in a fresh DataModule, and stable under convert
    other = make(mnist_root, binarize="dynamic")
    for name in ("val", "test"):
        x, y = next(iter(getattr(dm, f"{name}_dataloader")()))
        x2, _ = next(iter(getattr(other, f"{name}_dataloader")()))
        fixed = dm.convert(x, train=False)
        assert set(fixed.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(fixed, other.convert(x2, train=False))
        assert torch.equal(fixed, dm.convert(x, train=False))
    assert dm.describe()["binarize"] == "dynamic" and "fixed draw" in dm.describe()["binarize_convention"]


def test_threshold_binarization_is_pixel_over_half(mnist_root):
    dm = make(mnist_root, binarize="threshold")
    x8, _ = next(iter(dm.train_dataloader()))
    expected = (x8 > 127).float()  # 127/255 < 0.5 < 128/255
    assert torch.equal(dm.convert(x8, train=True), expected)
    assert torch.equal(dm.convert(x8, train=False), expected)


class RecordBatches(L.LightningModule):
    """Keeps the batches Lightning hands to training_step and validation_step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())
        return self.w.sum()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_hands_binarized_float_batches_to_the_steps(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), val_size=16, batch_size=16, binarize="dynamic")
    model = RecordBatches()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    train, val = model.seen["train"], model.seen["val"]
    assert len(train) == 2 * 3 and len(val) == 2  # 48 train / 16 per batch, 2 epochs
    assert all(x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0} for x in train + val)
    assert torch.equal(val[0], val[1])  # the fixed draw, epoch after epoch
    assert torch.equal(val[0], dm.convert(dm._splits["val"][0], train=False))


# ---- errors ---------------------------------------------------------------------------------
def test_missing_files_give_one_sentence_with_the_folder_and_both_fixes(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        make(tmp_path / "empty")
    message = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "download: true" in message and "root: ../shared/data" in message
    assert "\n" not in message


def test_download_without_network_gives_one_sentence(tmp_path, no_network):
    with pytest.raises(DatasetNotFoundError) as err:
        make(tmp_path / "offline", download=True)
    message = str(err.value)
    assert str(tmp_path / "offline" / "MNIST" / "raw") in message
    assert "download: true" in message and "network disabled by the test" in message
    assert "\n" not in message
    assert err.value.__suppress_context__  # raised `from None`: no torchvision traceback chain


def test_download_is_skipped_when_the_files_are_there(mnist_root, no_network):
    dm = MNISTDataModule(root=str(mnist_root), download=True, val_size=16)
    dm.prepare_data()
    dm.setup()
    assert len(dm.split("test")) == N_TEST


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_size": -1}, "val_size must be >= 0"),
        ({"val_size": 1.5}, r"val_size as a fraction must be in \[0, 1\)"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"predict_size": 0}, "predict_size must be >= 1"),
        ({"binarize": "dynamic", "value_range": "-1,1"}, "value_range: '0,1'"),
    ],
)
def test_bad_values_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MNISTDataModule(**kwargs)


def test_val_size_as_large_as_the_training_set_is_refused(mnist_root):
    with pytest.raises(ConfigError, match="leaves no training data"):
        make(mnist_root, val_size=N_TRAIN)


# ---- the real MNIST ---------------------------------------------------------------------------
@pytest.mark.skipif(not (REAL_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(), reason="real MNIST not present")
def test_real_mnist_sizes_and_pixel_mean():
    dm = MNISTDataModule(root=str(REAL_ROOT))
    dm.setup()
    assert [len(dm.split(n)) for n in ("train", "val", "test")] == [55_000, 5_000, 10_000]
    train = torch.cat([dm._splits["train"][0], dm._splits["val"][0]])
    assert train.float().div(255).mean().item() == pytest.approx(0.1307, abs=5e-4)  # the well-known MNIST mean
    assert torch.bincount(dm._splits["test"][1]).tolist()[:2] == [980, 1135]  # test digits 0 and 1
