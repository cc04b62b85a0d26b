"""Image folders in, batches out: timm's data pipeline with checks that name the problem.

Folders follow timm's ImageFolder layout (`<root>/<class>/*.jpg`, optionally under `train/` and
`val/`). Everything here is built on `timm.data`: its image extensions and natural sort order
(so class indices match what `timm.data.create_dataset` / train.py assign), its `ImageDataset`,
its transforms (`create_transform`, RandAugment strings such as 'rand-m4-n3') and `Mixup`.

What this adds on top:
  * `DataError`s that say what is wrong with a folder (missing, empty, no class folders, class
    folders without images, a class set other than the model's, an image that cannot be decoded)
    instead of timm's skip-with-a-warning;
  * `holdout_split` for a training folder with no val/ (the last N files per class);
  * CIFAR-style training crops (pad by 1/8 and random-crop back, plus flip) for small inputs,
    as in the paper's recipe, where timm only has random-resized crops;
  * seeded loaders whose augmentation and shuffling are reproducible for any `num_workers`.
"""
import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler, default_collate
from torchvision import transforms

from timm.data import ImageDataset, Mixup, create_transform, get_img_extensions, resolve_data_config
from timm.data.readers.reader import Reader
from timm.data.transforms import str_to_interp_mode
from timm.data.transforms_factory import transforms_imagenet_train
from timm.utils.misc import natural_key

from ..constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ..errors import DataError

__all__ = [
    'CIFAR10_CLASSES', 'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD',
    'ImageSamples', 'ImageFolderDataset', 'sample_data_dir', 'resolve_image_folder', 'load_samples',
    'check_class_names', 'holdout_split', 'first_per_class', 'image_folder_for_ood', 'data_config_for',
    'make_transform', 'make_dataset', 'make_loader', 'check_class_count',
]

_logger = logging.getLogger(__name__)


# Split folder names timm's create_dataset also accepts (timm.data.dataset_factory._search_split).
_SPLIT_SYNONYMS = {
    'train': ('train', 'training'),
    'val': ('val', 'valid', 'validation', 'eval', 'evaluation'),
    'test': ('test',),
}
_ALL_SPLIT_NAMES = frozenset(n for names in _SPLIT_SYNONYMS.values() for n in names)

# Inputs at most this large get CIFAR-style pad-and-crop training crops, larger ones timm's
# random-resized crops (the paper: pad-and-crop for CIFAR, random-resized crops for ImageNet).
_PAD_CROP_MAX_SIZE = 64

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ImageSamples:
    """A list of (image path, class index) pairs, with the class names the indices refer to.

    `samples` uses the format of timm's folder reader; targets index `class_names`. Folders of
    unlabelled images (`image_folder_for_ood`) have no class names and every target is -1.
    """
    root: Path
    class_names: Tuple[str, ...]
    samples: Tuple[Tuple[str, int], ...]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> List[int]:
        return [t for _, t in self.samples]

    def class_counts(self) -> Dict[str, int]:
        counts = dict.fromkeys(self.class_names, 0)
        if not self.class_names:  # unlabelled (out-of-distribution) images
            return counts
        for _, target in self.samples:
            counts[self.class_names[target]] += 1
        return counts

    def with_class_order(self, expected_classes: Sequence[str]) -> 'ImageSamples':
        """The same images with targets re-indexed to `expected_classes` (e.g. a model's order)."""
        expected = tuple(expected_classes)
        check_class_names(self.class_names, expected, where=str(self.root))
        if expected == self.class_names:
            return self
        new_index = {name: expected.index(name) for name in self.class_names}
        remapped = tuple((path, new_index[self.class_names[t]]) for path, t in self.samples)
        return ImageSamples(self.root, expected, remapped)


def sample_data_dir() -> Path:
    """The CIFAR-10 sample shipped with the package (`train/` 300 and `val/` 60 images per class)."""
    path = Path(__file__).resolve().parent / 'cifar10_sample'
    if not (path / 'train').is_dir():
        raise DataError(f'the shipped CIFAR-10 sample is missing from {path}; '
                        'reinstall timm-coded (the wheel includes it as package data)')
    return path


def _is_hidden(name: str) -> bool:
    # .DS_Store, .ipynb_checkpoints and friends are never classes or images.
    return name.startswith('.')


def _is_image_file(entry: os.DirEntry) -> bool:
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in get_img_extensions(as_set=True)


def _visible_entries(folder: Path) -> List[os.DirEntry]:
    with os.scandir(folder) as it:
        return [e for e in it if not _is_hidden(e.name)]


def _images_under(folder: Path) -> List[str]:
    """All image files below `folder` (recursively, like timm's reader), in natural order."""
    found = []
    exts = get_img_extensions(as_set=True)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not _is_hidden(f) and os.path.splitext(f)[1].lower() in exts]
    return sorted(found, key=natural_key)


def _check_folder(folder: Path, what: str = 'image folder') -> List[os.DirEntry]:
    if not folder.exists():
        raise DataError(f'{what} {folder} does not exist')
    if not folder.is_dir():
        raise DataError(f'{what} {folder} is not a folder')
    entries = _visible_entries(folder)
    if not entries:
        raise DataError(f'{what} {folder} is empty')
    return entries


def _split_folder(root: Path, split: Optional[str], entries: List[os.DirEntry]) -> Path:
    """`root/<split>` (or a timm synonym of it), or `root` itself when it has no split folders."""
    if split is None:
        return root
    names = next((names for names in _SPLIT_SYNONYMS.values() if split in names), (split,))
    for name in names:
        if (root / name).is_dir():
            return root / name
    present = sorted(e.name for e in entries if e.is_dir() and e.name.lower() in _ALL_SPLIT_NAMES)
    if present:
        hint = (' (for a training folder without val/, hold out a split with '
                'timm_coded.data.holdout_split)') if names == _SPLIT_SYNONYMS['val'] else ''
        raise DataError(f'{root} has no {split!r} split folder, only {", ".join(present)}{hint}')
    return root  # a flat ImageFolder: the class folders are right here


def _scan_classes(folder: Path, entries: List[os.DirEntry]) -> Dict[str, List[str]]:
    """Map each class folder of an ImageFolder to its images; checks the layout."""
    class_dirs = sorted((e for e in entries if e.is_dir()), key=lambda e: natural_key(e.name))
    loose_images = [e.name for e in entries if _is_image_file(e)]
    if not class_dirs:
        if loose_images:
            raise DataError(
                f'{folder} holds {len(loose_images)} images but no class subfolders: an image folder needs one '
                'subfolder per class (<root>/<class>/*.jpg); for unlabelled images use image_folder_for_ood')
        raise DataError(f'{folder} has no class subfolders (expected <root>/<class>/*.jpg)')
    if loose_images:
        _logger.warning('%s: ignoring %d images outside the class folders', folder, len(loose_images))
    images = {e.name: _images_under(Path(e.path)) for e in class_dirs}
    empty = [name for name, files in images.items() if not files]
    if empty:
        exts = ', '.join(get_img_extensions())
        raise DataError(f'class folders without images in {folder}: {", ".join(empty)} '
                        f'(image extensions: {exts})')
    return images


def check_class_names(found: Sequence[str], expected: Sequence[str], where: str = 'the data') -> None:
    """Raise a `DataError` naming the classes missing from / unknown to `expected` (order ignored)."""
    missing = [c for c in expected if c not in set(found)]
    unexpected = [c for c in found if c not in set(expected)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f'missing {", ".join(missing)}')
        if unexpected:
            parts.append(f'not in the model: {", ".join(unexpected)}')
        raise DataError(f'the classes of {where} differ from the {len(expected)} the model expects: '
                        + '; '.join(parts))


def load_samples(root: PathLike, split: Optional[str] = 'train',
                 expected_classes: Optional[Sequence[str]] = None) -> ImageSamples:
    """Scan and check an ImageFolder (see `resolve_image_folder`) into an `ImageSamples`.

    Class indices follow timm's ImageFolder (natural sort of the folder names) unless
    `expected_classes` gives the order, e.g. a model's classes; the class *set* must then match.
    """
    root = Path(root)
    folder = _split_folder(root, split, _check_folder(root))
    entries = _check_folder(folder) if folder != root else _visible_entries(root)
    images = _scan_classes(folder, entries)
    found = tuple(images)
    names = tuple(expected_classes) if expected_classes is not None else found
    if expected_classes is not None:
        check_class_names(found, names, where=str(folder))
    index = {name: i for i, name in enumerate(names)}
    pairs = [(path, index[name]) for name, files in images.items() for path in files]
    pairs.sort(key=lambda p: natural_key(p[0]))  # timm's reader order: natural sort of the full path
    return ImageSamples(folder, names, tuple(pairs))


def resolve_image_folder(root: PathLike, split: Optional[str] = 'train',
                         expected_classes: Optional[Sequence[str]] = None) -> Path:
    """The checked ImageFolder for `split`: `root/<split>` if root has split folders, else root.

    Accepts a root holding `train/` and `val/` (or timm's synonyms: training, validation, ...)
    or a flat ImageFolder (`root/<class>/*.jpg`, used whatever the split). Raises `DataError`
    for a missing or empty folder, a missing split, no class subfolders, class folders without
    images, or (with `expected_classes`) a class set other than the expected one.
    """
    return load_samples(root, split, expected_classes).root


def holdout_split(root: PathLike, per_class: int = 500, which: str = 'last',
                  expected_classes: Optional[Sequence[str]] = None) -> Tuple[ImageSamples, ImageSamples]:
    """Split a training ImageFolder with no val/ into (train, val), deterministically.

    The `which` ('last' or 'first') `per_class` files of every class, in the folder's sorted
    order, are val; the rest train. For CIFAR-10 the default holds out the last 500 of 5,000.
    """
    if which not in ('first', 'last'):
        raise ValueError(f"which must be 'first' or 'last', not {which!r}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f'per_class must be a positive integer, not {per_class!r}')
    full = load_samples(root, 'train', expected_classes)
    by_class: List[List[Tuple[str, int]]] = [[] for _ in full.class_names]
    for path, target in full.samples:
        by_class[target].append((path, target))
    too_small = [f'{name} ({len(by_class[i])})' for i, name in enumerate(full.class_names)
                 if len(by_class[i]) <= per_class]
    if too_small:
        raise DataError(f'cannot hold out {per_class} images per class from {full.root}: '
                        f'too few images in {", ".join(too_small)}')
    train, val = [], []
    for items in by_class:
        cut = len(items) - per_class if which == 'last' else per_class
        head, tail = items[:cut], items[cut:]
        train += head if which == 'last' else tail
        val += tail if which == 'last' else head
    order = lambda p: natural_key(p[0])  # noqa: E731 - keep timm's reader order within each part
    return (ImageSamples(full.root, full.class_names, tuple(sorted(train, key=order))),
            ImageSamples(full.root, full.class_names, tuple(sorted(val, key=order))))


def first_per_class(samples: ImageSamples, limit: int) -> ImageSamples:
    """The first `limit` samples of each class, in the samples' order (a smaller, fixed subset)."""
    kept, seen = [], {}
    for path, target in samples.samples:
        seen[target] = seen.get(target, 0) + 1
        if seen[target] <= limit:
            kept.append((path, target))
    return ImageSamples(samples.root, samples.class_names, tuple(kept))


def image_folder_for_ood(root: PathLike) -> ImageSamples:
    """Every image below `root` (flat or nested, labels ignored: targets are -1), e.g. negatives
    for out-of-distribution evaluation of a binary classifier."""
    root = Path(root)
    _check_folder(root, 'out-of-distribution image folder')
    files = _images_under(root)
    if not files:
        raise DataError(f'no images in {root} or its subfolders (image extensions: '
                        f'{", ".join(get_img_extensions())})')
    return ImageSamples(root, (), tuple((f, -1) for f in files))


class _SampleListReader(Reader):
    """A timm reader over a fixed sample list (timm's folder reader rescans and re-indexes)."""

    def __init__(self, samples: ImageSamples):
        super().__init__()
        self.root = str(samples.root)
        self.samples = list(samples.samples)
        self.class_to_idx = {name: i for i, name in enumerate(samples.class_names)}

    def __getitem__(self, index: int) -> Tuple[str, int]:
        return self.samples[index]

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        filename = self.samples[index][0]
        if basename:
            return os.path.basename(filename)
        return filename if absolute else os.path.relpath(filename, self.root)


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed the RNGs that timm/torchvision transforms and timm's Mixup draw from (python, numpy,
    torch CPU), and restore them afterwards so the caller's random streams are untouched."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class ImageFolderDataset(ImageDataset):
    """timm's `ImageDataset` over an `ImageSamples` list, failing loudly on unreadable images.

    timm's dataset logs and skips an image it cannot decode; a training set with a broken file
    should be fixed instead, so the first read of such a file raises `DataError` naming it.
    An index may also be an `(index, seed)` pair (the seeded train loader): the transform then
    draws its randomness from that seed only, which makes augmentation reproducible whichever
    worker process loads the image.
    """

    def __init__(self, samples: ImageSamples, transform=None):
        super().__init__(str(samples.root), reader=_SampleListReader(samples), transform=transform)
        self.samples = samples
        self.class_names = samples.class_names

    def load_image(self, index: int) -> Tuple[Image.Image, int]:
        import warnings

        path, target = self.reader[index]
        try:
            with warnings.catch_warnings():
                # PIL warns above Image.MAX_IMAGE_PIXELS and raises above twice that: both are refused
                warnings.simplefilter('error', Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    image = img.convert(self.input_img_mode or 'RGB')  # decodes now, so corruption shows here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f'cannot read image {path}: {e}') from e  # PIL's decode errors, decompression bombs
        return image, target

    def __getitem__(self, key: Union[int, Tuple[int, int]]):
        if isinstance(key, tuple):
            index, seed = key
            image, target = self.load_image(index)
            with _seeded_rngs(seed):
                image = self.transform(image) if self.transform is not None else image
            return image, target, seed
        image, target = self.load_image(key)
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def data_config_for(model_or_data_config: Union[torch.nn.Module, Mapping[str, Any], str]) -> Dict[str, Any]:
    """timm's data config (input_size, interpolation, mean, std, crop_pct, crop_mode) for a model,
    a registered model name (its default pretrained cfg), or a (partial) data config dict."""
    if isinstance(model_or_data_config, torch.nn.Module):
        return resolve_data_config(model=model_or_data_config)
    if isinstance(model_or_data_config, str):
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(model_or_data_config)
        if cfg is None:
            raise ValueError(f'{model_or_data_config!r} is not a registered timm model with a pretrained cfg; '
                             'pass the model itself or a data config dict')
        return resolve_data_config(pretrained_cfg=cfg.to_dict())
    if isinstance(model_or_data_config, Mapping) and model_or_data_config:
        return resolve_data_config(pretrained_cfg=dict(model_or_data_config))
    raise TypeError('model_or_data_config must be a model, a timm model name or a non-empty data config '
                    f'dict, not {type(model_or_data_config).__name__}')


def make_transform(data_config: Mapping[str, Any], *, train: bool, augment: Optional[str] = None,
                   train_crop: Optional[str] = None, re_prob: float = 0.):
    """timm transforms for `data_config`; `train_crop` is 'pad' (CIFAR: pad by 1/8 then random
    crop, + flip), 'rrc' (timm's random-resized crop, + flip), or None: 'pad' up to 64 px."""
    input_size = tuple(data_config['input_size'])
    mean, std = tuple(data_config['mean']), tuple(data_config['std'])
    interpolation = data_config.get('interpolation', 'bilinear')
    if not train:
        return create_transform(input_size, is_training=False, interpolation=interpolation, mean=mean, std=std,
                                crop_pct=data_config.get('crop_pct'), crop_mode=data_config.get('crop_mode'))
    train_crop = train_crop or ('pad' if max(input_size[-2:]) <= _PAD_CROP_MAX_SIZE else 'rrc')
    if train_crop not in ('pad', 'rrc'):
        raise ValueError(f"train_crop must be 'pad', 'rrc' or None, not {train_crop!r}")
    if augment is not None and not augment.startswith(('rand', 'augmix', 'original', 'v0', '3a')):
        raise DataError(f'augment must be a timm auto-augment string such as "rand-m4-n3", not {augment!r}')
    try:
        return _train_transform(input_size, mean, std, interpolation, augment, train_crop, re_prob)
    except (AssertionError, KeyError, ValueError) as e:  # timm asserts on malformed augment strings
        if augment is None:
            raise
        raise DataError(f'bad augment string {augment!r}: {e}') from e


def _train_transform(input_size, mean, std, interpolation, augment, train_crop, re_prob):
    img_size = input_size[-2:]
    if train_crop == 'rrc':
        # color_jitter=None: the paper uses crop + flip + RandAugment only (timm's default adds jitter
        # when no auto-augment is given).
        return create_transform(input_size, is_training=True, auto_augment=augment, interpolation=interpolation,
                                mean=mean, std=std, color_jitter=None, re_prob=re_prob)
    # timm has no pad-and-crop mode: keep its auto-augment and normalize stages, replace the crop.
    _, augment_tf, final_tf = transforms_imagenet_train(
        img_size, auto_augment=augment, interpolation=interpolation, mean=mean, std=std, color_jitter=None,
        re_prob=re_prob, separate=True)
    crop_tf = transforms.Compose([
        # no-ops for images already at the input size (CIFAR); other images are resized then cropped
        transforms.Resize(min(img_size), interpolation=str_to_interp_mode(interpolation)),
        transforms.CenterCrop(img_size),
        transforms.RandomCrop(img_size, padding=min(img_size) // 8),  # 4 px for 32×32, zero fill
        transforms.RandomHorizontalFlip(),
    ])
    return transforms.Compose([crop_tf, augment_tf, final_tf])


def make_dataset(data: Union[PathLike, ImageSamples], *, transform=None, split: Optional[str] = 'train',
                 expected_classes: Optional[Sequence[str]] = None) -> ImageFolderDataset:
    """An `ImageFolderDataset` (a timm `ImageDataset`) over a folder or an `ImageSamples`."""
    if isinstance(data, ImageSamples):
        samples = data.with_class_order(expected_classes) if expected_classes is not None else data
    else:
        samples = load_samples(data, split, expected_classes)
    if not len(samples):
        raise DataError(f'no images to load from {samples.root}')
    return ImageFolderDataset(samples, transform=transform)


class _SeededShuffleSampler(Sampler):
    """Shuffles with `seed`, and hands every item its own augmentation seed.

    Yields `(index, item_seed)`; epoch e of a loader uses `SeedSequence([seed, e])`, so a
    re-created loader replays the same epochs and the worker count changes nothing.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        super().__init__()
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        item_seeds = rng.integers(0, 2 ** 63 - 1, size=self.num_samples, dtype=np.int64)
        return iter([(int(i), int(s)) for i, s in zip(order, item_seeds)])

    def __len__(self) -> int:
        return self.num_samples


class _TrainCollate:
    """Stack a batch and, if configured, apply timm's Mixup/CutMix (soft float targets)."""

    def __init__(self, mixup: Optional[Mixup] = None):
        self.mixup = mixup

    def __call__(self, batch):
        seeds = None
        if len(batch[0]) == 3:  # seeded items: (image, target, seed)
            seeds = [item[2] for item in batch]
            batch = [item[:2] for item in batch]
        images, targets = default_collate(batch)
        if self.mixup is not None:
            if seeds is not None:
                with _seeded_rngs(int(np.random.SeedSequence(seeds).generate_state(1)[0])):
                    images, targets = self.mixup(images, targets)
            else:
                images, targets = self.mixup(images, targets)
        return images, targets


def check_class_count(samples: 'ImageSamples', model: Any) -> None:
    """Labelled data must have as many classes as the model has outputs (a model without class
    names would otherwise pair output k with whatever folder sorts k-th)."""
    num_outputs = getattr(model, 'num_classes', 0) if isinstance(model, torch.nn.Module) else 0
    if num_outputs > 1 and samples.class_names and len(samples.class_names) != num_outputs:
        shown = ', '.join(samples.class_names[:5]) + (', ...' if len(samples.class_names) > 5 else '')
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
        raise DataError(f'{samples.root} has {len(samples.class_names)} classes ({shown}) but the model '
                        f'({name}) has {num_outputs} outputs: use data with its classes')


def make_loader(
        data: Union[PathLike, ImageSamples],
        *,
        model_or_data_config: Union[torch.nn.Module, Mapping[str, Any], str],
        train: bool,
        batch_size: int,
        num_workers: int = 0,
        augment: Optional[str] = None,
        mixup: float = 0.,
        cutmix: float = 0.,
        mix_prob: float = 1.,
        label_smoothing: float = 0.,
        re_prob: float = 0.,
        train_crop: Optional[str] = None,
        seed: Optional[int] = 42,
        split: Optional[str] = None,
        expected_classes: Optional[Sequence[str]] = None,
        drop_last: Optional[bool] = None,
) -> DataLoader:
    """A DataLoader of (images float32 (B, C, H, W), targets int64 (B,)) at the model's input size.

    data: an image folder (a root with train/ and val/, or a flat ImageFolder) or an
        `ImageSamples` (from `holdout_split`, `image_folder_for_ood`, `load_samples`).
    model_or_data_config: the model, its timm name, or a data config dict: input size,
        mean/std, interpolation and eval crop come from it (timm's `resolve_data_config`).
    train: shuffled, augmented, last partial batch dropped; else in order, eval transform.
    augment: a timm auto-augment string for training, e.g. 'rand-m4-n3' (the paper's CIFAR-10
        RandAugment N=3, M=4) or 'rand-m10-n2' (ImageNet).
    mixup, cutmix, mix_prob, label_smoothing: timm `Mixup` alphas etc.; when mixup or cutmix is on,
        targets are soft float32 (B, num_classes) instead of int64.
    train_crop: see `make_transform` ('pad' CIFAR-style by default for inputs <= 64 px).
    seed: shuffling and every augmentation (and mix) are drawn from this seed, reproducibly for
        any num_workers, without touching the global RNGs; None uses the global RNGs.
    split: folder split to read ('train' when training, else 'val'); ignored for flat folders.
    expected_classes: the model's classes, in its index order: targets follow this order and a
        folder with another class set is refused (DataError naming the classes).
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, not {batch_size}')
    split = split if split is not None else ('train' if train else 'val')
    data_config = data_config_for(model_or_data_config)
    transform = make_transform(data_config, train=train, augment=augment if train else None,
                               train_crop=train_crop, re_prob=re_prob if train else 0.)
    dataset = make_dataset(data, transform=transform, split=split, expected_classes=expected_classes)
    check_class_count(dataset.samples, model_or_data_config)

    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          drop_last=bool(drop_last))

    mixup_fn = None
    if mixup > 0 or cutmix > 0:
        if not dataset.class_names:
            raise DataError('mixup/cutmix need labelled data (class folders)')
        if batch_size % 2:
            raise ValueError(f'mixup/cutmix mix a batch with its reverse and need an even batch_size, not {batch_size}')
        mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mix_prob, label_smoothing=label_smoothing,
                         num_classes=len(dataset.class_names))
        drop_last = True  # an odd last batch cannot be mixed
    elif label_smoothing:
        raise ValueError('label_smoothing here only applies with mixup/cutmix; otherwise use a smoothing loss '
                         '(timm.loss.LabelSmoothingCrossEntropy)')
    drop_last = True if drop_last is None else drop_last
    if drop_last and len(dataset) < batch_size:
        raise DataError(f'{len(dataset)} training images in {dataset.samples.root} make no full batch of {batch_size}')
    sampler = _SeededShuffleSampler(len(dataset), seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last, collate_fn=_TrainCollate(mixup_fn))
