import pickle

import pytest
import torch

from vggcifar.data import (DeviceLoader, classic_loader, detect_format, load_cifar10,
                           random_crop, random_flip, stratified_split)
from vggcifar.errors import VggCifarError
from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD
from vggcifar.testing import synthetic_images, write_batches_py, write_image_folder


def test_reads_batches_py_exactly(cifar_batches):
    d = load_cifar10(cifar_batches, download=False)
    assert d.kind == "batches-py"
    assert d.train_x.shape == (500, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (200, 3, 32, 32)
    # Same pixels as the pickled rows: [3072] = R plane, G plane, B plane.
    with open(cifar_batches / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        b = pickle.load(f, encoding="latin1")
    assert torch.equal(d.train_x[0].reshape(-1), torch.from_numpy(b["data"][0]))
    assert d.train_y[0] == b["labels"][0]
    assert d.classes[0] == "airplane" and len(d.classes) == 10


def test_reads_image_folder_png_and_jpeg(tmp_path):
    png = write_image_folder(tmp_path / "png", n_train=40, n_test=20)
    d = load_cifar10(png, download=False)
    assert d.kind == "image-folder"
    assert d.train_x.shape == (40, 3, 32, 32) and d.test_x.shape == (20, 3, 32, 32)
    x, y = synthetic_images(40, 0)
    # PNG is lossless: pixels survive exactly, labels follow sorted class folders.
    order = sorted(range(40), key=lambda i: (y[i], i))
    assert torch.equal(d.train_x, torch.from_numpy(x[order]))
    assert torch.equal(d.train_y, torch.from_numpy(y[order]))
    jpg = write_image_folder(tmp_path / "jpg", n_train=40, n_test=20, fmt="jpg")
    dj = load_cifar10(jpg, download=False)
    assert (dj.train_x.float() - d.train_x.float()).abs().mean() < 8  # lossy, but close


def test_detects_format_and_rejects_other_folders(tmp_path, cifar_batches):
    assert detect_format(cifar_batches)[0] == "batches-py"
    assert detect_format(cifar_batches / "cifar-10-batches-py")[0] == "batches-py"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    with pytest.raises(VggCifarError, match="not CIFAR-10 data"):
        load_cifar10(tmp_path / "junk", download=False)


def test_missing_data_without_network_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(VggCifarError, match="downloading it failed.*--data"):
        load_cifar10(tmp_path / "nothing-here")


def test_cache_is_used_then_rebuilt_when_stale_or_corrupt(tmp_path, capsys):
    root = write_batches_py(tmp_path / "d", n_train=50, n_test=10).parent
    cache = tmp_path / "cache"
    a = load_cifar10(root, cache_dir=cache)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    b = load_cifar10(root, cache_dir=cache)
    assert torch.equal(a.train_x, b.train_x)
    # Corrupt: flip bytes in the middle of the cache file.
    raw = bytearray(files[0].read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    files[0].write_bytes(bytes(raw))
    c = load_cifar10(root, cache_dir=cache)
    assert "corrupt cache" in capsys.readouterr().err  # a log line: stderr
    assert torch.equal(a.train_x, c.train_x)
    # Stale: source changed (new images) -> new fingerprint, new pixels.
    write_batches_py(tmp_path / "d", n_train=50, n_test=10, seed=7)
    d = load_cifar10(root, cache_dir=cache)
    assert not torch.equal(a.train_x, d.train_x)


def test_truncated_cache_file_is_rebuilt(tmp_path, capsys):
    root = write_batches_py(tmp_path / "d", n_train=50, n_test=10).parent
    cache = tmp_path / "cache"
    a = load_cifar10(root, cache_dir=cache)
    f = next(cache.glob("*.pt"))
    f.write_bytes(f.read_bytes()[:100])
    b = load_cifar10(root, cache_dir=cache)
    assert "corrupt cache" in capsys.readouterr().err  # a log line: stderr
    assert torch.equal(a.test_x, b.test_x)


@pytest.mark.parametrize("split", [0.01, 0.1, 0.5, 0.8, 1.0])
def test_split_sizes_and_stratification(split):
    labels = torch.arange(50_000) % 10
    tr, va = stratified_split(labels, split, seed=0, val_size=5000)
    assert len(tr) == round(50_000 * split)
    assert torch.all(torch.bincount(labels[tr], minlength=10) == round(5000 * split))
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    expected_val = 0 if split == 1 else min(5000, 50_000 - len(tr))
    assert len(va) == expected_val
    if expected_val:
        counts = torch.bincount(labels[va], minlength=10)
        assert counts.max() - counts.min() <= 1


def test_split_is_deterministic_per_seed():
    labels = torch.arange(1000) % 10
    a, _ = stratified_split(labels, 0.3, seed=1)
    b, _ = stratified_split(labels, 0.3, seed=1)
    c, _ = stratified_split(labels, 0.3, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_split_out_of_range(bad):
    with pytest.raises(VggCifarError, match=r"split must be in \(0, 1\]"):
        stratified_split(torch.arange(100) % 10, bad)


def test_flip_twice_is_identity_and_flip_mirrors():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([True, False, True, True, False, False])
    assert torch.equal(random_flip(random_flip(x, mask), mask), x)
    y = random_flip(x, mask)
    assert torch.equal(y[0], x[0].flip(2)) and torch.equal(y[1], x[1])


def test_crops_stay_inside_the_padded_image():
    x = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32) + 1
    # Offset 0 shows 4 rows/cols of padding (zeros) top-left; offset 8 shows them bottom-right;
    # offset 4 is the original image.
    out = random_crop(x, 4, torch.tensor([0, 4]), torch.tensor([0, 4]))
    assert torch.all(out[0, :, :4, :] == 0) and torch.all(out[0, :, 4:, 4:] == x[0, :, :28, :28])
    assert torch.equal(out[1], x[1])
    out = random_crop(x, 4, torch.tensor([8, 8]), torch.tensor([8, 8]))
    assert torch.all(out[:, :, 28:, :] == 0) and torch.equal(out[0, :, :28, :28], x[0, :, 4:, 4:])


def test_device_loader_augments_normalises_and_covers_every_image():
    n = 100
    imgs = torch.full((n, 3, 32, 32), 128, dtype=torch.uint8)
    labels = torch.arange(n)
    dl = DeviceLoader(imgs, labels, 32, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=0)
    seen = torch.cat([y for _, y in dl])
    assert len(seen) == 96 and len(set(seen.tolist())) == 96  # drop_last, no repeats
    x, _ = next(iter(dl))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
    inner = x[:, :, 4:28, 4:28]  # never padding: constant grey, normalised per channel
    for c in range(3):
        expected = (128 / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        assert torch.allclose(inner[:, c], torch.full_like(inner[:, c], expected), atol=1e-5)
    pad_value = torch.tensor([(0 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD)])
    border = x[:, :, 0, :]  # some images are shifted so padding shows up in row 0
    assert torch.isclose(border, pad_value.view(1, 3, 1)).any()


def test_device_loader_normalisation_stats_on_real_like_data():
    x, y = synthetic_images(400, 3)
    imgs = torch.from_numpy(x)
    mean = imgs.float().div(255).mean((0, 2, 3)).tolist()
    std = imgs.float().div(255).std((0, 2, 3)).tolist()
    dl = DeviceLoader(imgs, torch.from_numpy(y), 400, train=False, mean=mean, std=std)
    xb, _ = next(iter(dl))
    assert torch.allclose(xb.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(xb.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_device_loader_epochs_are_deterministic_and_differ():
    imgs = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(64)
    mk = lambda: DeviceLoader(imgs, labels, 16, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                              seed=3)
    a, b = mk(), mk()
    a.set_epoch(2), b.set_epoch(2)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(3)
    assert not torch.equal(next(iter(b))[1], ya)


def test_device_loader_shards_global_batches_across_ranks():
    imgs = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(80)
    kw = dict(train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=5)
    single = list(DeviceLoader(imgs, labels, 16, **kw))
    ranks = [list(DeviceLoader(imgs, labels, 8, rank=r, world_size=2, **kw)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
    for i, (xs, ys) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), ys)
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), xs)
    r0 = set(torch.cat([y for _, y in ranks[0]]).tolist())
    r1 = set(torch.cat([y for _, y in ranks[1]]).tolist())
    assert not r0 & r1 and len(r0 | r1) == 80


def test_classic_loader_same_augmentation_family():
    imgs = torch.full((20, 3, 32, 32), 128, dtype=torch.uint8)
    dl = classic_loader(imgs, torch.zeros(20, dtype=torch.long), 10, train=True,
                        mean=CIFAR10_MEAN, std=CIFAR10_STD, workers=0)
    x, y = next(iter(dl))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    expected = (128 / 255 - CIFAR10_MEAN[0]) / CIFAR10_STD[0]
    assert torch.allclose(x[:, 0, 4:28, 4:28], torch.full((10, 24, 24), expected), atol=1e-5)


def test_fused_gather_equals_reference_crop_then_flip():
    from vggcifar.data.loader import gather_augmented

    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    both = torch.stack([padded, padded.flip(3)]).permute(0, 1, 3, 4, 2).contiguous()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(12, generator=g)[:10]
    dy, dx = torch.randint(0, 9, (10,), generator=g), torch.randint(0, 9, (10,), generator=g)
    flips = torch.rand(10, generator=g) < 0.5
    # the windows at the very end of the storage (last image, largest offsets, mirrored) too
    idx, dy, dx = torch.cat([idx, torch.tensor([11, 11])]), torch.cat([dy, torch.tensor([8, 8])]), \
        torch.cat([dx, torch.tensor([8, 0])])
    flips = torch.cat([flips, torch.tensor([True, False])])
    out = gather_augmented(both, idx, dy, dx, flips, 32)
    ref = random_flip(random_crop(x[idx], 4, dy, dx), flips)
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_normalize_is_the_same_in_both_memory_formats():
    from vggcifar.preprocessing import normalize_

    x = torch.randint(0, 256, (5, 3, 32, 32)).float()
    ref = (x / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CIFAR10_STD).view(1, 3, 1, 1)
    plain = normalize_(x.clone(), CIFAR10_MEAN, CIFAR10_STD)
    cl = normalize_(x.clone().contiguous(memory_format=torch.channels_last), CIFAR10_MEAN,
                    CIFAR10_STD)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(plain, ref, atol=1e-5) and torch.allclose(cl, ref, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_device_loader_batches_do_not_depend_on_chunk_size(channels_last):
    imgs = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(100)
    kw = dict(train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=1, channels_last=channels_last)
    big = DeviceLoader(imgs, labels, 8, **kw)
    small = DeviceLoader(imgs, labels, 8, **kw)
    small.CHUNK_BYTES = 1  # one batch per chunk
    a, b = list(big), list(small)
    assert len(a) == len(b) == 12
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
        assert xa.is_contiguous(memory_format=torch.channels_last if channels_last
                                else torch.contiguous_format)
