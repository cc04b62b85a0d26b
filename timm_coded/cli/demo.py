"""`timm-coded demo`: the main job on a built-in default (see `timm_coded.demo`)."""
import argparse
import sys
from pathlib import Path

from .common import int_at_least, non_negative_int, positive_float, positive_int, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser(
        'demo', help='train a small coded net on a shipped CIFAR-10 sample, decode, slice, report',
        description='Train a Coded ResNeXt (default: the small coded_resnext17_10x2d on the CIFAR-10 sample shipped '
                    'with the package, on the CPU; the report states the measured training time), then evaluate '
                    'early decoding, extract, calibrate and export all binary classifiers Hub-ready, and write a '
                    'report with figures.')
    p.add_argument('--out', type=Path, default=Path('coded-demo'), help='output folder (default ./coded-demo)')
    p.add_argument('--data-dir', type=Path, help='an ImageFolder (with train/ and val/, or one folder whose last '
                                                  '--holdout images per class are held out); default: shipped sample')
    p.add_argument('--model', default='coded_resnext17_10x2d', help='a coded_* model (default coded_resnext17_10x2d)')
    p.add_argument('--epochs', type=int_at_least(1), default=10)
    p.add_argument('--batch-size', type=int_at_least(2), default=64, help='training batch size (>= 2, default 64)')
    p.add_argument('--lr', type=positive_float, default=0.1, help='peak learning rate (default 0.1)')
    p.add_argument('--holdout', type=positive_int, default=500, help='held-out images per class when there is no val/')
    p.add_argument('--limit-per-class', type=non_negative_int, default=0,
                   help='use only the first N images per class of each split (a quick smoke run)')
    p.add_argument('--device', default='cpu', help='torch device (default cpu)')
    p.add_argument('--workers', type=non_negative_int, default=0, help='data loader worker processes')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)  # before anything is built or written
    from ..demo import DemoConfig, run_demo

    run_demo(DemoConfig(
        out=args.out, data_dir=args.data_dir, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, holdout_per_class=args.holdout, limit_per_class=args.limit_per_class, device=device, seed=args.seed, workers=args.workers,
        progress=not args.no_progress and sys.stderr.isatty()))  # bars on a terminal, not in logs
    return 0
