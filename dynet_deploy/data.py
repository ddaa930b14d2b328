"""Image classification data: Fashion-MNIST from Debian's ``dataset-fashion-mnist``, sklearn's digits as fallback.

Both data sets come out the same way, so every stage (training, export, validation) sees one format:
``images`` float32 ``[N, 1, 28, 28]``, normalised with the data set's recorded ``(mean, std)``
(:data:`NORMALISATION`, also returned by :func:`dataset_info`), and ``labels`` int64 ``[N]``.

Fashion-MNIST is read from its IDX files (gzip-compressed or raw) by a small parser of our own that
checks everything a damaged download can break: magic number, dimensions, file length against the
header, label range, and that images and labels agree in count.

The digits fallback (sklearn's 8x8 digits, 1797 images, bundled with scikit-learn) is upsampled to
28x28 with bilinear interpolation (``align_corners=False``), so models built for 28x28 run unchanged;
its train/test split is a fixed seeded permutation (:data:`DIGITS_SPLIT_SEED`, 20 % test).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    import torch

FASHION_MNIST_ENV = "DYNET_DEPLOY_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGITS_CLASSES = tuple(str(i) for i in range(10))
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# (mean, std) of the training split's pixels scaled to [0, 1]; x_normalised = (x / 255 - mean) / std.
# Fashion-MNIST: the usual published constants (60k training images). Digits: measured on our training
# split after the bilinear upsampling to 28x28.
NORMALISATION = {
    "fashion-mnist": (0.2860, 0.3530),
    "digits": (0.3049, 0.3246),
}
DATASETS = ("fashion-mnist", "digits")
INSTALL_HINT = (
    "install Debian's package with 'apt-get install dataset-fashion-mnist' (files land in "
    f"{FASHION_MNIST_DEFAULT_ROOT}), or point {FASHION_MNIST_ENV} at a folder holding the four IDX files; "
    "otherwise use dataset 'digits' (sklearn's digits, the fallback)"
)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    mean: float
    std: float
    image_size: tuple[int, int] = (28, 28)
    in_chans: int = 1


def dataset_info(name: str) -> DatasetInfo:
    """Class names and the normalisation constants of data set ``name``."""
    if name not in NORMALISATION:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    mean, std = NORMALISATION[name]
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else DIGITS_CLASSES
    return DatasetInfo(name, classes, mean, std)


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder to read Fashion-MNIST from: ``root``, else $DYNET_DEPLOY_FASHION_MNIST, else Debian's."""
    if root is not None:
        return Path(root)
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env) if env else FASHION_MNIST_DEFAULT_ROOT


def _find_idx_file(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def fashion_mnist_available(root: str | os.PathLike | None = None) -> bool:
    r = fashion_mnist_root(root)
    return all(_find_idx_file(r, stem) is not None for pair in FASHION_MNIST_FILES.values() for stem in pair)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({exc}); the file is damaged, reinstall it ({INSTALL_HINT})") from None


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (raw or ``.gz``) into a uint8 array shaped by its header.

    IDX: a big-endian int32 magic (``0x0000 08 D``, 08 = unsigned byte, D = number of dimensions),
    then D big-endian int32 sizes, then the data.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header; the file is truncated")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong magic number {magic} (0x{magic:08x}), expected {expected_magic} (0x{expected_magic:08x}); "
            "this is not an IDX file of the expected kind"
        )
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{path}: {len(data)} bytes is shorter than the {header_len}-byte IDX header; the file is truncated"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected_len:
        what = "truncated" if len(data) < expected_len else "longer than its header says"
        raise DataError(
            f"{path}: file is {what}: header says dims {dims} ({expected_len} bytes in all), found {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def load_fashion_mnist_raw(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images ``[N, 28, 28]`` and labels ``[N]`` of one split, checked."""
    if split not in FASHION_MNIST_FILES:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    r = fashion_mnist_root(root)
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    paths = {stem: _find_idx_file(r, stem) for stem in (img_stem, lbl_stem)}
    missing = [f"{stem}(.gz)" for stem, p in paths.items() if p is None]
    if missing:
        raise DataError(f"Fashion-MNIST not found in {r}: missing {', '.join(missing)}; {INSTALL_HINT}")
    img_path, lbl_path = paths[img_stem], paths[lbl_stem]
    assert img_path is not None and lbl_path is not None  # checked just above
    images = read_idx(img_path, IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels; "
            "the two files do not belong together"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} is out of range 0..9")
    return images, labels


def _load_digits_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as float32 [N, 28, 28] in [0, 1] (bilinear upsampling) and int64 labels."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    idx = order[:n_test] if split == "test" else order[n_test:]
    idx = np.sort(idx)  # keep the data set's own order inside each split
    up = F.interpolate(torch.from_numpy(images[idx])[:, None], size=(28, 28), mode="bilinear", align_corners=False)
    return up[:, 0].numpy(), labels[idx]


def resolve_dataset(name: str = "auto", root: str | os.PathLike | None = None) -> str:
    """``"auto"`` becomes ``"fashion-mnist"`` when its files are present, else ``"digits"``."""
    if name == "auto":
        return "fashion-mnist" if fashion_mnist_available(root) else "digits"
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; use one of {', '.join(DATASETS)} or 'auto'")
    return name


def normalise(images: np.ndarray, name: str) -> np.ndarray:
    """Scale [0, 1] float images with data set ``name``'s constants; returns float32."""
    mean, std = NORMALISATION[name]
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)


def load_dataset(
    name: str = "fashion-mnist",
    split: str = "test",
    root: str | os.PathLike | None = None,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 ``[N, 1, 28, 28]`` (normalised) and labels int64 ``[N]`` of one split.

    ``name``: ``"fashion-mnist"``, ``"digits"`` or ``"auto"`` (Fashion-MNIST if present, else digits).
    ``root`` overrides where Fashion-MNIST is read from. ``limit`` keeps the first ``limit`` samples.
    """
    import torch

    resolved = resolve_dataset(name, root)
    if resolved == "fashion-mnist":
        raw, labels = load_fashion_mnist_raw(split, root)
        images = raw.astype(np.float32) / 255.0
    else:
        images, labels = _load_digits_raw(split)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(normalise(images, resolved)[:, None].copy())
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
