"""`timm-coded extract`: slice a checkpoint into one binary classifier per class, or into the
classifier of a class subset.

    timm-coded extract CHECKPOINT --model NAME [--classes all|k,...] [--data-dir DIR] --out DIR
    timm-coded extract CHECKPOINT --model NAME --subset vehicles --classes airplane,automobile,ship,truck --out DIR

Every class gets a folder OUT/<class>/ with timm's config.json (architecture `<model>_binary`,
model_args that rebuild it, the calibrated threshold among them), model.safetensors and
metrics.json (threshold, precision/recall/F1 with 9 negatives per positive on the calibration
data and, when the data has a val/ split, on it; parameter share; parent checkpoint sha256).
With --subset NAME, OUT/NAME/ holds one network for the --classes together: in every coded block
the union of their subNNs, their rows of the classifier; its threshold is on the largest logit
("one of the subset?", F1-maximising), metrics.json adds top-1 among the subset's classes.
With --repo/--tag the folders are Hub-ready instead (README.md model card, metrics inside
config.json), as `timm-coded publish` expects.

Thresholds maximise F1 on the --data-dir training split (the paper's rule), or on the CIFAR-10
sample shipped with the package when no --data-dir is given. Everything is written in a
temporary folder beside OUT and moved into place at the end: a failure leaves nothing behind.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import TimmCodedError
from .common import non_negative_int, positive_int, resolve_device

_HELP = 'slice a checkpoint into per-class binary classifiers with calibrated thresholds'


# --- helpers shared with `evaluate` ---------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('checkpoint', type=Path, metavar='CHECKPOINT',
                   help='weights: .safetensors, or a torch checkpoint (timm train.py format accepted)')
    p.add_argument('--model', required=True, metavar='NAME', help='timm model name, e.g. coded_resnext29_10x11d')
    p.add_argument('--use-ema', action='store_true', help="use the checkpoint's EMA weights (state_dict_ema)")
    p.add_argument('--batch-size', type=positive_int, default=128, help='evaluation batch size (default 128)')
    p.add_argument('--workers', type=non_negative_int, default=0, help='data loader worker processes (default 0)')
    p.add_argument('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    p.add_argument('--seed', type=int, default=0, help='seed of the negative sampling (default 0)')


def load_model(args) -> Any:
    from ..models.binary import load_checkpoint
    from ..models.coded_resnext import CodedResNeXt
    from ..errors import NotCodedError
    from ..models.layers import coded_blocks

    if args.batch_size < 1:
        raise TimmCodedError(f'--batch-size must be positive, got {args.batch_size}')
    device = resolve_device(args.device)  # before the model is built
    model = load_checkpoint(args.model, args.checkpoint, use_ema=args.use_ema)
    if not isinstance(model, CodedResNeXt) or not coded_blocks(model):
        raise NotCodedError(f'{args.model} has no coded block (an uncoded/control model): it has no class paths '
                            'to slice or decode')
    return model.to(device).eval()


def eval_loader(model, data, split: Optional[str], args, labelled: bool = True):
    """Eval-transform loader at the model's input size; labelled data must have the model's classes."""
    from ..data import make_loader

    return make_loader(data, model_or_data_config=model, train=False, batch_size=args.batch_size,
                       num_workers=args.workers, split=split,
                       expected_classes=model.class_names if labelled else None)


def register(subparsers) -> None:
    p = subparsers.add_parser('extract', help=_HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument('--classes', default='all',
                   help="'all' (default) or a comma-separated list of class indices or names")
    p.add_argument('--subset', metavar='NAME',
                   help='slice one classifier for the --classes together, named NAME (e.g. vehicles) '
                        'instead of one binary classifier per class')
    p.add_argument('--data-dir', type=Path, metavar='DIR',
                   help='image folder (train/ [val/] of class folders) for the thresholds; '
                        'default: the CIFAR-10 sample shipped with timm-coded')
    p.add_argument('--out', type=Path, required=True, metavar='DIR', help='output folder (one subfolder per class)')
    p.add_argument('--overwrite', action='store_true', help='replace class folders that already exist in --out')
    p.add_argument('--repo', metavar='ORG/NAME', help='write Hub-ready folders for this repo (needs --tag)')
    p.add_argument('--tag', help="pretrained tag of the parent, e.g. cifar10; a class's tag is TAG_<class>")
    p.add_argument('--dataset', help='training dataset name, for Hub model cards')
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline import calibration_data, extract_binary_classifiers

    if bool(args.repo) != bool(args.tag):
        raise TimmCodedError('--repo and --tag go together (Hub-ready folders need both)')
    if args.subset is not None:
        from ..models.subset import check_subset_name
        check_subset_name(args.subset)
        if args.classes == 'all':
            raise TimmCodedError('--subset needs --classes: the comma-separated classes of the subset')
    model = load_model(args)
    data = calibration_data(model, args.data_dir, batch_size=args.batch_size, workers=args.workers,
                            model_name=args.model)
    hub_card = {'repo_id': args.repo, 'tag': args.tag, 'dataset': args.dataset} if args.repo else None
    if args.subset is not None:
        return _run_subset(args, model, data, hub_card)
    folders = extract_binary_classifiers(
        model, args.classes, args.out, data.calibration, data.validation, checkpoint=args.checkpoint,
        calibration_source=data.source, notes=data.notes, seed=args.seed, overwrite=args.overwrite,
        hub_card=hub_card, progress=sys.stderr.isatty())  # bars on a terminal, not in logs
    for folder in folders:
        metrics_file = folder / 'metrics.json'
        if metrics_file.exists():
            m = json.loads(metrics_file.read_text(encoding='utf-8'))
            measured = m['validation'] or m['calibration']
            print(f"{folder}: threshold {m['threshold']:+.4f}, {100 * m['parameter_share']:.1f} % of the parameters, "
                  f"P/R/F1 {100 * measured['precision']:.1f}/{100 * measured['recall']:.1f}/{100 * measured['f1']:.1f} %")
        else:
            print(folder)
    for note in data.notes:
        print(f'note: {note}')
    return 0


def _run_subset(args, model, data, hub_card) -> int:
    from ..pipeline import extract_subset_classifiers

    classes = [c.strip() for c in args.classes.split(',') if c.strip()]
    [folder] = extract_subset_classifiers(
        model, {args.subset: classes}, args.out, data.calibration, data.validation, checkpoint=args.checkpoint,
        calibration_source=data.source, notes=data.notes, overwrite=args.overwrite, hub_card=hub_card,
        progress=sys.stderr.isatty())
    metrics_file = folder / 'metrics.json'
    if metrics_file.exists():
        m = json.loads(metrics_file.read_text(encoding='utf-8'))
        measured, top1 = (m['validation'], m['validation_top1']) if m['validation'] else \
            (m['calibration'], m['calibration_top1'])
        print(f"{folder}: {', '.join(m['class_names'])}; threshold {m['threshold']:+.4f}, "
              f"{100 * m['parameter_share']:.1f} % of the parameters, one-of-the-subset P/R/F1 "
              f"{100 * measured['precision']:.1f}/{100 * measured['recall']:.1f}/{100 * measured['f1']:.1f} %, "
              f"top-1 within the subset {100 * top1:.1f} %")
    else:
        print(folder)
    for note in data.notes:
        print(f'note: {note}')
    return 0
