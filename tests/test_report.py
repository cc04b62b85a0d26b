"""The demo report (README.md) and its figures, from a report made by the real pipeline at tiny scale."""
import copy
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from timm_coded.analysis import plots
from timm_coded.demo import DemoConfig, _report_markdown
from timm_coded.analysis.evaluation import evaluate
from timm_coded.errors import TimmCodedError
from conftest import randomised

SMALL = 'coded_resnext17_10x2d'
SECONDS = 2596.4
PNG = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def base_report():
    # a module fixture runs before conftest's one-thread fixture: one thread here too (2 spinning
    # OpenMP threads on a busy 2-core machine made this 20x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1)
        data = DataLoader(TensorDataset(torch.randn(48, 3, 16, 16), torch.arange(48) % 10), batch_size=20)
        return evaluate(randomised(), data, calibration_loader=data, model_name=SMALL,
                        specialization_draws=2).to_dict()
    finally:
        torch.set_num_threads(threads)


def with_history(d, epochs=4):
    d = copy.deepcopy(d)
    history = [dict(epoch=e, loss=2.3 - 0.3 * e, coding_loss=0.05 / e, train_accuracy=0.1 + 0.05 * e,
                    val_accuracy=0.1 + 0.04 * e, lr=0.1 / e, seconds=SECONDS / epochs) for e in range(1, epochs + 1)]
    d['training'] = {'epochs': epochs, 'seconds': SECONDS, 'split': 'a tiny random split', 'history': history}
    return d


def non_overlapping(texts, renderer):
    boxes = [t.get_window_extent(renderer) for t in texts]
    return not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_training_figure_is_drawn_from_the_history(base_report, tmp_path):
    d = with_history(base_report)
    files = plots.save_report_plots(d, tmp_path / 'with')
    training = [f for f in files if f.name == 'training.png']
    assert len(training) == 1 and training[0].read_bytes()[:8] == PNG
    assert set(plots.PLOT_NAMES) == {f.name for f in files}
    assert 'training.png' not in [f.name for f in plots.save_report_plots(copy.deepcopy(base_report), tmp_path / 'no')]

    fig = plots.plot_training(d, None)
    try:
        ax_loss, ax_acc = fig.axes
        history = d['training']['history']
        lines = {l.get_label(): l for l in ax_loss.lines}
        assert list(lines['total loss'].get_xdata()) == [1, 2, 3, 4]
        assert np.allclose(lines['total loss'].get_ydata(), [h['loss'] for h in history])
        coding = next(l for label, l in lines.items() if label.startswith('coding part'))
        assert np.allclose(coding.get_ydata(), [h['coding_loss'] for h in history])
        accuracy = {l.get_label(): l for l in ax_acc.lines}
        assert np.allclose(accuracy['held-out'].get_ydata(), [100 * h['val_accuracy'] for h in history])
        assert 'training (augmented batches)' in accuracy
        assert f'{SECONDS:.0f} s measured' in fig._suptitle.get_text()
    finally:
        plt.close(fig)

    # a warm restart (two stages, 3 + 2 epochs): both panels mark where the second schedule starts
    restarted = with_history(base_report, epochs=5)
    restarted['training']['stages'] = [{'epochs': 3, 'lr': 0.15}, {'epochs': 2, 'lr': 0.08}]
    fig = plots.plot_training(restarted, None)
    try:
        for ax in fig.axes:
            vertical = [l for l in ax.lines if len(set(l.get_xdata())) == 1]
            assert [l.get_xdata()[0] for l in vertical] == [3.5]
        assert 'warm restart' in [l.get_label() for l in fig.axes[1].lines]
    finally:
        plt.close(fig)
    # a first stage stopped early (--max-minutes): 2 of its 3 planned epochs ran, then 2 more
    stopped = with_history(base_report, epochs=4)
    stopped['training']['stages'] = [{'epochs': 3, 'epochs_run': 2}, {'epochs': 2, 'epochs_run': 2}]
    assert plots._restart_epochs(stopped) == [2]
    stopped['training']['stages'] = [{'epochs': 3}, {'epochs': 2}]  # an old record that cannot say where
    with pytest.raises(TimmCodedError, match='lists 4 epochs but its stages account for 5'):
        plots._restart_epochs(stopped)
    fig = plots.plot_training(d, None)  # one stage: no marker
    try:
        assert not [l for ax in fig.axes for l in ax.lines if len(l.get_xdata()) == 2 and len(set(l.get_xdata())) == 1]
    finally:
        plt.close(fig)

    broken = with_history(base_report)
    broken['training']['history'] = [{'loss': 1.}]  # no epoch: the figure fails, the rest survives
    files = plots.save_report_plots(broken, tmp_path / 'broken')
    assert 'training.png' not in [f.name for f in files] and len(files) == 5
    assert any(n.startswith('figure training.png could not be drawn') for n in broken['notes'])


def markdown(d, tmp_path, figures=()):
    return _report_markdown(DemoConfig(epochs=4), None, d, list(figures), [], tmp_path, 'coded_binary_test')


def test_markdown_prints_the_specialization_table_and_the_measured_time(base_report, tmp_path):
    d = with_history(base_report)
    figures = plots.save_report_plots(d, tmp_path)
    md = markdown(d, tmp_path, figures)
    s = d['specialization']
    assert s['ks'][0] == 0 and len(s['ks']) >= 3
    for k, active, inactive in zip(s['ks'], s['active'], s['inactive']):
        row = next(l for l in md.splitlines() if l.startswith(f'| {k} | '))
        cells = [c.strip() for c in row.strip('|').split('|')]
        for cell, values in zip(cells[1:], (active, inactive)):
            if values is None:
                assert cell.startswith('-')
                continue
            assert float(cell.split()[0]) == pytest.approx(100 * np.mean(values), abs=0.051)
            if max(values) - min(values) > 0.001:  # min-max over the draws
                assert f'({100 * min(values):.1f}-{100 * max(values):.1f})' in cell
    assert 'Fig. 2a' in md and 'removing inactive ones barely changes it' in md

    assert 'few CPU minutes' not in md and 'few minutes' not in md
    assert f'measured wall-clock time {SECONDS:.0f} s (43 min 16 s)' in md
    assert f'training took a measured {SECONDS:.0f} s (43 min 16 s)' in md  # the sample caveat, same number

    assert '![training curves](figures/training.png)' in md
    after = md.split('![training curves](figures/training.png)')[1].strip().splitlines()[0]
    assert after.startswith('Left: the training loss') and 'Last epoch: loss 1.100' in after
    for f in figures:  # every figure drawn is shown once, in its section
        assert md.count(f'](figures/{f.name})') == 1
    # the claims of the caveat are counted from the report, not asserted
    chance = 1 / len(d['class_names'])
    above = sum(round(100 * v, 1) > round(100 * chance, 1) for k, v in d['early_decoding'].items() if k != 'classifier')
    assert f'{above} of 4 early decoders are above chance (10 %)' in md

    no_history = copy.deepcopy(base_report)
    no_history['training'] = {'seconds': 12.0, 'split': 'x'}
    md = markdown(no_history, tmp_path)
    assert '## Training' not in md and 'measured wall-clock time 12 s' in md


def test_cli_and_module_texts_make_no_vague_time_claims():
    root = Path(__file__).resolve().parents[1] / 'timm_coded'
    for path in (root / 'demo.py', root / 'cli' / 'demo.py'):
        text = path.read_text()
        assert 'few CPU minutes' not in text and 'a few minutes' not in text, path


def test_energy_maps_scale_each_block_to_its_data_and_mark_the_codewords(base_report):
    d = copy.deepcopy(base_report)
    # energies spanning 0.39..0.60 around the uniform 0.5 (the case a shared 0..1 scale hid)
    rng = np.random.default_rng(0)
    for block, words in d['codewords'].items():
        w = np.asarray(words, dtype=float)
        uniform = w.sum(1).mean() / w.shape[1]
        e = uniform + 0.08 * (w - w.mean(1, keepdims=True)) + rng.uniform(-0.01, 0.01, w.shape)
        d['mean_energies'][block] = e.tolist()
    fig = plots.plot_energy_heatmaps(d, None)
    try:
        panels = [ax for ax in fig.axes if ax.images and ax.get_title().split(':')[0] in d['codewords']]
        assert sorted(ax.get_title().split(':')[0] for ax in panels) == sorted(d['codewords'])
        for ax in panels:
            block = ax.get_title().split(':')[0]
            e = np.asarray(d['mean_energies'][block])
            w = np.asarray(d['codewords'][block])
            norm = ax.images[0].norm
            uniform = w.sum(1).mean() / w.shape[1]
            spread = np.abs(e - uniform).max()
            assert norm.vcenter == pytest.approx(uniform)
            assert (norm.vmin, norm.vmax) == pytest.approx((uniform - spread, uniform + spread))
            assert norm.vmax - norm.vmin < 0.25  # the data's range, not 0..1
            dots = ax.collections[0].get_offsets()
            assert len(dots) == int(w.sum())
            assert {(int(r), int(c)) for c, r in dots} == set(zip(*np.nonzero(w == 1)))
            active, inactive, _ = plots.energy_contrast(d['mean_energies'][block], w)
            assert f'active {active:.2f}, inactive {inactive:.2f}' in ax.get_title()
        bars = [ax for ax in fig.axes if ax.get_ylabel() == plots.ENERGY_COLORBAR_LABEL]
        assert len(bars) == len(panels)
        assert 'mean normalised subNN energy' in plots.ENERGY_COLORBAR_LABEL and 'N_act' in plots.ENERGY_COLORBAR_LABEL
        assert 'r·E' not in plots.ENERGY_COLORBAR_LABEL
    finally:
        plt.close(fig)


def test_precision_recall_shows_chance_and_no_overlapping_labels(base_report):
    fig = plots.plot_precision_recall(base_report, None)
    try:
        ax = fig.axes[0]
        chance = [l for l in ax.lines if l.get_label().startswith('chance precision')]
        key = 'validation' if base_report['binary'][0].get('validation') else 'calibration'
        share = plots.chance_precision(base_report['binary'], key)  # positives / evaluated samples
        assert share == pytest.approx(0.1, abs=0.01)  # 9 negatives per positive (fewer for a class short of them)
        assert len(chance) == 1 and list(chance[0].get_xdata()) == pytest.approx([100 * share] * 2)
        assert [t.get_text() for t in ax.get_yticklabels()] == [b['class_name'] for b in base_report['binary']]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert non_overlapping(list(ax.texts) + list(ax.get_yticklabels()), renderer)
        # one value label per bar: precision and recall of every class
        assert len(ax.texts) == 2 * len(base_report['binary'])
    finally:
        plt.close(fig)
    exact = [{'validation': {'num_positives': 60, 'num_negatives': 540}}] * 3
    assert plots.chance_precision(exact, 'validation') == pytest.approx(0.1)


def early_exit_labels(d):
    fig = plots.plot_early_exit(d, None)
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        assert non_overlapping(ax.texts, fig.canvas.get_renderer())
        return {t.get_text(): tuple(t.xy) for t in ax.texts}
    finally:
        plt.close(fig)


def test_early_exit_points_carry_their_thresholds(base_report):
    # a trained net's curve: distinct, crowded points; every one labelled at its own point, no overlaps
    macs = [0.486, 0.49, 0.50, 0.52, 0.55, 0.60, 0.62, 0.66, 0.75, 0.81, 0.90, 0.995, 1.0]
    acc = [0.52, 0.525, 0.54, 0.56, 0.58, 0.61, 0.615, 0.63, 0.645, 0.65, 0.655, 0.66, 0.66]
    thresholds = [0.051, 0.2, 0.41, 0.46, 0.49, 0.51, 0.55, 0.60, 0.67, 0.8, 1.34, 1.78, None]
    d = {'model': SMALL, 'accuracy': 0.66,
         'early_exit': [dict(threshold=t, accuracy=a, relative_macs=m) for t, a, m in zip(thresholds, acc, macs)]}
    labels = early_exit_labels(d)
    assert len(labels) == len(thresholds)
    for t, a, m in zip(thresholds, acc, macs):
        assert labels['never' if t is None else f'{t:.3f}'] == pytest.approx((100 * m, 100 * a))

    # the pipeline's curve (an untrained net): thresholds that give the same point share one label
    labels = early_exit_labels(base_report)
    curve = base_report['early_exit']
    points = {(round(100 * p['relative_macs'], 1), round(100 * p['accuracy'], 1)) for p in curve}
    assert len(labels) == len(points) >= 2
    shown = [t for label in labels for t in label.split('–')]
    ordered = sorted(curve, key=lambda p: (p['threshold'] is None, p['threshold'] or 0.))
    assert shown.count('never') == 1
    assert f"{ordered[0]['threshold']:.3f}" in shown  # the lowest threshold is named, if only as a range end
