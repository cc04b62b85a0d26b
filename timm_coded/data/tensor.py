"""Small images decoded once into one uint8 tensor, augmented in torch a batch at a time.

On a 2-core CPU the per-image PIL pipeline (decode, pad, crop, flip, to-tensor, normalise) costs
more than the fast training step of a small CIFAR net: measured in benchmarks/RESULTS.md. For
inputs of CIFAR size the whole split fits in memory as uint8 (45,000 x 3 x 32 x 32 = 138 MB), so
decoding happens once and each batch is padded, cropped, flipped and normalised with a few
tensor ops. The augmentation is the paper's CIFAR pad-and-crop (zero padding) and flip; draws
come from a seeded generator, so an epoch is reproducible.
"""
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import ImageSamples
from ..errors import DataError

__all__ = ['decode_images', 'TensorBatchLoader']


def decode_images(samples: ImageSamples, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (N, 3, size, size), int64 (N,)) for every image of `samples` (resized if needed)."""
    images = np.empty((len(samples.samples), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(samples.samples):
        try:
            with Image.open(path) as im:
                im = im.convert('RGB')
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                images[i] = np.asarray(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f'cannot decode image {path}: {e}') from None
    targets = torch.tensor([t for _, t in samples.samples], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), targets


class TensorBatchLoader:
    """Iterates (float32 images (B, 3, H, W), int64 targets (B,)) batches from decoded images.

    train=True: a new seeded shuffle every epoch, pad-and-crop by `pad` pixels and a random
    horizontal flip, last partial batch dropped. train=False: in order, no augmentation.
    `channels_last` returns batches in that memory format (the CPU fast path's layout).
    Every draw and op runs on the images' device: uint8 images moved to a GPU are augmented
    there. Targets come on `targets_device` (default: the images' device).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, *, train: bool,
                 mean: Sequence[float], std: Sequence[float], pad: int = 4, flip: bool = True,
                 seed: int = 0, channels_last: bool = False,
                 targets_device: Optional[torch.device] = None, first_epoch: int = 0) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f'images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}')
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, not {batch_size}')
        if train and len(images) < batch_size:
            raise DataError(f'{len(images)} training images make no full batch of {batch_size}')
        device = images.device
        self.images, self.targets = images, targets.to(targets_device or device)
        self.batch_size, self.train = batch_size, train
        self.pad, self.flip, self.seed = pad, flip, seed
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1. / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)
        self.first_epoch = first_epoch
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        device = x.device
        if self.pad:
            padded = F.pad(x, (self.pad,) * 4)
            dy = torch.randint(0, 2 * self.pad + 1, (b,), generator=generator, device=device)
            dx = torch.randint(0, 2 * self.pad + 1, (b,), generator=generator, device=device)
            rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
            x = padded[torch.arange(b, device=device)[:, None, None, None],
                       torch.arange(c, device=device)[None, :, None, None], rows, cols]
        if self.flip:
            flipped = torch.rand(b, generator=generator, device=device) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(3), x)
        return x

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        device = self.images.device
        generator = torch.Generator(device=device).manual_seed(self.seed * 100_003 + self.first_epoch + self.epoch)
        n = len(self.images)
        order = (torch.randperm(n, generator=generator, device=device) if self.train
                 else torch.arange(n, device=device))
        if self.train:
            self.epoch += 1
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:
                x = self._augment(x, generator)
            x = ((x.float() - self.mean) * self.inv_std).contiguous(memory_format=memory_format)
            yield x, self.targets[idx.to(self.targets.device)]
