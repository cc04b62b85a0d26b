"""`timm-coded demo`: the main job on a built-in default (see `timm_coded.demo`)."""
import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        'demo', help='train a small coded net on a shipped CIFAR-10 sample, decode, slice, report',
        description='Train a Coded ResNeXt (default: the small coded_resnext17_10x2d on the CIFAR-10 sample shipped '
                    'with the package, a few CPU minutes), then evaluate early decoding, extract, calibrate and '
                    'export all binary classifiers Hub-ready, and write a report with figures.')
    p.add_argument('--out', type=Path, default=Path('coded-demo'), help='output folder (default ./coded-demo)')
    p.add_argument('--data-dir', type=Path, help='an ImageFolder (with train/ and val/, or one folder whose last '
                                                  '--holdout images per class are held out); default: shipped sample')
    p.add_argument('--model', default='coded_resnext17_10x2d', help='a coded_* model (default coded_resnext17_10x2d)')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--holdout', type=int, default=500, help='held-out images per class when there is no val/')
    p.add_argument('--limit-per-class', type=int, default=0,
                   help='use only the first N images per class of each split (a quick smoke run)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--workers', type=int, default=0, help='data loader worker processes')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out folder')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo
    from ..errors import TimmCodedError

    if args.epochs < 1 or args.batch_size < 2:
        raise TimmCodedError('--epochs must be >= 1 and --batch-size >= 2')
    run_demo(DemoConfig(
        out=args.out, data_dir=args.data_dir, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, holdout_per_class=args.holdout, limit_per_class=args.limit_per_class, device=args.device, seed=args.seed, workers=args.workers,
        progress=not args.no_progress, overwrite=args.overwrite))
    return 0
