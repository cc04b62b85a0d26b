"""The fast data path: images decoded once into uint8 tensors, augmented a batch at a time in torch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from timm_coded.data import load_samples
from timm_coded.errors import DataError
from timm_coded.data.tensor import TensorBatchLoader, decode_images


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    for c, name in enumerate(('cat', 'dog')):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / name / f'{i}.png')
    (tmp_path / 'dog' / '9.png').parent.mkdir(exist_ok=True)
    Image.fromarray(torch.zeros(40, 20, 3, dtype=torch.uint8).numpy()).save(tmp_path / 'dog' / '9.png')
    return tmp_path


def test_decode_images_keeps_pixels_and_labels_and_resizes_odd_sizes(folder):
    samples = load_samples(folder, None)
    images, targets = decode_images(samples, 32)
    assert images.dtype == torch.uint8 and images.shape == (11, 3, 32, 32)
    assert targets.tolist() == [t for _, t in samples.samples]
    first = torch.from_numpy(np.array(Image.open(samples.samples[0][0]))).permute(2, 0, 1)
    assert torch.equal(images[0], first)  # lossless PNG: the exact pixels
    (folder / 'cat' / 'broken.png').write_bytes(b'not an image')
    with pytest.raises(DataError, match=r'cannot decode image .*broken\.png'):
        decode_images(load_samples(folder, None), 32)


def test_eval_batches_are_the_normalised_images_in_order():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    targets = torch.arange(10)
    loader = TensorBatchLoader(images, targets, 4, train=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and torch.equal(torch.cat([t for _, t in batches]), targets)
    expected = (images.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), expected, rtol=1e-5, atol=1e-5)


def test_train_batches_are_pad_and_crop_flips_of_their_images_and_reproducible():
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zero pixel: padding is visible
    targets = torch.arange(64)
    loader = TensorBatchLoader(images, targets, 16, train=True, mean=(0, 0, 0), std=(1 / 255,) * 3, seed=3)
    assert len(loader) == 4
    epoch = list(loader)
    assert sorted(torch.cat([t for _, t in epoch]).tolist()) == list(range(64))  # a permutation
    padded = F.pad(images, (4,) * 4).float()
    shifted = flipped = 0
    for x, t in epoch:
        for xi, ti in zip(x, t):
            # each output is some 8x8 window of the padded image, possibly mirrored
            windows = [padded[ti, :, dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)]
            match = [w for w in windows if torch.equal(xi, w) or torch.equal(xi, w.flip(2))]
            assert match, int(ti)
            shifted += int(not torch.equal(match[0], padded[ti, :, 4:12, 4:12]))
            flipped += int(not any(torch.equal(xi, w) for w in windows))
    assert 0 < shifted and 0 < flipped < 64
    loader.set_epoch(0)
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch, again))
    assert not torch.equal(torch.cat([t for _, t in list(loader)]), torch.cat([t for _, t in epoch]))  # next epoch
    # a warm restart numbers its epochs on: its first epoch draws what epoch 3 of the first run drew
    loader.set_epoch(3)
    fourth = list(loader)
    restart = TensorBatchLoader(images, targets, 16, train=True, mean=(0, 0, 0), std=(1 / 255,) * 3, seed=3,
                                first_epoch=3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fourth, restart))


def test_channels_last_and_too_small_a_training_set():
    images = torch.zeros(8, 3, 8, 8, dtype=torch.uint8)
    x, _ = next(iter(TensorBatchLoader(images, torch.zeros(8, dtype=torch.long), 4, train=False, mean=(0,) * 3,
                                       std=(1,) * 3, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DataError, match='8 training images make no full batch of 16'):
        TensorBatchLoader(images, torch.zeros(8, dtype=torch.long), 16, train=True, mean=(0,) * 3, std=(1,) * 3)
