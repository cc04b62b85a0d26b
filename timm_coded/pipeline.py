"""The one export flow: load -> export the full model -> slice + calibrate -> export the binaries.

`timm-coded extract`, `timm-coded publish CHECKPOINT`, `timm-coded demo` and scripts/ship_weights.py
all call these functions; the CLI only parses arguments and prints.
- `calibration_data`: the images binary thresholds are fitted on (a --data-dir, or for CIFAR-10
  models the sample shipped with the package) and its val split, if any.
- `export_model`: the full model's Hub-ready folder and, for a coded model, one per class.
- `extract_binary_classifiers`: slice, calibrate and write per-class binary classifiers.
- `extract_subset_classifiers`: the same for class-subset classifiers (e.g. 'vehicles').

Every class gets a folder with timm's config.json (architecture `<model>_binary`, model_args
that rebuild it, the calibrated threshold among them) and model.safetensors, plus either
metrics.json or, when `hub_card` is given, a Hub-ready export (model card, metadata in
config.json) that `hub.read_export` / `timm-coded publish` accept. Everything is written in a
temporary folder beside the output and moved into place at the end.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ._io import StagedOutput
from .errors import DataError, TimmCodedError
from .hub.export import check_card_names, sha256_file

__all__ = ['calibration_data', 'CalibrationData', 'exports_binaries', 'export_model', 'extract_binary_classifiers',
           'extract_subset_classifiers', 'AtomicOutput', 'folder_name']

# timm's names of a validation split folder (timm.data.dataset_factory)
VAL_FOLDERS = ('val', 'valid', 'validation', 'eval', 'evaluation')


def folder_name(name: str) -> str:
    """A class name as a safe folder name."""
    safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('._')
    return safe or 'class'


def tag_component(name: str) -> str:
    """A class name as the end of a pretrained tag (timm's tags: [a-z0-9_]; 'T-shirt' -> 't_shirt')."""
    return re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_') or 'class'


def _unique(names: List[str], indices: Sequence[int]) -> List[str]:
    """`names`, prefixed by their class index where two would collide."""
    return names if len(set(names)) == len(names) else [f'{k}_{n}' for k, n in zip(indices, names)]


class AtomicOutput(StagedOutput):
    """The extract/evaluate output folder: `StagedOutput` (nothing half-written, and nothing
    replaced or removed that timm-coded did not write) with the entry-level names these commands use."""

    def check_free(self, names: Iterable[str]) -> None:
        self.check(list(names))

    def commit(self, names: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:  # type: ignore[override]
        return super().commit()


# --- calibration data ----------------------------------------------------------------------------
@dataclass
class CalibrationData:
    """Where binary thresholds are fitted (`calibration`) and measured (`validation`, None without a val split)."""
    calibration: Any
    validation: Optional[Any]
    source: str  # in words, for metrics and model cards
    notes: List[str] = field(default_factory=list)


def calibration_data(model, data_dir: Optional[Union[str, Path]] = None, *, batch_size: int = 128,
                     workers: int = 0, model_name: str = '') -> CalibrationData:
    """Eval-transform loaders over `data_dir`'s train (and val) split, or over the CIFAR-10 sample
    shipped with the package for a model with the CIFAR-10 classes."""
    from .data import CIFAR10_CLASSES, load_samples, make_loader, sample_data_dir

    if data_dir is not None:
        root, source = Path(data_dir), f'the training split of {data_dir}'
    elif list(model.class_names or []) == list(CIFAR10_CLASSES):
        root, source = sample_data_dir(), 'the CIFAR-10 sample shipped with timm-coded (train/)'
    else:
        raise DataError(f'{model_name or "the model"} does not have the CIFAR-10 classes of the shipped sample: '
                        'give --data-dir with images of its classes to calibrate its binary classifiers')
    notes = []
    train = load_samples(root, 'train', model.class_names)
    has_val = any((root / n).is_dir() for n in VAL_FOLDERS)
    val = load_samples(root, 'val', model.class_names) if has_val or train.root == root else None
    if val is not None and val.root == train.root:
        notes.append(f'{root} has no train/val split folders: thresholds are fitted and measured on the same images')
        val = None

    def loader(samples):
        return make_loader(samples, model_or_data_config=model, train=False, batch_size=batch_size,
                           num_workers=workers, expected_classes=model.class_names)
    return CalibrationData(loader(train), loader(val) if val is not None else None, source, notes)


# --- export --------------------------------------------------------------------------------------
def exports_binaries(model, classes: Union[str, Sequence[Union[int, str]], None]) -> bool:
    """Whether `export_model(model, classes=classes)` slices binary classifiers (and so needs data):
    not for None/'none', nor for 'all' of an uncoded model, which has no class paths."""
    from .models.layers import coded_blocks

    if classes is None or classes == 'none':
        return False
    return classes != 'all' or bool(coded_blocks(model))


def check_export_dir(out: Path) -> None:
    """`export_model` writes only into a new or empty folder: nothing of the user's is ever replaced."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TimmCodedError(f'{out} already exists and is not an empty folder: export into a new or empty one')


def export_model(
        model,
        out: Path,
        *,
        architecture: str,
        card: Dict[str, Any],
        classes: Union[str, Sequence[Union[int, str]], None] = 'all',
        data: Optional[CalibrationData] = None,
        checkpoint: Optional[Path] = None,
        results: Optional[Sequence[Any]] = None,
        subsets: Optional[Mapping[str, Sequence[Union[int, str]]]] = None,
        progress: bool = False,
) -> List[Path]:
    """Hub-ready folders in `out` (new or empty): `out/full` (the model) and, unless `classes` is
    None/'none' or the model is uncoded with classes='all', `out/binary/<class>` (sliced, calibrated on `data`); for every
    entry name -> classes of `subsets`, `out/subset/<name>`.

    card: the full model's card ({'repo_id', 'tag', ['dataset'], ...}); the binaries' cards take
    its repo_id, tag and dataset.
    """
    from .hub.export import export_artifact

    check_export_dir(out)
    label_names = list(getattr(model, 'class_names', None) or [str(i) for i in range(model.num_classes)])
    folders = [export_artifact(model, Path(out) / 'full', architecture=architecture, model_args={},
                               label_names=label_names, card=card, overwrite=True)]
    if not exports_binaries(model, classes) and not subsets:
        return folders
    if data is None:
        raise TimmCodedError('exporting sliced classifiers needs calibration data')
    hub_card = {k: card[k] for k in ('repo_id', 'tag', 'dataset') if card.get(k)}
    if exports_binaries(model, classes):
        folders += extract_binary_classifiers(
            model, classes, Path(out) / 'binary', data.calibration, data.validation, checkpoint=checkpoint,
            calibration_source=data.source, notes=data.notes, overwrite=True, progress=progress, hub_card=hub_card,
            results=results)
    if subsets:
        folders += extract_subset_classifiers(
            model, subsets, Path(out) / 'subset', data.calibration, data.validation, checkpoint=checkpoint,
            calibration_source=data.source, notes=data.notes, overwrite=True, progress=progress, hub_card=hub_card)
    return folders


# --- extract -----------------------------------------------------------------------------------
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
        results: Optional[Sequence[Any]] = None,
) -> List[Path]:
    """Slice, calibrate and write the binary classifiers of `classes` into `out` (atomically).

    hub_card: {'repo_id', 'tag', ['dataset']} to write Hub-ready folders with `hub.export_artifact`.
    results: `evaluate_binary_classifiers` results already computed for these classes (e.g. by
        `evaluation.evaluate`): reused instead of calibrating again.
    Returns the class folders written.
    """
    from timm.models import get_model_args

    from .models.binary import binary_architecture, count_parameters, slice_binary
    from .analysis.evaluation import evaluate_binary_classifiers, resolve_classes

    indices = resolve_classes(model, classes)
    class_names = [model.class_names[k] if model.class_names else f'class_{k}' for k in indices]
    names = _unique([folder_name(n) for n in class_names], indices)
    tag_suffixes = _unique([tag_component(n) for n in class_names], indices)
    if hub_card is not None:
        check_card_names(hub_card)  # before any work
    output = AtomicOutput(out, overwrite=overwrite)
    try:
        output.check_free(names)  # before any work
        if results is None:
            results = evaluate_binary_classifiers(
                model, indices, calibration_loader, val_loader, negatives_per_positive=negatives_per_positive,
                seed=seed, progress=progress)
        elif [r.class_index for r in results] != list(indices):
            raise TimmCodedError('precomputed binary results do not match the requested classes')
        checkpoint_info = None
        if checkpoint is not None:
            checkpoint_info = {'path': str(checkpoint), 'sha256': sha256_file(checkpoint)}
        for result, name, tag_suffix in zip(results, names, tag_suffixes):
            binary = slice_binary(model, result.class_index, threshold=result.threshold).cpu().eval()
            args = get_model_args(binary)  # timm's record of the factory arguments
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
            card = None if hub_card is None else _sliced_card(
                hub_card, tag_suffix, args, result, metrics, kind='binary',
                class_index=result.class_index, class_name=result.class_name)
            _write_sliced(binary, output.tmp / name, args, [result.class_name], metrics, card)
        output.commit(names)
    except BaseException:
        output.discard()
        raise
    return [Path(out) / n for n in names]


def _sliced_card(hub_card: Dict[str, Any], tag_suffix: str, args: Dict[str, Any], result,
                 metrics: Dict[str, Any], **fields: Any) -> Dict[str, Any]:
    """The card of a sliced classifier (binary or subset): what both kinds share, plus `fields`."""
    from .hub.export import _portable

    measured = result.validation or result.calibration
    # a card travels: the parent checkpoint by file name and sha256, the calibration data without local paths
    checkpoint = metrics['parent_checkpoint']
    if checkpoint is not None:
        checkpoint = {'file': Path(checkpoint['path']).name, 'sha256': checkpoint['sha256']}
    card = {
        'repo_id': hub_card['repo_id'], 'tag': f"{hub_card['tag']}_{tag_suffix}",
        'threshold': result.threshold, 'parameter_share': result.parameter_share,
        'parent': f"{args['parent_architecture']}.{hub_card['tag']}",
        'metrics': {'precision': measured.precision, 'recall': measured.recall, 'f1': measured.f1},
        'split': 'val' if result.validation is not None else 'train',
        'training': {'threshold_rule': _portable(metrics['threshold_rule']), 'parent_checkpoint': checkpoint},
        **fields,
    }
    if hub_card.get('dataset'):
        card['dataset'] = hub_card['dataset']
    return card


def _write_sliced(classifier, folder: Path, model_args: Dict[str, Any], label_names: Sequence[str],
                  metrics: Dict[str, Any], card: Optional[Dict[str, Any]]) -> None:
    """Write one sliced classifier (binary or subset): timm's `save_for_hf` folder plus metrics.json
    without a Hub card, else the Hub export (weights, config and the model card `card`)."""
    from timm.models import save_for_hf

    from .hub.export import export_artifact

    if card is None:
        save_for_hf(classifier, folder, model_config={'label_names': list(label_names)}, safe_serialization=True)
        (folder / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n', encoding='utf-8')
    else:
        export_artifact(classifier, folder, architecture=metrics['architecture'],
                        model_args=model_args, label_names=list(label_names), card=card)


# --- class subsets -------------------------------------------------------------------------------
def extract_subset_classifiers(
        model,
        subsets: Mapping[str, Sequence[Union[int, str]]],
        out: Path,
        calibration_loader,
        val_loader=None,
        *,
        checkpoint: Optional[Path] = None,
        calibration_source: str = '',
        notes: Sequence[str] = (),
        overwrite: bool = False,
        hub_card: Optional[Dict[str, Any]] = None,
        progress: bool = False,
) -> List[Path]:
    """Slice, calibrate and write one class-subset classifier per entry name -> classes of `subsets`
    into `out/<name>` (atomically, like `extract_binary_classifiers`). Returns the folders written."""
    from timm.models import get_model_args

    from .analysis.evaluation import evaluate_subset_classifier
    from .models.binary import count_parameters
    from .models.subset import check_subset_name, slice_subset, subset_architecture, subset_model_args

    if not subsets:
        raise TimmCodedError('no class subset given')
    names = [check_subset_name(n) for n in subsets]
    output = AtomicOutput(out, overwrite=overwrite)
    try:
        output.check_free(names)  # before any work
        for name in names:
            subset_model_args(model, subsets[name], name)  # every subset valid before the first is calibrated
        checkpoint_info = {'path': str(checkpoint), 'sha256': sha256_file(checkpoint)} if checkpoint else None
        for name in names:
            result = evaluate_subset_classifier(model, subsets[name], name, calibration_loader, val_loader,
                                                progress=progress)
            subset = slice_subset(model, result.class_indices, name, threshold=result.threshold).cpu().eval()
            args = get_model_args(subset)
            metrics = dict(
                result.to_dict(), architecture=subset_architecture(args['parent_architecture']),
                parent_architecture=args['parent_architecture'], parent_checkpoint=checkpoint_info,
                parent_parameters=count_parameters(model), present_subnns=args['present_subnns'],
                threshold_rule=f'maximises F1 of "one of the subset" on {calibration_source or "the calibration data"}',
                notes=list(notes))
            card = None if hub_card is None else _subset_card(hub_card, args, result, metrics)
            _write_sliced(subset, output.tmp / name, args, result.class_names, metrics, card)
        output.commit(names)
    except BaseException:
        output.discard()
        raise
    return [Path(out) / n for n in names]


def _subset_card(hub_card: Dict[str, Any], args: Dict[str, Any], result, metrics: Dict[str, Any]) -> Dict[str, Any]:
    card = _sliced_card(hub_card, result.name, args, result, metrics, kind='subset', subset_name=result.name,
                        class_indices=result.class_indices, class_names=result.class_names)
    card['metrics']['top1_within_subset'] = (
        result.validation_top1 if result.validation is not None else result.calibration_top1)
    return card
