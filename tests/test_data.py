"""Data loading: Fashion-MNIST IDX parsing and its failure modes, the digits fallback."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from dynet_deploy import data
from dynet_deploy.errors import DataError

HAVE_FASHION_MNIST = data.fashion_mnist_available(data.FASHION_MNIST_DEFAULT_ROOT)
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST,
    reason=f"Fashion-MNIST not installed in {data.FASHION_MNIST_DEFAULT_ROOT} (apt-get install dataset-fashion-mnist)",
)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte IDX file holding ``array`` (magic from its rank unless given)."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(root, split="train", n_images=5, n_labels=None, gz=True, images_blob=None, labels_blob=None, seed=0):
    rng = np.random.default_rng(seed)
    n_labels = n_images if n_labels is None else n_labels
    img_stem, lbl_stem = data.FASHION_MNIST_FILES[split]
    images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n_labels,), dtype=np.uint8)
    blobs = {
        img_stem: images_blob if images_blob is not None else idx_bytes(images),
        lbl_stem: labels_blob if labels_blob is not None else idx_bytes(labels),
    }
    for stem, blob in blobs.items():
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (root / stem).write_bytes(blob)
    return images, labels


@needs_fashion_mnist
def test_real_fashion_mnist_loads_with_expected_shapes_and_normalisation():
    x_test, y_test = data.load_dataset("fashion-mnist", "test")
    assert x_test.shape == (10000, 1, 28, 28) and x_test.dtype == torch.float32
    assert y_test.shape == (10000,) and y_test.dtype == torch.int64
    assert torch.equal(torch.bincount(y_test), torch.full((10,), 1000))  # the test set is balanced
    x_train, y_train = data.load_dataset("fashion-mnist", "train")
    assert x_train.shape == (60000, 1, 28, 28) and y_train.shape == (60000,)
    # The recorded constants are the training set's: normalised pixels have mean ~0, std ~1.
    assert abs(x_train.mean().item()) < 0.01 and abs(x_train.std().item() - 1) < 0.01
    assert data.resolve_dataset("auto") == "fashion-mnist"


@needs_fashion_mnist
def test_limit_keeps_first_samples():
    x_all, y_all = data.load_dataset("fashion-mnist", "test")
    x, y = data.load_dataset("fashion-mnist", "test", limit=7)
    assert torch.equal(x, x_all[:7]) and torch.equal(y, y_all[:7])


@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_idx_round_trip_gz_and_raw(tmp_path, gz):
    images, labels = write_split(tmp_path, "test", n_images=6, gz=gz)
    raw_images, raw_labels = data.load_fashion_mnist_raw("test", root=tmp_path)
    assert np.array_equal(raw_images, images) and np.array_equal(raw_labels, labels)
    x, y = data.load_dataset("fashion-mnist", "test", root=tmp_path)
    mean, std = data.NORMALISATION["fashion-mnist"]
    np.testing.assert_allclose(x[:, 0].numpy(), (images / 255.0 - mean) / std, rtol=0, atol=1e-5)
    assert y.tolist() == labels.tolist()


def test_root_from_environment_variable(tmp_path, monkeypatch):
    images, _ = write_split(tmp_path, "train", n_images=3)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    raw, _ = data.load_fashion_mnist_raw("train")
    assert np.array_equal(raw, images)


def test_wrong_magic_number(tmp_path):
    bad = idx_bytes(np.zeros((2, 28, 28), np.uint8), magic=2049)  # a labels magic on an images file
    write_split(tmp_path, "train", n_images=2, images_blob=bad)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: wrong magic number 2049.*expected 2051"):
        data.load_dataset("fashion-mnist", "train", root=tmp_path)


def test_wrong_magic_on_labels(tmp_path):
    bad = idx_bytes(np.zeros((2,), np.uint8), magic=0x12345678)
    write_split(tmp_path, "test", n_images=2, labels_blob=bad)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: wrong magic number"):
        data.load_fashion_mnist_raw("test", root=tmp_path)


@pytest.mark.parametrize(
    "keep", [3, 10, -1, -100], ids=["inside-magic", "inside-dims", "one-byte-short", "100-bytes-short"]
)
def test_truncated_file(tmp_path, keep):
    full = idx_bytes(np.ones((4, 28, 28), np.uint8))
    write_split(tmp_path, "train", n_images=4, images_blob=full[:keep])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: .*truncated"):
        data.load_fashion_mnist_raw("train", root=tmp_path)


def test_file_longer_than_header(tmp_path):
    write_split(tmp_path, "train", n_images=2, labels_blob=idx_bytes(np.zeros((2,), np.uint8)) + b"\0\0")
    with pytest.raises(DataError, match="longer than its header"):
        data.load_fashion_mnist_raw("train", root=tmp_path)


def test_image_label_count_mismatch(tmp_path):
    write_split(tmp_path, "test", n_images=5, n_labels=4)
    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        data.load_dataset("fashion-mnist", "test", root=tmp_path)


def test_label_out_of_range(tmp_path):
    write_split(tmp_path, "test", n_images=3, labels_blob=idx_bytes(np.array([1, 12, 3], np.uint8)))
    with pytest.raises(DataError, match="label 12 is out of range"):
        data.load_fashion_mnist_raw("test", root=tmp_path)


def test_wrong_image_size(tmp_path):
    write_split(tmp_path, "test", n_images=2, images_blob=idx_bytes(np.zeros((2, 32, 32), np.uint8)))
    with pytest.raises(DataError, match="32x32, expected 28x28"):
        data.load_fashion_mnist_raw("test", root=tmp_path)


def test_corrupt_gzip(tmp_path):
    write_split(tmp_path, "test", n_images=2)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        data.load_fashion_mnist_raw("test", root=tmp_path)


def test_missing_files_say_what_to_install(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_dataset("fashion-mnist", "test", root=tmp_path)
    msg = str(info.value)
    assert "missing t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz)" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "digits" in msg and data.FASHION_MNIST_ENV in msg


def test_only_labels_missing(tmp_path):
    write_split(tmp_path, "test", n_images=2)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\(\.gz\);"):
        data.load_dataset("fashion-mnist", "test", root=tmp_path)


def test_unknown_names():
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        data.load_dataset("mnist")
    with pytest.raises(DataError, match="unknown split 'val'"):
        data.load_dataset("digits", "val")
    with pytest.raises(DataError, match="unknown split 'val'"):
        data.load_fashion_mnist_raw("val", root="/nonexistent")


def test_auto_falls_back_to_digits_when_fashion_mnist_is_absent(tmp_path):
    assert data.resolve_dataset("auto", root=tmp_path) == "digits"
    x, y = data.load_dataset("auto", "test", root=tmp_path)
    assert x.shape[1:] == (1, 28, 28)


def test_digits_fallback_split_is_fixed_disjoint_and_normalised():
    x_train, y_train = data.load_dataset("digits", "train")
    x_test, y_test = data.load_dataset("digits", "test")
    assert x_train.shape == (1438, 1, 28, 28) and x_test.shape == (359, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert set(y_train.tolist()) == set(range(10)) == set(y_test.tolist())
    # Disjoint: no test image equals a training image (digits has no exact duplicates across our split).
    train_rows = {row.tobytes() for row in x_train.flatten(1).numpy()}
    assert not any(row.tobytes() in train_rows for row in x_test.flatten(1).numpy())
    # Deterministic: a second load gives the same split.
    x_again, y_again = data.load_dataset("digits", "test")
    assert torch.equal(x_again, x_test) and torch.equal(y_again, y_test)
    # The recorded constants are the training split's (rounded to 4 digits).
    assert abs(x_train.mean().item()) < 0.01 and abs(x_train.std().item() - 1) < 0.01


def test_digits_upsampling_is_bilinear_of_the_8x8_images():
    from sklearn.datasets import load_digits

    raw, _ = data._load_digits_raw("train")
    order = np.random.default_rng(data.DIGITS_SPLIT_SEED).permutation(1797)
    first_train = np.sort(order[int(round(1797 * data.DIGITS_TEST_FRACTION)) :])[0]
    small = torch.from_numpy(load_digits().images[first_train].astype(np.float32) / 16)[None, None]
    ref = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(torch.from_numpy(raw[0]), ref)
    assert raw.min() >= 0 and raw.max() <= 1


def test_dataset_info():
    info = data.dataset_info("fashion-mnist")
    assert info.classes[9] == "Ankle boot" and (info.mean, info.std) == data.NORMALISATION["fashion-mnist"]
    with pytest.raises(DataError):
        data.dataset_info("cifar10")
