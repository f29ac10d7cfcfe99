"""Synthetic CIFAR-10 fixtures in the real on-disk formats, for tests, dry runs and demos.

The images are learnable: each class has its own colour and stripe frequency, plus noise, so a
tiny network reaches high accuracy in a few epochs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .preprocessing import CIFAR10_CLASSES


def synthetic_images(n: int, seed: int = 0, num_classes: int = 10):
    """``n`` images ``[n, 3, 32, 32]`` uint8 and labels ``[n]`` (balanced, shuffled)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    # Well-separated colours, plus horizontal stripes whose frequency depends on the class: both
    # survive the training augmentation (flips and 4-pixel shifts).
    palette = np.random.default_rng(1234).permutation(
        np.array([[r, g, b] for r in (50, 200) for g in (50, 200) for b in (50, 125, 200)]))
    yy = np.mgrid[0:32, 0:32][0]
    imgs = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i, c in enumerate(labels):
        stripes = np.sin(yy * (0.25 + 0.12 * c) + rng.uniform(0, 2 * np.pi)) * 35
        img = palette[c % len(palette)][:, None, None] + stripes[None] + rng.normal(0, 10, (3, 32, 32))
        imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
    return imgs, labels.astype(np.int64)


def write_batches_py(root: str | Path, n_train: int = 500, n_test: int = 100,
                     seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` exactly as torchvision downloads it (pickled dicts with
    ``data`` ``[n, 3072]`` uint8 rows and ``labels``; five training batches, one test batch,
    ``batches.meta``). Returns the ``cifar-10-batches-py`` folder."""
    root = Path(root) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    x, y = synthetic_images(n_train, seed)
    for i, chunk in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        d = {"batch_label": f"training batch {i} of 5", "labels": y[chunk].tolist(),
             "data": x[chunk].reshape(len(chunk), -1),
             "filenames": [f"img_{j}.png" for j in chunk]}
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump(d, f, protocol=2)
    xt, yt = synthetic_images(n_test, seed + 1)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": yt.tolist(),
                     "data": xt.reshape(n_test, -1),
                     "filenames": [f"t_{j}.png" for j in range(n_test)]}, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": n_train // 5,
                     "num_vis": 3072}, f, protocol=2)
    return root


def write_image_folder(root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0,
                       fmt: str = "png") -> Path:
    """Write ``root/train/<class>/*.{fmt}`` and ``root/test/<class>/*.{fmt}``. Returns ``root``."""
    from PIL import Image

    root = Path(root)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = synthetic_images(n, s)
        for i, (img, c) in enumerate(zip(x, y)):
            d = root / split / CIFAR10_CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(
                d / f"{i:05d}.{fmt}", **({"quality": 95} if fmt in ("jpg", "jpeg") else {}))
    return root
