"""Figures of an evaluation report (matplotlib, Agg backend: no display needed).

Every function takes the JSON form of the report (`EvaluationReport.to_dict()`, or a loaded
report.json), so figures can be redrawn from a saved report. Each `plot_*(report, path)` writes
`path` and returns it (None when the report lacks that figure's data); with `path=None` it
returns the open matplotlib Figure instead, for inspection (the caller closes it).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use('Agg')  # files only; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

__all__ = [
    'plot_training', 'plot_precision_recall', 'plot_early_decoding', 'plot_energy_heatmaps', 'plot_specialization',
    'plot_early_exit', 'save_report_plots', 'PLOT_NAMES', 'ENERGY_COLORBAR_LABEL', 'chance_precision',
    'energy_contrast',
]

_logger = logging.getLogger(__name__)

# file names written by save_report_plots (training.png only when the report has a training history)
PLOT_NAMES = ('precision_recall.png', 'early_decoding.png', 'energies.png', 'specialization.png', 'early_exit.png',
              'training.png')
_MAX_LABELLED_CLASSES = 20  # beyond this, class names would overlap
_MAX_DOTTED_CLASSES = 60  # beyond this, codeword dots on the energy maps would be illegible
ENERGY_COLORBAR_LABEL = 'mean normalised subNN energy\n(sums to N_act per class)'


def _save(fig, path: os.PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)
    return path


def _finish(fig, path: Optional[os.PathLike]):
    """Save and close `fig` into `path`; with no path, hand the open figure back."""
    return fig if path is None else _save(fig, path)


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _threshold_label(v: Optional[float]) -> str:
    return 'never' if v is None else f'{v:.3f}'  # JSON turns the infinite threshold (no early exit) into None


def _label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], obstacles=(),
                  fontsize: float = 7, color: str = 'black') -> list:
    """Annotate each point with its label at the first nearby offset where the text overlaps no
    other label, no other point and no obstacle (display-space bboxes), inside the axes.
    Deterministic; the axes limits and layout must be final before it runs."""
    renderer = ax.figure.canvas.get_renderer()
    points = ax.transData.transform(np.column_stack([xs, ys]))
    pad = 4.
    markers = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad) for px, py in points]
    frame = ax.get_window_extent(renderer)
    directions = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.4), (0, -1.4), (1.4, 0), (-1.4, 0))
    offsets = [(5 * s * dx, 5 * s * dy) for s in (1, 2, 3, 4) for dx, dy in directions]
    taken = list(obstacles)
    annotations = []
    backing = dict(boxstyle='square,pad=0.1', fc='white', ec='none', alpha=0.75)  # legible over grid and line
    for i, (x, y, text) in enumerate(zip(xs, ys, labels)):
        others = taken + [m for j, m in enumerate(markers) if j != i]
        chosen = None
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords='offset points', fontsize=fontsize,
                              color=color, bbox=backing, ha='left' if dx > 0 else 'right' if dx < 0 else 'center',
                              va='bottom' if dy > 0 else 'top' if dy < 0 else 'center')
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(b) for b in others):
                chosen = ann
                break
            ann.remove()
        if chosen is None:  # crowded: the first free-ish spot further out, tied to its point by a line
            chosen = ax.annotate(text, (x, y), xytext=(18, 18 + 9 * (i % 4)), textcoords='offset points',
                                 fontsize=fontsize, color=color, bbox=backing,
                                 arrowprops=dict(arrowstyle='-', lw=0.5, color='gray'))
        taken.append(chosen.get_window_extent(renderer))
        annotations.append(chosen)
    return annotations


def _restart_epochs(report: Dict[str, Any]) -> List[int]:
    """The last epoch before each warm restart, from `report['training']` (its `stages`, the
    arguments of each, and `history`); empty for a single schedule."""
    from ..training.runs import stage_epochs

    training = report.get('training') or {}
    if len(training.get('stages') or []) < 2:
        return []
    ends = np.cumsum(stage_epochs(training))  # the epochs each stage ran, not the ones it planned
    return [int(e) for e in ends[:-1]]


def plot_training(report: Dict[str, Any], path: Optional[os.PathLike]):
    """Training curves from `report['training']['history']`: the loss and its coding part, and
    the training and held-out accuracy, per epoch. None when the report has no history."""
    history = (report.get('training') or {}).get('history') or []
    if not history:
        return None
    epochs = [h['epoch'] for h in history]
    loss = _floats([h.get('loss') for h in history])
    coding = _floats([h.get('coding_loss') for h in history])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, loss, marker='o', ms=3, color='black', label='total loss')
    ax_loss.plot(epochs, loss - coding, marker='o', ms=3, ls='--', color='tab:blue', label='classification part')
    ax_loss.plot(epochs, coding, marker='o', ms=3, color='tab:orange', label='coding part (μ Σ coding losses)')
    positive = np.concatenate([loss, coding, loss - coding])
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if positive.size and positive.max() / positive.min() > 20:  # coding part orders of magnitude below
        ax_loss.set_yscale('log')
    ax_loss.set_xlabel('epoch')
    ax_loss.set_ylabel('training loss (mean over the epoch)')
    ax_loss.legend(fontsize=8)
    ax_loss.set_title('loss', fontsize=10)
    for key, color, label in (('train_accuracy', 'tab:blue', 'training (augmented batches)'),
                              ('val_accuracy', 'tab:red', 'held-out')):
        values = 100 * _floats([h.get(key) for h in history])
        if np.isfinite(values).any():
            ax_acc.plot(epochs, values, marker='o', ms=3, color=color, label=label)
    num_classes = len(report.get('class_names') or [])
    if num_classes:
        ax_acc.axhline(100 / num_classes, color='gray', ls='--', lw=1, label=f'chance ({100 / num_classes:.0f} %)')
    for i, epoch in enumerate(_restart_epochs(report)):  # a second schedule: say where it starts
        for ax in (ax_loss, ax_acc):
            ax.axvline(epoch + 0.5, color='gray', ls=':', lw=1.2, label='warm restart' if i == 0 and ax is ax_acc else None)
    ax_acc.set_xlabel('epoch')
    ax_acc.set_ylabel('top-1 accuracy (%)')
    ax_acc.set_ylim(0, 100)
    ax_acc.legend(fontsize=8)
    ax_acc.set_title('accuracy', fontsize=10)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    seconds = (report.get('training') or {}).get('seconds')
    measured = '' if seconds is None else f', {seconds:.0f} s measured'
    fig.suptitle(f"{report.get('model', '')}: training, {len(history)} epochs{measured}", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def chance_precision(results: Sequence[Dict[str, Any]], key: str) -> float:
    """Precision of a classifier that answers at random: the share of positives among the
    evaluated samples (0.1 at 9 negatives per positive)."""
    shares = [r[key]['num_positives'] / (r[key]['num_positives'] + r[key]['num_negatives']) for r in results
              if r.get(key) and r[key].get('num_positives') is not None
              and (r[key]['num_positives'] + r[key].get('num_negatives', 0)) > 0]
    return float(np.mean(shares)) if shares else 0.1


def plot_precision_recall(report: Dict[str, Any], path: Optional[os.PathLike]):
    """Paper Fig. 2b/2c: each class's binary classifier. Up to 20 classes: a table-like bar
    chart of precision and recall per class (held-out, in-distribution negatives; precision with
    out-of-distribution negatives when measured); more classes: a recall-precision scatter. The
    dashed line is the precision of a random classifier."""
    results = report.get('binary') or []
    if not results:
        return None
    key = 'validation' if any(r.get('validation') for r in results) else 'calibration'
    source = 'held-out' if key == 'validation' else 'calibration data'
    chance = 100 * chance_precision(results, key)
    negatives = round((100 - chance) / chance) if chance > 0 else 9
    chance_label = f'chance precision ({chance:.0f} %: random answers, {negatives} negatives per positive)'
    title = f"{report.get('model', '')}: binary classifiers ({source}, {negatives} negatives per positive)"

    def metric(r, k, name):
        return np.nan if not r.get(k) else 100 * r[k][name]

    if len(results) > _MAX_LABELLED_CLASSES:
        fig, ax = plt.subplots(figsize=(6, 6.2), layout='constrained')
        for k, marker, color, label in ((key, 'o', 'tab:blue', f'{source}, in-distribution negatives'),
                                        ('ood', 'x', 'tab:red', 'out-of-distribution negatives')):
            xs = [metric(r, k, 'recall') for r in results]
            ys = [metric(r, k, 'precision') for r in results]
            if np.isfinite(ys).any():
                ax.scatter(xs, ys, marker=marker, color=color, label=label, s=20)
        ax.axhline(chance, color='gray', ls='--', lw=1, label=chance_label)
        ax.set_xlabel('recall (%)')
        ax.set_ylabel('precision (%)')
        ax.set_xlim(-2, 105)
        ax.set_ylim(-2, 105)
        ax.grid(alpha=0.3)
        fig.legend(fontsize=8, loc='outside lower center', frameon=False)  # off the points
        ax.set_title(title, fontsize=10)
        return _finish(fig, path)

    series = [(key, 'precision', 'tab:blue', 'precision, in-distribution negatives'),
              ('ood', 'precision', 'tab:red', 'precision, out-of-distribution negatives'),
              (key, 'recall', 'tab:green', 'recall')]
    series = [s for s in series if any(r.get(s[0]) for r in results)]
    n, width = len(results), 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.14 * n * len(series) + 0.1 * n), layout='constrained')
    rows = np.arange(n)
    for i, (k, name, color, label) in enumerate(series):
        values = np.array([metric(r, k, name) for r in results])
        y = rows - 0.4 + width * (i + 0.5)
        ax.barh(y, np.nan_to_num(values), height=width * 0.9, color=color, label=label)
        for yy, v in zip(y, values):
            if np.isfinite(v):
                ax.text(v + 1, yy, f'{v:.0f}', va='center', ha='left', fontsize=7)
    ax.axvline(chance, color='black', ls='--', lw=1, label=chance_label)
    ax.set_yticks(rows)
    ax.set_yticklabels([r['class_name'] for r in results], fontsize=8)
    ax.invert_yaxis()  # first class at the top, as in the report's table
    ax.set_xlim(0, 112)
    ax.set_xlabel('%')
    ax.grid(axis='x', alpha=0.3)
    fig.legend(fontsize=7, loc='outside lower center', ncol=2, frameon=False)
    ax.set_title(title, fontsize=10)
    return _finish(fig, path)


def plot_early_decoding(report: Dict[str, Any], path: Optional[os.PathLike]):
    """Paper Fig. 4: accuracy of each coded block's early decoder, and of the classifier."""
    acc = report['early_decoding']
    names = list(acc)
    values = [100 * (acc[n] or 0.) for n in names]
    fig, ax = plt.subplots(figsize=(max(5., 0.7 * len(names) + 2), 4))
    colors = ['tab:blue'] * (len(names) - 1) + ['tab:orange']
    bars = ax.bar(range(len(names)), values, color=colors)
    for bar, v in zip(bars, values):
        ax.annotate(f'{v:.1f}', (bar.get_x() + bar.get_width() / 2, v), ha='center', va='bottom', fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha='right')
    num_classes = len(report.get('class_names') or []) or 1
    ax.axhline(100 / num_classes, color='gray', ls='--', lw=1, label='chance')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"{report.get('model', '')}: early decoding per coded block", fontsize=10)
    return _finish(fig, path)


def energy_contrast(energies: Sequence[Sequence[Optional[float]]], codewords: Sequence[Sequence[int]]):
    """(mean normalised energy on the codewords' active cells, on their inactive cells, the
    uniform value N_act/N). Training pushes the first towards 1 and the second towards 0."""
    e = _floats([v for row in energies for v in row]).reshape(len(energies), -1)
    w = np.asarray(codewords, dtype=float)
    uniform = float(w.sum(1).mean() / w.shape[1])
    active = float(np.nanmean(e[w == 1])) if (w == 1).any() else float('nan')
    inactive = float(np.nanmean(e[w == 0])) if (w == 0).any() else float('nan')
    return active, inactive, uniform


def plot_energy_heatmaps(report: Dict[str, Any], path: Optional[os.PathLike]):
    """Mean normalised energy r * E_bar of every subNN per class (rows: classes, columns: subNNs;
    one row of panels per coded stage). Each block has its own colour scale, centred (white) on
    the uniform value N_act/N: red cells carry more than their share. Dots mark the cells that
    are active in the class's codeword (beyond 60 classes, a codeword panel instead), so a block
    that follows its code has red dots and blue blanks."""
    energies = report['mean_energies']
    codewords = report['codewords']
    stages: Dict[str, List[str]] = {}
    for name in energies:
        stages.setdefault(name.split('.')[0], []).append(name)
    class_names = report.get('class_names') or []
    num_classes = len(next(iter(codewords.values())))
    dots = num_classes <= _MAX_DOTTED_CLASSES
    columns = (0 if dots else 1) + max(len(v) for v in stages.values())
    height = min(2.2 + 0.22 * num_classes, 14) if num_classes <= 60 else 8
    fig, axes = plt.subplots(len(stages), columns, figsize=(3.6 * columns + 0.5, height * len(stages) + 0.6),
                             squeeze=False, layout='constrained')
    for row, (stage, blocks) in enumerate(stages.items()):
        panels = [(b, energies[b], codewords[b]) for b in blocks]
        if not dots:
            panels = [(None, codewords[blocks[0]], codewords[blocks[0]])] + panels
        for col in range(columns):
            ax = axes[row][col]
            if col >= len(panels):
                ax.axis('off')
                continue
            block, values, words = panels[col]
            values = _floats([v for r in values for v in r]).reshape(len(values), -1)
            words = np.asarray(words, dtype=float)
            n = values.shape[1]
            if block is None:  # the stage's codeword table
                ax.imshow(words, aspect='auto', cmap='Greys', vmin=0., vmax=1., interpolation='nearest')
                ax.set_title(f'{stage} codewords (black = active)', fontsize=9)
            else:
                active, inactive, uniform = energy_contrast(energies[block], codewords[block])
                spread = float(np.nanmax(np.abs(values - uniform))) if np.isfinite(values).any() else 0.
                spread = max(spread, 1e-3)
                norm = TwoSlopeNorm(vcenter=uniform, vmin=uniform - spread, vmax=uniform + spread)
                image = ax.imshow(values, aspect='auto', cmap='RdBu_r', norm=norm, interpolation='nearest')
                bar = fig.colorbar(image, ax=ax, fraction=0.09, pad=0.02)
                bar.set_label(ENERGY_COLORBAR_LABEL, fontsize=7)
                bar.ax.tick_params(labelsize=6)
                if dots:
                    rows_, cols_ = np.nonzero(words == 1)
                    ax.scatter(cols_, rows_, s=max(2., 450. / max(num_classes, n)), c='black', marker='o',
                               edgecolors='white', linewidths=0.5)
                ax.set_title(f'{block}: active {active:.2f}, inactive {inactive:.2f}\n'
                             f'(white = N_act/N = {uniform:.2f})', fontsize=8)
            ax.set_xlabel('subNN', fontsize=8)
            ax.set_xticks(range(0, n, max(1, n // 10)))
            ax.tick_params(labelsize=7)
            if col == 0 and class_names and num_classes <= _MAX_LABELLED_CLASSES:
                ax.set_yticks(range(num_classes))
                ax.set_yticklabels(class_names, fontsize=7)
            elif col == 0:
                ax.set_ylabel('class', fontsize=8)
            else:
                ax.set_yticks([])
    marks = 'dots: active in the codeword' if dots else 'left: the codewords'
    fig.suptitle(f"{report.get('model', '')}: mean normalised subNN energy per class\n"
                 f"(each block on its own scale, white = uniform share; {marks})", fontsize=10)
    return _finish(fig, path)


def plot_specialization(report: Dict[str, Any], path: Optional[os.PathLike]):
    """Paper Fig. 2a: accuracy after removing k random active vs inactive subNNs of one block
    (mean over draws; bars span the draws)."""
    spec = report.get('specialization')
    if not spec:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, color, label in (('active', 'tab:red', 'remove k active subNNs'),
                              ('inactive', 'tab:blue', 'remove k inactive subNNs')):
        ks, means, low, high = [], [], [], []
        for k, values in zip(spec['ks'], spec[key]):
            if values is None:
                continue
            values = 100 * np.asarray(values, dtype=float)
            ks.append(k)
            means.append(values.mean())
            # mean - min can round to -1e-16 when all draws agree; matplotlib refuses negative errors
            low.append(max(values.mean() - values.min(), 0.))
            high.append(max(values.max() - values.mean(), 0.))
        if ks:
            ax.errorbar(ks, means, yerr=[low, high], marker='o', color=color, label=label, capsize=3)
    ax.set_xlabel('k (subNNs removed)')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.set_xticks(spec['ks'])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report.get('model', '')}: specialization of {spec['block']} ({spec['draws']} draws)",
                 fontsize=10)
    return _finish(fig, path)


def plot_early_exit(report: Dict[str, Any], path: Optional[os.PathLike]):
    """Early exit: accuracy against the average compute, one point per margin threshold, each
    labelled with its threshold ('never': no early exit, the full network). Thresholds that give
    the same point share one label, their range ('0.051–0.802')."""
    curve = report.get('early_exit') or []
    if not curve:
        return None
    points = sorted(curve, key=lambda p: (p['relative_macs'], p['threshold'] is None, p['threshold'] or 0.))
    xs = [100 * p['relative_macs'] for p in points]
    ys = [100 * p['accuracy'] for p in points]
    groups: Dict[tuple, List[Optional[float]]] = {}  # coincident points (at the plotted precision): one label
    where: Dict[tuple, tuple] = {}
    for x, y, p in zip(xs, ys, points):
        key = (round(x, 1), round(y, 1))
        groups.setdefault(key, []).append(p['threshold'])
        where.setdefault(key, (x, y))
    labels = []
    for thresholds in groups.values():
        ordered = sorted(thresholds, key=lambda t: (t is None, t or 0.))
        first, last = _threshold_label(ordered[0]), _threshold_label(ordered[-1])
        labels.append(first if first == last else f'{first}–{last}')
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(xs, ys, marker='o', color='tab:purple', label='early exit (label: margin threshold)')
    ax.axhline(100 * report['accuracy'], color='gray', ls='--', lw=1, label='full network')
    ax.set_xlabel('average multiply-adds (% of the full network)')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.25)  # room for the labels inside the axes
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())  # freeze the limits: labels are placed in display space
    ax.set_ylim(ax.get_ylim())
    legend = ax.legend(fontsize=8, loc='lower right')
    ax.set_title(f"{report.get('model', '')}: accuracy vs compute", fontsize=10)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    anchors = list(where.values())
    _label_points(ax, [a[0] for a in anchors], [a[1] for a in anchors], labels,
                  obstacles=[legend.get_window_extent(renderer)], color='tab:purple')
    return _finish(fig, path)


_PLOTTERS = (('precision_recall.png', plot_precision_recall), ('early_decoding.png', plot_early_decoding),
             ('energies.png', plot_energy_heatmaps), ('specialization.png', plot_specialization),
             ('early_exit.png', plot_early_exit), ('training.png', plot_training))
assert tuple(name for name, _ in _PLOTTERS) == PLOT_NAMES


def save_report_plots(report: Dict[str, Any], out_dir: os.PathLike) -> List[Path]:
    """Write every figure of `report` into `out_dir`; returns the files written. Never raises on
    a figure: one that cannot be drawn is logged and noted in report['notes']."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in _PLOTTERS:
        # A figure is a view of numbers already computed and saved: a plotting failure is logged
        # and noted in the report, and never discards the run's results.
        try:
            path = plot(report, out_dir / name)
        except Exception as e:  # noqa: BLE001 - any matplotlib failure
            plt.close('all')
            message = f'figure {name} could not be drawn: {type(e).__name__}: {e}'
            _logger.warning(message)
            report.setdefault('notes', []).append(message)
            continue
        if path is not None:
            written.append(path)
    return written
