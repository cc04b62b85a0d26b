"""`timm-coded extract`: slice a checkpoint into one binary classifier per class.

    timm-coded extract CHECKPOINT --model NAME [--classes all|k,...] [--data-dir DIR] --out DIR

Every class gets a folder OUT/<class>/ with timm's config.json (architecture `<model>_binary`,
model_args that rebuild it, the calibrated threshold among them), model.safetensors and
metrics.json (threshold, precision/recall/F1 with 9 negatives per positive on the calibration
data and, when the data has a val/ split, on it; parameter share; parent checkpoint sha256).
With --repo/--tag the folders are Hub-ready instead (README.md model card, metrics inside
config.json), as `timm-coded publish` expects.

Thresholds maximise F1 on the --data-dir training split (the paper's rule), or on the CIFAR-10
sample shipped with the package when no --data-dir is given. Everything is written in a
temporary folder beside OUT and moved into place at the end: a failure leaves nothing behind.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import DataError, TimmCodedError

# timm's names of a validation split folder (timm.data.dataset_factory)
_VAL_FOLDERS = ('val', 'valid', 'validation', 'eval', 'evaluation')

_HELP = 'slice a checkpoint into per-class binary classifiers with calibrated thresholds'


# --- helpers shared with `evaluate` ---------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('checkpoint', type=Path, metavar='CHECKPOINT',
                   help='weights: .safetensors, or a torch checkpoint (timm train.py format accepted)')
    p.add_argument('--model', required=True, metavar='NAME', help='timm model name, e.g. coded_resnext29_10x11d')
    p.add_argument('--use-ema', action='store_true', help="use the checkpoint's EMA weights (state_dict_ema)")
    p.add_argument('--batch-size', type=int, default=128, help='evaluation batch size (default 128)')
    p.add_argument('--workers', type=int, default=0, help='data loader worker processes (default 0)')
    p.add_argument('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    p.add_argument('--seed', type=int, default=0, help='seed of the negative sampling (default 0)')


def load_model(args) -> Any:
    import torch

    from ..binary import load_checkpoint
    from ..coded_resnext import CodedResNeXt
    from ..errors import NotCodedError
    from ..layers import coded_blocks

    if args.batch_size < 1:
        raise TimmCodedError(f'--batch-size must be positive, got {args.batch_size}')
    model = load_checkpoint(args.model, args.checkpoint, use_ema=args.use_ema)
    if not isinstance(model, CodedResNeXt) or not coded_blocks(model):
        raise NotCodedError(f'{args.model} has no coded block (an uncoded/control model): it has no class paths '
                            'to slice or decode')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    return model.to(device).eval()


def eval_loader(model, data, split: Optional[str], args, labelled: bool = True):
    """Eval-transform loader at the model's input size; labelled data must have the model's classes."""
    from ..data import make_loader

    return make_loader(data, model_or_data_config=model, train=False, batch_size=args.batch_size,
                       num_workers=args.workers, split=split,
                       expected_classes=model.class_names if labelled else None)


def split_loaders(model, root: Path, args) -> Tuple[Any, Optional[Any], List[str]]:
    """(training-split loader, val-split loader or None, notes) for an image folder root."""
    from ..data import load_samples

    notes = []
    train = load_samples(root, 'train', model.class_names)
    has_val = any((Path(root) / n).is_dir() for n in _VAL_FOLDERS)
    val = load_samples(root, 'val', model.class_names) if has_val or train.root == Path(root) else None
    if val is not None and val.root == train.root:
        notes.append(f'{root} has no train/val split folders: thresholds are fitted and measured on the same images')
        val = None
    calibration = eval_loader(model, train, None, args)
    validation = eval_loader(model, val, None, args) if val is not None else None
    return calibration, validation, notes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def folder_name(name: str) -> str:
    """A class name as a safe folder / tag component."""
    safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('._')
    return safe or 'class'


class AtomicOutput:
    """Write into a temporary folder beside `out`; `commit(names)` moves the entries in place.

    If `out` does not exist the whole temp folder is renamed to it; otherwise each entry is
    renamed into `out` (an existing entry is refused unless `overwrite`). On any failure before
    the commit the temp folder is deleted, so nothing is half-written.
    """

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        if self.out.exists() and not self.out.is_dir():
            raise TimmCodedError(f'--out {self.out} exists and is not a folder')
        # parents we create are removed again by `discard`
        self._created = []
        parent = self.out.parent.absolute()
        while not parent.exists():
            self._created.append(parent)
            parent = parent.parent
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f'.{self.out.name}.', suffix='.tmp', dir=self.out.parent))

    def check_free(self, names: Iterable[str]) -> None:
        taken = [n for n in names if (self.out / n).exists()]
        if taken and not self.overwrite:
            raise TimmCodedError(f'{self.out} already holds {", ".join(taken)}; use another --out or --overwrite')

    def commit(self, names: Sequence[str]) -> None:
        if not self.out.exists():
            os.replace(self.tmp, self.out)
            return
        self.check_free(names)
        for name in names:
            target = self.out / name
            if target.exists():  # --overwrite: move the old one aside first, drop it after
                old = self.tmp / f'.old-{name}'
                os.replace(target, old)
            os.replace(self.tmp / name, target)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in self._created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break


# --- extract -----------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser('extract', help=_HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument('--classes', default='all',
                   help="'all' (default) or a comma-separated list of class indices or names")
    p.add_argument('--data-dir', type=Path, metavar='DIR',
                   help='image folder (train/ [val/] of class folders) for the thresholds; '
                        'default: the CIFAR-10 sample shipped with timm-coded')
    p.add_argument('--out', type=Path, required=True, metavar='DIR', help='output folder (one subfolder per class)')
    p.add_argument('--overwrite', action='store_true', help='replace class folders that already exist in --out')
    p.add_argument('--repo', metavar='ORG/NAME', help='write Hub-ready folders for this repo (needs --tag)')
    p.add_argument('--tag', help="pretrained tag of the parent, e.g. cifar10; a class's tag is TAG_<class>")
    p.add_argument('--dataset', help='training dataset name, for Hub model cards')
    p.set_defaults(func=run)


def extract_binary_classifiers(
        model,
        classes,
        out: Path,
        calibration_loader,
        val_loader=None,
        *,
        checkpoint: Optional[Path] = None,
        calibration_source: str = '',
        notes: Sequence[str] = (),
        negatives_per_positive: int = 9,
        seed: int = 0,
        overwrite: bool = False,
        hub_card: Optional[Dict[str, Any]] = None,
        progress: bool = False,
) -> List[Path]:
    """Slice, calibrate and write the binary classifiers of `classes` into `out` (atomically).

    hub_card: {'repo_id', 'tag', ['dataset']} to write Hub-ready folders with `hub.export_artifact`.
    Returns the class folders written.
    """
    from timm.models import save_for_hf

    from ..binary import binary_architecture, count_parameters, slice_binary
    from ..evaluation import evaluate_binary_classifiers, resolve_classes

    indices = resolve_classes(model, classes)
    names = [folder_name(model.class_names[k] if model.class_names else f'class_{k}') for k in indices]
    if len(set(names)) != len(names):
        names = [f'{k}_{n}' for k, n in zip(indices, names)]
    output = AtomicOutput(out, overwrite=overwrite)
    try:
        output.check_free(names)  # before any work
        results = evaluate_binary_classifiers(
            model, indices, calibration_loader, val_loader, negatives_per_positive=negatives_per_positive,
            seed=seed, progress=progress)
        checkpoint_info = None
        if checkpoint is not None:
            checkpoint_info = {'path': str(checkpoint), 'sha256': sha256_file(checkpoint)}
        for result, name in zip(results, names):
            binary = slice_binary(model, result.class_index, threshold=result.threshold).cpu().eval()
            args = dict(binary._model_args)
            architecture = binary_architecture(args['parent_architecture'])
            metrics = {
                'class_index': result.class_index, 'class_name': result.class_name,
                'architecture': architecture, 'parent_architecture': args['parent_architecture'],
                'parent_checkpoint': checkpoint_info,
                'threshold': result.threshold,
                'threshold_rule': f'maximises F1 on {calibration_source or "the calibration data"}',
                'negatives_per_positive': negatives_per_positive,
                'calibration': result.calibration.to_dict(),
                'validation': result.validation.to_dict() if result.validation is not None else None,
                'parameters': result.parameters, 'parent_parameters': count_parameters(model),
                'parameter_share': result.parameter_share,
                'present_subnns': args['present_subnns'],
                'notes': list(notes),
            }
            folder = output.tmp / name
            if hub_card is None:
                save_for_hf(binary, folder, model_config={'label_names': [result.class_name]},
                            safe_serialization=True)
                (folder / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n', encoding='utf-8')
            else:
                _export_for_hub(binary, folder, args, result, metrics, hub_card)
        output.commit(names)
    except BaseException:
        output.discard()
        raise
    return [Path(out) / n for n in names]


def _export_for_hub(binary, folder: Path, args: Dict[str, Any], result, metrics: Dict[str, Any],
                    hub_card: Dict[str, Any]) -> None:
    from ..binary import binary_architecture
    from ..hub import export_artifact

    tag = hub_card['tag']
    measured = result.validation or result.calibration
    card = {
        'repo_id': hub_card['repo_id'], 'tag': f'{tag}_{folder_name(result.class_name).lower()}',
        'kind': 'binary', 'class_index': result.class_index, 'class_name': result.class_name,
        'threshold': result.threshold, 'parameter_share': result.parameter_share,
        'parent': f"{args['parent_architecture']}.{tag}",
        'metrics': {'precision': measured.precision, 'recall': measured.recall, 'f1': measured.f1},
        'split': 'val' if result.validation is not None else 'train',
        'training': {'threshold_rule': metrics['threshold_rule'], 'parent_checkpoint': metrics['parent_checkpoint']},
    }
    if hub_card.get('dataset'):
        card['dataset'] = hub_card['dataset']
    export_artifact(binary, folder, architecture=binary_architecture(args['parent_architecture']), model_args=args,
                    label_names=[result.class_name], card=card)


def run(args) -> int:
    from ..data import CIFAR10_CLASSES, sample_data_dir

    if bool(args.repo) != bool(args.tag):
        raise TimmCodedError('--repo and --tag go together (Hub-ready folders need both)')
    model = load_model(args)
    if args.data_dir is not None:
        root, source = args.data_dir, f'the training split of {args.data_dir}'
    else:
        if list(model.class_names or []) != list(CIFAR10_CLASSES):
            raise DataError(f'{args.model} does not have the CIFAR-10 classes of the shipped sample: '
                            'give --data-dir with images of its classes')
        root, source = sample_data_dir(), 'the CIFAR-10 sample shipped with timm-coded (train/)'
    calibration, validation, notes = split_loaders(model, root, args)
    hub_card = {'repo_id': args.repo, 'tag': args.tag, 'dataset': args.dataset} if args.repo else None
    folders = extract_binary_classifiers(
        model, args.classes, args.out, calibration, validation, checkpoint=args.checkpoint,
        calibration_source=source, notes=notes, seed=args.seed, overwrite=args.overwrite, hub_card=hub_card,
        progress=True)
    for folder in folders:
        metrics_file = folder / 'metrics.json'
        if metrics_file.exists():
            m = json.loads(metrics_file.read_text(encoding='utf-8'))
            measured = m['validation'] or m['calibration']
            print(f"{folder}: threshold {m['threshold']:+.4f}, {100 * m['parameter_share']:.1f} % of the parameters, "
                  f"P/R/F1 {100 * measured['precision']:.1f}/{100 * measured['recall']:.1f}/{100 * measured['f1']:.1f} %")
        else:
            print(folder)
    for note in notes:
        print(f'note: {note}')
    return 0
