"""Datasets from the offline data root, fixed subsets, vectorized augmentation, batching."""
from pathlib import Path

import pytest
import torch

from advplug.data import BUILTIN_DATASETS, BatchLoader, augment_batch, load_split, subset_indices
from advplug.errors import AdvplugError

MNIST = BUILTIN_DATASETS["mnist"]
CIFAR10 = BUILTIN_DATASETS["cifar10"]

# -- subset_indices -----------------------------------------------------------------


def test_subset_indices_deterministic_sorted_and_seeded():
    a = subset_indices(1000, 100, seed=0)
    assert torch.equal(a, subset_indices(1000, 100, seed=0))
    assert a.shape == (100,) and a.dtype == torch.int64
    assert torch.equal(a, a.sort().values)
    assert len(set(a.tolist())) == 100
    assert 0 <= a.min() and a.max() < 1000
    b = subset_indices(1000, 100, seed=1)
    assert not torch.equal(a, b)
    assert len(set(a.tolist()) & set(b.tolist())) < 50  # different seeds: mostly other samples


def test_subset_indices_offset_slices_are_disjoint():
    head = subset_indices(1000, 100, seed=5)
    middle = subset_indices(1000, 200, seed=5, offset=100)
    rest = subset_indices(1000, None, seed=5, offset=300)
    sets = [set(t.tolist()) for t in (head, middle, rest)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(sets[2]) == 700
    assert sets[0] | sets[1] | sets[2] == set(range(1000))
    # the slices are slices of one permutation: 300 from offset 0 = head + middle
    assert set(subset_indices(1000, 300, seed=5).tolist()) == sets[0] | sets[1]
    assert torch.equal(subset_indices(50, None, seed=0), torch.arange(50))


def test_subset_indices_too_many_is_an_error():
    with pytest.raises(AdvplugError, match="asked for 200 samples after 900"):
        subset_indices(1000, 200, seed=0, offset=900)


# -- load_split -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_train(data_root):
    return load_split(MNIST, True, data_root=data_root)


def test_load_mnist_train(mnist_train):
    x, y = mnist_train
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert x.is_contiguous()
    assert set(y.unique().tolist()) == set(range(10))
    assert x.max().item() == 255 and x.min().item() == 0
    # the official order: the first training label is a 5, the second a 0
    assert y[:2].tolist() == [5, 0]


def test_load_mnist_test(data_root):
    x, y = load_split(MNIST, False, data_root=data_root)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert y[:3].tolist() == [7, 2, 1]


def test_data_root_from_environment(data_root, monkeypatch):
    monkeypatch.setenv("ADVPLUG_DATA", str(data_root))
    _, y = load_split(MNIST, False)
    assert y.shape == (10000,)


def test_missing_dataset_names_the_path_and_the_fix(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(AdvplugError) as info:
        load_split(MNIST, True, data_root=empty)
    msg = str(info.value)
    assert str(empty / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "--data-root" in msg and "not found" in msg
    assert "mnist train" in msg
    assert list(empty.iterdir()) == []  # nothing downloaded or created


def _cifar_test_batch(data_root) -> Path:
    path = Path(data_root) / "cifar-10-batches-py" / "test_batch"
    if not path.is_file() or not (path.parent / "batches.meta").is_file():
        pytest.skip(f"{path} not present")
    return path


def test_cifar10_test_split_fails_md5_when_verifying(data_root):
    path = _cifar_test_batch(data_root)
    with pytest.raises(AdvplugError) as info:
        load_split(CIFAR10, False, data_root=data_root, verify_checksums=True)
    msg = str(info.value)
    assert "md5" in msg and "--no-verify-checksums" in msg
    assert str(path) in msg
    assert "batches.meta" not in msg  # the official meta file passes


def test_cifar10_test_split_loads_without_md5(data_root):
    _cifar_test_batch(data_root)
    x, y = load_split(CIFAR10, False, data_root=data_root, verify_checksums=False)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [1000] * 10
    assert y[:4].tolist() == [3, 8, 8, 0]  # cat, ship, ship, airplane: the official order
    # verifying again afterwards still refuses it (no state leaks from the unchecked load)
    with pytest.raises(AdvplugError, match="md5"):
        load_split(CIFAR10, False, data_root=data_root, verify_checksums=True)


def test_cifar10_train_split_loads_without_md5(data_root):
    """../shared/data holds the full re-packed training set: 50,000 images, 5,000 per class."""
    if not (Path(data_root) / "cifar-10-batches-py" / "data_batch_5").is_file():
        pytest.skip("CIFAR-10 training batches not present")
    x, y = load_split(CIFAR10, True, data_root=data_root, verify_checksums=False)
    assert x.shape == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [5000] * 10
    assert y[:5].tolist() == [6, 9, 9, 4, 1]  # frog, truck, truck, deer, automobile: the official order


def test_cifar10_train_split_missing_is_one_error(tmp_path):
    with pytest.raises(AdvplugError) as info:
        load_split(CIFAR10, True, data_root=tmp_path, verify_checksums=False)
    msg = str(info.value)
    assert "cifar10 train split not found" in msg and "data_batch_1" in msg and "--data-root" in msg
    assert str(tmp_path) in msg


# -- augment_batch --------------------------------------------------------------------

def _images(n=64, c=3, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_crop_keeps_shape_and_shifts_images():
    x = _images()
    out = augment_batch(x, crop=4, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = [(not torch.equal(out[i], x[i])) for i in range(len(x))]
    assert sum(changed) >= 0.8 * len(x)  # a no-shift draw has probability 1/81
    # every output is a window of the zero-padded input at some offset in [0, 8]^2
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(out[i], padded[i, :, dy:dy + 16, dx:dx + 16])]
        assert hits, f"sample {i} is not a crop of its padded input"
        offsets.add(hits[0])
    assert len(offsets) > 10  # offsets drawn per sample


def test_crop_is_reproducible_from_the_generator():
    x = _images()
    a = augment_batch(x, crop=4, flip=True, generator=torch.Generator().manual_seed(7))
    b = augment_batch(x, crop=4, flip=True, generator=torch.Generator().manual_seed(7))
    c = augment_batch(x, crop=4, flip=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_flips_exactly_the_masked_samples():
    x = _images(n=200)
    out = augment_batch(x, flip=True, generator=torch.Generator().manual_seed(3))
    mask = torch.rand(200, generator=torch.Generator().manual_seed(3)) < 0.5
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(2)) for i in range(200)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(200)])
    assert (flipped ^ kept).all()  # each sample is either flipped or untouched
    assert torch.equal(flipped, mask)
    assert 60 < int(flipped.sum()) < 140


def test_no_augmentation_is_identity():
    x = _images()
    assert torch.equal(augment_batch(x), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_stays_in_unit_range(channels):
    x = _images(c=channels)
    x[0] = 1.0
    x[1] = 0.0
    out = augment_batch(x, color_jitter=0.8, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert not torch.allclose(out, x)
    assert torch.isfinite(out).all()


# -- BatchLoader ----------------------------------------------------------------------

def _uint8_data(n=100):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    images[0] = 255
    images[1] = 0
    labels = torch.arange(n)  # label = index, to check which sample came out
    return images, labels


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batch_loader_converts_to_unit_floats():
    images, labels = _uint8_data()
    batches = _epoch(BatchLoader(images, labels, batch_size=32))
    assert len(batches) == 4 and [len(y) for _, y in batches] == [32, 32, 32, 4]
    for x, y in batches:
        assert x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert torch.allclose(x, images[y].float() / 255)
    assert torch.equal(torch.cat([y for _, y in batches]), labels)  # no shuffle: in order
    assert batches[0][0][0].max().item() == 1.0


def test_batch_loader_shuffle_covers_every_sample_once_per_epoch():
    images, labels = _uint8_data()
    loader = BatchLoader(images, labels, batch_size=32, shuffle=True, seed=0)
    first = torch.cat([y for _, y in _epoch(loader)])
    second = torch.cat([y for _, y in _epoch(loader)])
    for order in (first, second):
        assert torch.equal(order.sort().values, labels)
    assert not torch.equal(first, labels)  # shuffled
    assert not torch.equal(first, second)  # a new order each epoch


def test_batch_loader_drop_last():
    images, labels = _uint8_data()
    loader = BatchLoader(images, labels, batch_size=32, shuffle=True, drop_last=True)
    assert len(loader) == 3
    assert [len(y) for _, y in loader] == [32, 32, 32]


def test_batch_loader_is_reproducible_from_its_seed():
    images, labels = _uint8_data()

    def two_epochs(seed):
        loader = BatchLoader(images, labels, batch_size=16, shuffle=True, seed=seed,
                             augment={"crop": 1, "flip": True, "color_jitter": 0.0})
        return _epoch(loader) + _epoch(loader)

    a, b, c = two_epochs(11), two_epochs(11), two_epochs(12)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert any(not torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_batch_loader_resumes_from_generator_state():
    images, labels = _uint8_data()
    loader = BatchLoader(images, labels, batch_size=16, shuffle=True, seed=4)
    _epoch(loader)
    state = loader.generator.get_state()
    expected = _epoch(loader)
    other = BatchLoader(images, labels, batch_size=16, shuffle=True, seed=999)
    other.generator.set_state(state)
    got = _epoch(other)
    assert all(torch.equal(ye, yg) for (_, ye), (_, yg) in zip(expected, got))
