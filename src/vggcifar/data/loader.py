"""Loaders: a device-resident loader with batched augmentation (the default) and the classic
torchvision DataLoader pipeline (PIL transforms, worker processes) as the baseline.

The device loader keeps the whole split on the device as uint8. For a chunk of consecutive
batches at a time it gathers, crops and flips the images in one operation and normalises them in
another, in the training dtype and memory format. It also shards batches across distributed
ranks: every rank walks the same global permutation and takes its slice of each global batch,
so ``world_size`` ranks with batch ``B`` see exactly what one process with batch
``world_size * B`` sees.
"""

from __future__ import annotations

import torch

from ..preprocessing import normalize_


def random_crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Reference crop: zero-pad by ``pad`` pixels and crop back to the original size.

    Args:
        x: ``[B, C, H, W]`` images (any dtype).
        dy, dx: ``[B]`` int64 offsets in ``[0, 2 * pad]`` into the padded image.
    Returns:
        ``[B, C, H, W]`` crops.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def gather_augmented(both: torch.Tensor, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                     flips: torch.Tensor, size: int) -> torch.Tensor:
    """Gather, crop and flip a batch in one indexing operation.

    ``both`` holds the padded images and their mirror images, channels last. A strided view of
    its storage has one ``[size, size, C]`` window starting at every element, so picking image
    ``idx[i]``, crop ``(dy[i], dx[i])`` and mirror ``flips[i]`` is picking the window at one
    offset: a single ``index_select``, which copies each window row by row (twice as fast on the
    2-core CPU as advanced indexing, which copies byte by byte).

    Args:
        both: ``[2, N, H + 2p, W + 2p, C]`` uint8, contiguous; ``both[1]`` mirrors ``both[0]``.
        idx: ``[B]`` image indices; dy, dx: ``[B]`` offsets in ``[0, 2p]``; flips: ``[B]`` bool.
        size: crop size (the original ``H == W``).
    Returns:
        ``[B, C, size, size]`` uint8 in channels_last memory format, equal to
        ``random_flip(random_crop(images[idx], p, dy, dx), flips)``.
    """
    _, n, hp, wp, c = both.shape
    row, s_img = wp * c, hp * wp * c
    window_end = (size - 1) * row + (size - 1) * c + c  # elements spanned by one window
    windows = both.view(-1).as_strided((both.numel() - window_end + 1, size, size, c),
                                       (1, row, c, 1))
    # Cropping the mirror image at 2p - dx is the mirror of cropping the image at dx.
    dx = torch.where(flips, (wp - size) - dx, dx)
    start = (flips.long() * n + idx) * s_img + dy * row + dx * c
    return torch.index_select(windows, 0, start).permute(0, 3, 1, 2)


def cutout_mask(cy: torch.Tensor, cx: torch.Tensor, side: int, size: int) -> torch.Tensor:
    """``[B, 1, size, size]`` mask, 0 inside a ``side`` x ``side`` square centred at
    ``(cy[i], cx[i])`` (clipped at the border) and 1 elsewhere: multiplying a normalised batch by
    it sets the square to the mean colour (Cutout, DeVries & Taylor 2017)."""
    r = torch.arange(size, device=cy.device)
    lo_y, lo_x = (cy - side // 2).view(-1, 1), (cx - side // 2).view(-1, 1)
    in_y = (r >= lo_y) & (r < lo_y + side)  # [B, size]
    in_x = (r >= lo_x) & (r < lo_x + side)
    return ~(in_y[:, None, :, None] & in_x[:, None, None, :])


def random_flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where ``mask`` (``[B]`` bool) is true; ``[B, C, H, W]``."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


# Zero padding (pixels) before the random 32x32 crop: the study's augmentation, in both loaders.
PAD = 4


class DeviceLoader:
    """Iterate ``(inputs, labels)`` batches from tensors that live on ``device``.

    Args:
        images: ``[N, 3, 32, 32]`` uint8 (moved to ``device`` once).
        labels: ``[N]`` int64.
        batch_size: per-rank batch size; the global batch is ``batch_size * world_size``.
        train: shuffle and augment (random crop of the image padded by ``PAD``, random
            horizontal flip) and drop an incomplete final global batch (when there is more than
            one) when true; otherwise fixed order, every image.
        mean, std: normalisation.
        dtype, channels_last: form of the produced input batch.
        seed: shuffling and augmentation depend only on ``(seed, epoch)``, so a resumed run sees
            the same batches as an uninterrupted one.
        cutout: training only: a square of this many pixels per image set to the mean colour
            (:func:`cutout_mask`), after the crop and flip; 0 = off.
    Yields:
        ``x``: ``[b, 3, 32, 32]`` normalised, ``y``: ``[b]`` int64, both on ``device``.
    """

    # Work is done a chunk of consecutive batches at a time: per-batch work of a few hundred
    # images is dominated by per-operation overhead on CPUs. Chunks stay small (8 MiB of output)
    # because glibc hands big blocks out as fresh mmap()s, whose page faults cost more than the
    # normalisation itself; small blocks are recycled from the heap. Measured on the 2-core CPU
    # (epoch of 50,000 images): 96 MiB chunks 290k images/s, 24 MiB 650k, 8 MiB 1.0M, 2 MiB 1.0M.
    CHUNK_BYTES = 8 << 20

    def __init__(self, images, labels, batch_size, *, train, mean, std, device="cpu",
                 dtype=torch.float32, channels_last=False, seed=0, rank=0, world_size=1,
                 cutout=0):
        self.device = torch.device(device)
        self.cutout = int(cutout) if train else 0
        self.pad = PAD if train else 0
        self.channels, self.size = images.shape[1], images.shape[-1]
        if train:
            # Padded images and their mirror images, channels last: every augmented batch is then
            # one gather (see gather_augmented).
            padded = torch.nn.functional.pad(images.to(self.device), (self.pad,) * 4)
            self.images = torch.stack([padded, padded.flip(3)]).permute(0, 1, 3, 4, 2).contiguous()
        else:
            self.images = images.to(self.device)
        self.labels = labels.to(self.device, non_blocking=True)
        self.batch_size = int(batch_size)
        self.train, self.mean, self.std = train, mean, std
        self.dtype, self.channels_last = dtype, channels_last
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.global_batch = self.batch_size * self.world_size
        n = len(self.labels)
        self.drop_last = train and n > self.global_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def _rank_slice(self, i: int, n: int) -> range:
        """Positions in the global order of this rank's share of global batch ``i``."""
        start = i * self.global_batch
        size = min(self.global_batch, n - start)
        per = -(-size // self.world_size)  # the last, smaller batch is shared as evenly as possible
        lo = start + min(self.rank * per, size)
        hi = start + min((self.rank + 1) * per, size)
        return range(lo, hi)

    def _chunks(self, batches: list[range]):
        """Group consecutive batches into chunks of at most CHUNK_BYTES of produced input (at
        least one batch each)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_image = self.channels * self.size ** 2 * itemsize
        cap = max(1, self.CHUNK_BYTES // per_image)
        chunk: list[range] = []
        size = 0
        for r in batches:
            if chunk and size + len(r) > cap:
                yield chunk
                chunk, size = [], 0
            chunk.append(r)
            size += len(r)
        if chunk:
            yield chunk

    def __iter__(self):
        n = len(self.labels)
        # Modulo 2**64, torch's own reading of a seed: any seed the run accepts stays in range.
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**64)
        batches = [r for r in (self._rank_slice(i, n) for i in range(len(self))) if len(r)]
        if self.train:
            # The epoch's order and augmentation parameters are drawn for every image in global
            # order, so what a batch holds does not depend on how many ranks share the work.
            order = torch.randperm(n, generator=g).to(self.device)
            span = 2 * self.pad + 1
            dy = torch.randint(0, span, (n,), generator=g).to(self.device)
            dx = torch.randint(0, span, (n,), generator=g).to(self.device)
            flips = (torch.rand(n, generator=g) < 0.5).to(self.device)
            if self.cutout:  # drawn after the others: runs without Cutout keep their stream
                cy = torch.randint(0, self.size, (n,), generator=g).to(self.device)
                cx = torch.randint(0, self.size, (n,), generator=g).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # Augment and normalise thousands of images per operation (per-batch work of a few
        # hundred images is dominated by per-operation overhead on CPUs), then hand out views.
        for chunk in self._chunks(batches):
            pos = torch.cat([torch.arange(r.start, r.stop, device=self.device) for r in chunk])
            idx = order[pos]
            if self.train:
                x = gather_augmented(self.images, idx, dy[pos], dx[pos], flips[pos], self.size)
            else:
                x = torch.index_select(self.images, 0, idx)
            x = normalize_(x.to(self.dtype).contiguous(memory_format=fmt), self.mean, self.std)
            if self.cutout:
                x.mul_(cutout_mask(cy[pos], cx[pos], self.cutout, self.size).to(x.dtype))
            y = self.labels[idx]
            start = 0
            for r in chunk:
                yield x[start:start + len(r)], y[start:start + len(r)]
                start += len(r)


class _UInt8Dataset(torch.utils.data.Dataset):
    """Map-style dataset over ``[N, 3, 32, 32]`` uint8 tensors that yields PIL images."""

    def __init__(self, images, labels, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.numpy()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def classic_loader(images, labels, batch_size, *, train, mean, std, workers=2, seed=0):
    """The study's pipeline: torchvision PIL transforms (RandomCrop with padding, horizontal
    flip, ToTensor, Normalize) in DataLoader worker processes. Yields ``[b, 3, 32, 32]`` float32
    and ``[b]`` int64 CPU tensors."""
    from torchvision import transforms

    steps = ([transforms.RandomCrop(32, padding=PAD), transforms.RandomHorizontalFlip()]
             if train else [])
    tf = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    g = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        _UInt8Dataset(images, labels, tf), batch_size=batch_size, shuffle=train,
        drop_last=train and len(labels) > batch_size, num_workers=workers, generator=g,
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
