"""Evaluation of a trained Coded ResNeXt: the numbers behind the paper's figures, as report data.

`evaluate(...)` gathers accuracy, early decoding per block (Fig. 4), per-class binary
classifiers with F1-calibrated thresholds and their precision/recall/F1 on in- and
out-of-distribution negatives (Figs. 2b, 2c), the specialization curve (Fig. 2a), the
early-exit accuracy-vs-compute curve, and the mean subNN energy of every class next to its
codeword. `EvaluationReport.to_dict()` is JSON; `timm_coded.analysis.plots` draws it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from ..models.binary import (
    BinaryMetrics, binary_classifier_logits, binary_metrics, calibrate_threshold, count_parameters,
    slice_binary,
)
from ..models.coded_resnext import CodedResNeXt
from .decoding import (
    ModelOutputs, SpecializationCurve, collect_outputs, count_macs, decoder_blocks,
    early_decoding_accuracy, simulate_early_exit, specialization_curve, top1,
)
from ..energy import rescaled_energies
from ..errors import TimmCodedError

__all__ = [
    'accuracy', 'mean_energies_per_class', 'ClassBinaryResult', 'evaluate_binary_classifiers',
    'resolve_classes', 'EvaluationReport', 'evaluate', 'SubsetResult', 'evaluate_subset_classifier',
]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of (n, K) logits."""
    return top1(logits, targets)


def mean_energies_per_class(model: CodedResNeXt, outputs: ModelOutputs) -> Dict[str, np.ndarray]:
    """Per decoder block, the (K, N) mean of r * E_bar over the samples of each class.

    r * E_bar is what the coding loss pulls towards the codeword digit, so a well-coded block
    shows its codeword table (0/1) here. Rows of classes without samples are NaN.
    """
    result = {}
    for name, block in decoder_blocks(model):
        num_classes, num_subnns = block.codewords.shape
        scaled = rescaled_energies(outputs.energies[name], block.num_active, num_subnns)
        sums = torch.zeros(num_classes, num_subnns).index_add_(0, outputs.targets, scaled)
        counts = torch.bincount(outputs.targets, minlength=num_classes).float().unsqueeze(1)
        means = sums / counts
        means[counts.squeeze(1) == 0] = float('nan')
        result[name] = means.numpy()
    return result


def resolve_classes(model: CodedResNeXt, classes: Union[None, str, Sequence[Union[int, str]]]) -> List[int]:
    """Class indices from None / 'all' / a comma list / a sequence of indices or names."""
    scheme = next((s for s in model.schemes if s is not None and not s.is_uncoded), None)
    if scheme is None:
        from ..errors import NotCodedError
        raise NotCodedError('the model has no coded stage with a coding scheme')
    if model.class_names is not None and scheme.class_names is None:
        scheme = scheme.with_class_names(model.class_names)
    if classes is None or classes == 'all':
        return list(range(scheme.num_classes))
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(',') if c.strip()]
        if not classes:
            raise TimmCodedError("no class given: use 'all' or a comma-separated list of indices or names")
    indices = []
    for c in classes:
        index = scheme.class_index(c)
        if index not in indices:
            indices.append(index)
    return indices


def _class_name(model: CodedResNeXt, index: int) -> str:
    return model.class_names[index] if model.class_names is not None else str(index)


@dataclass
class ClassBinaryResult:
    """One class's binary classifier: threshold, size and precision/recall/F1."""
    class_index: int
    class_name: str
    threshold: float
    parameters: int
    parameter_share: float
    calibration: BinaryMetrics                 # on the data the threshold was fitted on
    validation: Optional[BinaryMetrics] = None  # in-distribution negatives
    ood: Optional[BinaryMetrics] = None        # out-of-distribution negatives

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        return d


def _class_list(model: torch.nn.Module, classes: Sequence[int], shown: int = 4) -> str:
    """The classes a progress bar works on, by name: 'cat, ship' (not '3..8', which reads as a range)."""
    names = getattr(model, 'class_names', None)
    labels = [names[k] if names is not None and k < len(names) else str(k) for k in classes]
    return ', '.join(labels[:shown]) + (f' and {len(labels) - shown} more' if len(labels) > shown else '')


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def evaluate_binary_classifiers(
        model: CodedResNeXt,
        classes: Sequence[int],
        calibration_loader: Iterable,
        val_loader: Optional[Iterable] = None,
        ood_loader: Optional[Iterable] = None,
        negatives_per_positive: Optional[int] = 9,
        seed: int = 0,
        chunk_size: int = 16,
        progress: bool = False,
) -> List[ClassBinaryResult]:
    """Slice every class's binary classifier, fit its F1-maximising threshold on
    `calibration_loader` and measure it on `val_loader` (the other classes as negatives) and
    `ood_loader` (every image a negative), 9 negatives per positive by default.

    Classifiers are built `chunk_size` at a time (a pass of each loader per chunk), so memory
    stays bounded for 100 or 1000 classes.
    """
    results: List[ClassBinaryResult] = []
    parent_parameters = count_parameters(model)
    for chunk in _chunks(list(classes), chunk_size):
        binaries = [slice_binary(model, k).eval() for k in chunk]
        label = 'binary classifiers ' + _class_list(model, chunk)
        calib_logits, calib_targets = binary_classifier_logits(binaries, calibration_loader, progress=progress,
                                                               desc=f'{label} (calibration)')
        val_logits = val_targets = ood_logits = None
        if val_loader is not None:
            val_logits, val_targets = binary_classifier_logits(binaries, val_loader, progress=progress,
                                                               desc=f'{label} (validation)')
        if ood_loader is not None:
            ood_logits, _ = binary_classifier_logits(binaries, ood_loader, progress=progress,
                                                     desc=f'{label} (out-of-distribution)')
        for i, k in enumerate(chunk):
            positive = calib_targets == k
            if not positive.any():
                raise TimmCodedError(f'class {_class_name(model, k)!r} has no image in the calibration data')
            threshold = calibrate_threshold(calib_logits[:, i], positive)
            result = ClassBinaryResult(
                class_index=k, class_name=_class_name(model, k), threshold=threshold,
                parameters=count_parameters(binaries[i]),
                parameter_share=count_parameters(binaries[i]) / parent_parameters,
                calibration=binary_metrics(calib_logits[:, i], positive, threshold, negatives_per_positive, seed))
            if val_logits is not None:
                result.validation = binary_metrics(val_logits[:, i], val_targets == k, threshold,
                                                   negatives_per_positive, seed)
            if ood_logits is not None and val_logits is not None:
                # positives: the class's validation images; negatives: every OOD image
                pos = val_logits[val_targets == k, i]
                logits = torch.cat([pos, ood_logits[:, i]])
                is_positive = torch.cat([torch.ones_like(pos, dtype=torch.bool),
                                         torch.zeros(ood_logits.shape[0], dtype=torch.bool)])
                result.ood = binary_metrics(logits, is_positive, threshold, negatives_per_positive, seed)
            results.append(result)
        del binaries
    return results


@dataclass
class SubsetResult:
    """A class-subset classifier: threshold, size, and how well it answers "one of the subset?"
    (precision/recall/F1 against every other image) and "which one?" (top-1 among the subset's images)."""
    name: str
    class_indices: List[int]
    class_names: List[str]
    threshold: float
    parameters: int
    parameter_share: float
    calibration: BinaryMetrics                   # membership, on the data the threshold was fitted on
    calibration_top1: float                      # argmax among the subset's classes, on its images
    validation: Optional[BinaryMetrics] = None
    validation_top1: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _membership(logits: torch.Tensor, targets: torch.Tensor, class_indices: Sequence[int]):
    """(largest subset logit, is one of the subset, top-1 within the subset on its images)."""
    members = torch.isin(targets, torch.as_tensor(list(class_indices)))
    if not members.any():
        raise TimmCodedError(f'no image of the classes {list(class_indices)} in the data')
    predicted = torch.as_tensor(list(class_indices))[logits.argmax(dim=1)]
    within = float((predicted[members] == targets[members]).float().mean())
    return logits.max(dim=1).values, members, within


def evaluate_subset_classifier(
        model: CodedResNeXt,
        classes: Sequence[Union[int, str]],
        name: str,
        calibration_loader: Iterable,
        val_loader: Optional[Iterable] = None,
        progress: bool = False,
) -> SubsetResult:
    """Slice the subset classifier of `classes`, fit the F1-maximising threshold of its membership
    decision (largest logit >= threshold) on `calibration_loader`, and measure it there and on
    `val_loader`. Every other image is a negative (the data's own class balance, no sampling)."""
    from ..models.subset import slice_subset, subset_logits

    subset = slice_subset(model, classes, name).eval()
    indices = subset.class_indices
    logits, targets = subset_logits(subset, calibration_loader, progress=progress, desc=f'subset {name} (calibration)')
    score, members, top1_calibration = _membership(logits, targets, indices)
    threshold = calibrate_threshold(score, members)
    result = SubsetResult(
        name=name, class_indices=list(indices), class_names=[_class_name(model, k) for k in indices],
        threshold=threshold, parameters=count_parameters(subset),
        parameter_share=count_parameters(subset) / count_parameters(model),
        calibration=binary_metrics(score, members, threshold, negatives_per_positive=None),
        calibration_top1=top1_calibration)
    if val_loader is not None:
        logits, targets = subset_logits(subset, val_loader, progress=progress, desc=f'subset {name} (validation)')
        score, members, result.validation_top1 = _membership(logits, targets, indices)
        result.validation = binary_metrics(score, members, threshold, negatives_per_positive=None)
    return result


def _jsonable(value: Any) -> Any:
    """NaN/inf become None (strict JSON); numpy arrays become lists."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


@dataclass
class EvaluationReport:
    """All evaluation results of one model on one dataset (JSON via `to_dict`)."""
    model: str
    num_samples: int
    accuracy: float
    class_names: List[str]
    early_decoding: Dict[str, float]                 # block -> accuracy, then 'classifier'
    macs: Dict[str, Any]                             # stem / blocks / head / total per sample
    early_exit: List[Dict[str, Any]]                 # EarlyExitPoint dicts
    mean_energies: Dict[str, np.ndarray]             # block -> (K, N) mean r * E_bar per class
    codewords: Dict[str, np.ndarray]                 # block -> (K, N) 0/1
    binary: List[ClassBinaryResult] = field(default_factory=list)
    specialization: Optional[SpecializationCurve] = None
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = dict(
            model=self.model, num_samples=self.num_samples, accuracy=self.accuracy, class_names=self.class_names,
            early_decoding=self.early_decoding, macs=self.macs, early_exit=self.early_exit,
            binary=[b.to_dict() for b in self.binary],
            specialization=None if self.specialization is None else self.specialization.to_dict(),
            mean_energies=self.mean_energies, codewords=self.codewords, notes=self.notes,
        )
        return _jsonable(d)

    def summary_lines(self) -> List[str]:
        lines = [f'{self.model}: top-1 accuracy {100 * self.accuracy:.2f} % on {self.num_samples} images']
        decoders = [f'{name} {100 * acc:.1f}' for name, acc in self.early_decoding.items() if name != 'classifier']
        lines.append('early decoding accuracy (%): ' + ', '.join(decoders))
        if self.binary:
            lines.append('binary classifiers (threshold, P/R/F1 % with 9 negatives per positive):')
            for b in self.binary:
                parts = [f'  {b.class_name:>12}: thr {b.threshold:+.3f}, {100 * b.parameter_share:.1f} % params']
                for label, m in (('calib', b.calibration), ('val', b.validation), ('ood', b.ood)):
                    if m is not None:
                        parts.append(f'{label} {100 * m.precision:.1f}/{100 * m.recall:.1f}/{100 * m.f1:.1f}')
                lines.append(', '.join(parts))
        if self.specialization is not None:
            s = self.specialization
            fmt = lambda v: '-' if v is None else f'{100 * v:.1f}'  # noqa: E731
            lines.append(f'specialization at {s.block} (accuracy % after removing k subNNs, mean of {s.draws} draws):')
            lines.append('  k        ' + ' '.join(f'{k:>6}' for k in s.ks))
            lines.append('  active   ' + ' '.join(f'{fmt(v):>6}' for v in s.mean('active')))
            lines.append('  inactive ' + ' '.join(f'{fmt(v):>6}' for v in s.mean('inactive')))
        if self.early_exit:
            lines.append('early exit (threshold: accuracy %, compute % of the full network):')
            for p in self.early_exit:
                lines.append(f"  {p['threshold']:>8.3f}: {100 * p['accuracy']:.2f} %, {100 * p['relative_macs']:.1f} %")
        lines.extend(f'note: {n}' for n in self.notes)
        return lines


def evaluate(
        model: CodedResNeXt,
        val_loader: Iterable,
        calibration_loader: Optional[Iterable] = None,
        ood_loader: Optional[Iterable] = None,
        classes: Union[None, str, Sequence[Union[int, str]]] = None,
        model_name: str = '',
        specialization_block: Optional[str] = None,
        specialization_draws: int = 5,
        exit_thresholds: Optional[Sequence[float]] = None,
        binary: bool = True,
        seed: int = 0,
        progress: bool = False,
) -> EvaluationReport:
    """Evaluate `model` on `val_loader` (see the module docstring).

    Thresholds are calibrated on `calibration_loader` (the training split; the validation data
    when None, which the report notes). `classes` limits the binary classifiers evaluated.
    """
    model.eval()
    notes: List[str] = []
    outputs = collect_outputs(model, val_loader, progress=progress, desc='accuracy and energies')
    images, _ = next(iter(val_loader))
    macs = count_macs(model, images.shape[1:])
    early_exit = simulate_early_exit(model, outputs, exit_thresholds, macs)
    decoders = decoder_blocks(model)
    class_names = list(model.class_names) if model.class_names is not None else [
        str(i) for i in range(outputs.logits.shape[1])]
    report = EvaluationReport(
        model=model_name or (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__),
        num_samples=outputs.num_samples,
        accuracy=accuracy(outputs.logits, outputs.targets),
        class_names=class_names,
        early_decoding=early_decoding_accuracy(model, outputs),
        macs=dict(stem=macs.stem, blocks=macs.blocks, head=macs.head, total=macs.total),
        early_exit=[asdict(p) for p in early_exit],
        mean_energies=mean_energies_per_class(model, outputs),
        codewords={name: b.codewords.cpu().numpy().astype(np.int8) for name, b in decoders},
        notes=notes,
    )
    if binary:
        if calibration_loader is None:
            calibration_loader = val_loader
            notes.append('thresholds were calibrated on the evaluation images themselves (no training split)')
        report.binary = evaluate_binary_classifiers(
            model, resolve_classes(model, classes), calibration_loader, val_loader, ood_loader, seed=seed,
            progress=progress)
    if specialization_draws > 0:
        report.specialization = specialization_curve(
            model, val_loader, specialization_block, draws=specialization_draws, seed=seed, progress=progress)
    return report
