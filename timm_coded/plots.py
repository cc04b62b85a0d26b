"""Figures of an evaluation report (matplotlib, Agg backend: no display needed).

Every function takes the JSON form of the report (`EvaluationReport.to_dict()`, or a loaded
report.json), so figures can be redrawn from a saved report.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use('Agg')  # files only; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    'plot_precision_recall', 'plot_early_decoding', 'plot_energy_heatmaps', 'plot_specialization',
    'plot_early_exit', 'save_report_plots', 'PLOT_NAMES',
]

# file names written by save_report_plots
PLOT_NAMES = ('precision_recall.png', 'early_decoding.png', 'energies.png', 'specialization.png', 'early_exit.png')
_MAX_LABELLED_CLASSES = 20  # beyond this, class names would overlap


def _save(fig, path: os.PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)
    return path


def plot_precision_recall(report: Dict[str, Any], path: os.PathLike) -> Optional[Path]:
    """Paper Fig. 2b/2c: each class's binary classifier as a (recall, precision) point, with
    in-distribution negatives and, when measured, out-of-distribution negatives."""
    results = report.get('binary') or []
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(6, 5.5))
    label_points = len(results) <= _MAX_LABELLED_CLASSES
    for key, marker, color, label in (('validation', 'o', 'tab:blue', 'in-distribution negatives'),
                                      ('ood', 'x', 'tab:red', 'out-of-distribution negatives')):
        points = [(r[key]['recall'], r[key]['precision'], r['class_name']) for r in results if r.get(key)]
        if not points:
            continue
        xs, ys, names = zip(*points)
        ax.scatter(xs, ys, marker=marker, color=color, label=label, s=40)
        if label_points:
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, 3), fontsize=7, color=color)
    if not ax.collections:  # only calibration data: show that
        points = [(r['calibration']['recall'], r['calibration']['precision'], r['class_name']) for r in results]
        xs, ys, names = zip(*points)
        ax.scatter(xs, ys, marker='o', color='tab:green', label='calibration data')
        if label_points:
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, 3), fontsize=7)
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    ax.set_title(f"{report.get('model', '')}: binary classifiers (9 negatives per positive)", fontsize=10)
    return _save(fig, path)


def plot_early_decoding(report: Dict[str, Any], path: os.PathLike) -> Path:
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
    return _save(fig, path)


def plot_energy_heatmaps(report: Dict[str, Any], path: os.PathLike) -> Path:
    """Mean r * E_bar of every subNN per class, next to the stage's codewords (one row per
    coded stage: codewords, then each block). A coded block that follows its scheme looks like
    its codeword table."""
    energies = report['mean_energies']
    codewords = report['codewords']
    stages: Dict[str, List[str]] = {}
    for name in energies:
        stages.setdefault(name.split('.')[0], []).append(name)
    columns = 1 + max(len(v) for v in stages.values())
    class_names = report.get('class_names') or []
    num_classes = len(next(iter(codewords.values())))
    height = min(2.2 + 0.22 * num_classes, 14) if num_classes <= 60 else 8
    fig, axes = plt.subplots(len(stages), columns, figsize=(2.3 * columns + 1, height * len(stages)), squeeze=False)
    image = None
    for row, (stage, blocks) in enumerate(stages.items()):
        panels = [(f'{stage} codewords', codewords[blocks[0]])] + [(f'{b} energy', energies[b]) for b in blocks]
        for col in range(columns):
            ax = axes[row][col]
            if col >= len(panels):
                ax.axis('off')
                continue
            title, values = panels[col]
            values = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
            image = ax.imshow(values, aspect='auto', cmap='viridis', vmin=0., vmax=1., interpolation='nearest')
            ax.set_title(title, fontsize=9)
            ax.set_xlabel('subNN', fontsize=8)
            n = values.shape[1]
            ax.set_xticks(range(0, n, max(1, n // 10)))
            ax.tick_params(labelsize=7)
            if col == 0 and class_names and num_classes <= _MAX_LABELLED_CLASSES:
                ax.set_yticks(range(num_classes))
                ax.set_yticklabels(class_names, fontsize=7)
            elif col == 0:
                ax.set_ylabel('class', fontsize=8)
            else:
                ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label='codeword digit / mean r·E (clipped at 1)')
    fig.suptitle(f"{report.get('model', '')}: mean subNN energy per class vs codewords", fontsize=10)
    return _save(fig, path)


def plot_specialization(report: Dict[str, Any], path: os.PathLike) -> Optional[Path]:
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
            low.append(values.mean() - values.min())
            high.append(values.max() - values.mean())
        if ks:
            ax.errorbar(ks, means, yerr=[low, high], marker='o', color=color, label=label, capsize=3)
    ax.set_xlabel('k (subNNs removed)')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.set_xticks(spec['ks'])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report.get('model', '')}: specialization of {spec['block']} ({spec['draws']} draws)",
                 fontsize=10)
    return _save(fig, path)


def plot_early_exit(report: Dict[str, Any], path: os.PathLike) -> Optional[Path]:
    """Early exit: accuracy against the average compute, one point per margin threshold."""
    curve = report.get('early_exit') or []
    if not curve:
        return None
    points = sorted(curve, key=lambda p: p['relative_macs'])
    xs = [100 * p['relative_macs'] for p in points]
    ys = [100 * p['accuracy'] for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(xs, ys, marker='o', color='tab:purple', label='early exit (one point per threshold)')
    ax.axhline(100 * report['accuracy'], color='gray', ls='--', lw=1, label='full network')
    ax.set_xlabel('average multiply-adds (% of the full network)')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='best')
    ax.set_title(f"{report.get('model', '')}: accuracy vs compute", fontsize=10)
    return _save(fig, path)


def save_report_plots(report: Dict[str, Any], out_dir: os.PathLike) -> List[Path]:
    """Write every figure of `report` into `out_dir`; returns the files written."""
    out_dir = Path(out_dir)
    plotters = (plot_precision_recall, plot_early_decoding, plot_energy_heatmaps, plot_specialization,
                plot_early_exit)
    written = [plot(report, out_dir / name) for plot, name in zip(plotters, PLOT_NAMES)]
    return [p for p in written if p is not None]
