"""`timm-coded evaluate`: accuracy, early decoding, binary classifiers, specialization, early exit.

    timm-coded evaluate CHECKPOINT --model NAME --data-dir DIR [--ood-dir DIR] [--out DIR]

Evaluates on the val/ split of --data-dir (or the folder itself when it has no split folders);
binary-classifier thresholds are fitted on its train/ split. --ood-dir is a folder of images of
other classes (e.g. CIFAR-100 for a CIFAR-10 model), all negatives for every binary classifier.
Prints a summary; with --out also writes report.json and the figures: precision_recall.png
(paper Fig. 2b/2c), early_decoding.png (Fig. 4), energies.png (mean subNN energy per class next
to the codewords), specialization.png (Fig. 2a) and early_exit.png (accuracy vs compute).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import TimmCodedError
from .common import resolve_device
from .extract import add_model_arguments, eval_loader, load_model

_HELP = 'evaluate a checkpoint: accuracy, early decoding, binary classifiers, specialization, early exit'
REPORT_NAME = 'report.json'


def register(subparsers) -> None:
    p = subparsers.add_parser('evaluate', help=_HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument('--data-dir', type=Path, required=True, metavar='DIR',
                   help='image folder: train/ and val/ of class folders, or one folder of class folders')
    p.add_argument('--ood-dir', type=Path, metavar='DIR',
                   help='out-of-distribution images (any layout), negatives for every binary classifier')
    p.add_argument('--out', type=Path, metavar='DIR', help='write report.json and the figures here')
    p.add_argument('--overwrite', action='store_true', help='replace report files already in --out')
    p.add_argument('--classes', default='all',
                   help="binary classifiers to evaluate: 'all' (default) or indices/names, comma-separated")
    p.add_argument('--no-binary', action='store_true', help='skip the binary classifiers')
    p.add_argument('--block', help='block of the specialization analysis (default: the paper\'s, e.g. layer2.2)')
    p.add_argument('--draws', type=int, default=5,
                   help='random draws per k in the specialization analysis (default 5; 0 skips it)')
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import image_folder_for_ood, load_samples
    from ..analysis.evaluation import evaluate
    from ..pipeline import AtomicOutput
    from ..analysis.plots import PLOT_NAMES, save_report_plots

    if args.draws < 0:
        raise TimmCodedError(f'--draws must be >= 0, got {args.draws}')
    args.device = resolve_device(args.device)  # before --out is staged and the model built
    output = None
    if args.out is not None:
        output = AtomicOutput(args.out, overwrite=args.overwrite)
        try:
            output.check_free([REPORT_NAME] + list(PLOT_NAMES))
        except BaseException:
            output.discard()
            raise
    try:
        model = load_model(args)
        val = load_samples(args.data_dir, 'val', model.class_names)
        try:
            train = load_samples(args.data_dir, 'train', model.class_names)
        except TimmCodedError:
            train = None  # a val-only folder: thresholds are fitted on the evaluation images (noted)
        calibration = eval_loader(model, train, None, args) if train is not None and train.root != val.root else None
        ood = None
        if args.ood_dir is not None:
            ood = eval_loader(model, image_folder_for_ood(args.ood_dir), None, args, labelled=False)
        report = evaluate(
            model, eval_loader(model, val, None, args), calibration, ood, classes=args.classes,
            model_name=args.model, specialization_block=args.block, specialization_draws=args.draws,
            binary=not args.no_binary, seed=args.seed, progress=sys.stderr.isatty())  # bars on a terminal, not in logs
        data = report.to_dict()
        print('\n'.join(report.summary_lines()))
        if output is not None:
            (output.tmp / REPORT_NAME).write_text(json.dumps(data, indent=1) + '\n', encoding='utf-8')
            written = save_report_plots(data, output.tmp)
            names = [REPORT_NAME] + [p.name for p in written]
            output.commit(names)
            print(f'wrote {", ".join(str(args.out / n) for n in names)}')
    except BaseException:
        if output is not None:
            output.discard()
        raise
    return 0
