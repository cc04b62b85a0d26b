"""Early decoding, early exit (really skipping compute), MAC counts, specialization, evaluation data."""
import math

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from timm_coded import NotCodedError, TimmCodedError
from timm_coded.analysis.decoding import (
    collect_outputs, count_macs, decoder_blocks, default_specialization_block, early_decoding_accuracy,
    early_exit_predict, early_predictions, network_blocks, simulate_early_exit, specialization_curve,
)
from timm_coded.analysis.evaluation import evaluate, mean_energies_per_class
from timm_coded.analysis.plots import save_report_plots
from conftest import randomised

SMALL = 'coded_resnext17_10x2d'


@pytest.fixture(scope='module')
def data():
    torch.manual_seed(1)
    images = torch.randn(48, 3, 16, 16)
    targets = torch.arange(48) % 10
    return DataLoader(TensorDataset(images, targets), batch_size=20)


def nearest_codeword_reference(energies, codewords, num_active):
    """The paper's decoder written out: rescale energies to sum to N_act, argmin Euclidean distance."""
    v = energies.double() / energies.double().sum(1, keepdim=True) * num_active
    distances = ((v[:, None, :] - codewords.double()[None]) ** 2).sum(-1).sqrt()
    return distances.argmin(1)


def test_early_decoding_accuracy_is_the_nearest_codeword_decoder(data):
    model = randomised()
    outputs = collect_outputs(model, data)
    assert outputs.num_samples == 48 and outputs.logits.shape == (48, 10)
    names = [n for n, _ in decoder_blocks(model)]
    assert names == ['layer2.0', 'layer2.1', 'layer3.0', 'layer3.1'] == list(outputs.energies)
    acc = early_decoding_accuracy(model, outputs)
    assert list(acc) == names + ['classifier']
    for name, block in decoder_blocks(model):
        pred = nearest_codeword_reference(outputs.energies[name], block.codewords, block.num_active)
        assert acc[name] == pytest.approx(float((pred == outputs.targets).float().mean()))
    assert acc['classifier'] == pytest.approx(float((outputs.logits.argmax(1) == outputs.targets).float().mean()))
    # per-class mean energies: r * E_bar, a (K, N) table whose rows sum to N_act
    means = mean_energies_per_class(model, outputs)
    assert means['layer2.0'].shape == (10, 10)
    assert np.allclose(means['layer2.0'].sum(1), 5, atol=1e-4)
    assert np.allclose(means['layer3.1'].sum(1), 3, atol=1e-4)


def test_mac_counts_match_torch_flop_counter():
    model = randomised('coded_resnext29_10x11d')
    macs = count_macs(model)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    # the flop counter also counts the energies' bmm/einsum; convs + the fc (a plain mm) are ours
    counts = {str(op): v for op, v in counter.get_flop_counts()['Global'].items()}
    conv_only = sum(v for op, v in counts.items() if 'convolution' in op)
    fc_only = counts.get('aten.mm', 0) + counts.get('aten.addmm', 0)
    assert macs.total - macs.head == conv_only // 2
    assert macs.head == 1024 * 10 == fc_only // 2
    # one coded bottleneck by hand: layer3.1 (16 -> 8 px... stays 8x8), width 10 x 44 = 440
    hw = 8 * 8
    assert macs.blocks['layer3.1'] == hw * (1024 * 440 + 440 * 44 * 9 + 440 * 1024)
    assert macs.up_to('layer2.2') == macs.stem + sum(macs.blocks[n] for n in list(macs.blocks)[:6])


def test_early_exit_skips_compute_and_matches_the_simulation(data):
    model = randomised()
    images = torch.cat([x for x, _ in data])
    targets = torch.cat([y for _, y in data])
    outputs = collect_outputs(model, data)
    macs = count_macs(model, images.shape[1:])
    margins = torch.cat([m for _, m in early_predictions(model, outputs).values()])
    thresholds = [0., float(margins.median()), float(margins.quantile(0.9)), math.inf]
    curve = simulate_early_exit(model, outputs, thresholds, macs)

    seen = {name: 0 for name, _ in network_blocks(model)}
    hooks = [b.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, seen[name] + a[0].shape[0]))
             for name, b in network_blocks(model)]
    try:
        for threshold, point in zip(thresholds, curve):
            for k in seen:
                seen[k] = 0
            out = early_exit_predict(model, images, threshold, macs=macs)
            accuracy = float((out.predictions == targets).float().mean())
            assert accuracy == pytest.approx(point.accuracy)
            assert float(out.macs.mean()) == pytest.approx(point.mean_macs)
            exits = torch.bincount(out.exit_index, minlength=len(out.exit_names)).float() / len(targets)
            assert exits.tolist() == pytest.approx(list(point.exit_fractions.values()))
            # each block ran only on the samples that had not left before it
            blocks = [n for n, _ in network_blocks(model)]
            for i, name in enumerate(blocks):
                earlier_exits = [j for j, e in enumerate(out.exit_names[:-1]) if blocks.index(e) < i]
                still_in = int((~torch.isin(out.exit_index, torch.tensor(earlier_exits, dtype=torch.long))).sum())
                assert seen[name] == still_in, (threshold, name)
    finally:
        for h in hooks:
            h.remove()
    # never exiting = the plain classifier at full cost; threshold 0 = everyone leaves at the first decoder
    never = early_exit_predict(model, images, math.inf, macs=macs)
    with torch.no_grad():
        assert torch.equal(never.predictions, model(images).argmax(1))
    assert torch.all(never.macs == macs.total) and curve[-1].relative_macs == 1.
    eager = early_exit_predict(model, images, 0., macs=macs)
    assert torch.all(eager.exit_index == 0) and torch.all(eager.macs == macs.up_to('layer2.0'))
    assert curve[0].relative_macs == pytest.approx(macs.up_to('layer2.0') / macs.total)
    with pytest.raises(TimmCodedError, match='no early decoder at layer1.0'):
        early_exit_predict(model, images, 0., exit_blocks=['layer1.0'])


def test_specialization_uses_the_gate_per_class(data):
    model = randomised()
    block = default_specialization_block(model)
    assert block == 'layer2.1'  # last block of the first coded stage (the paper's "last of c3")
    assert default_specialization_block(timm.create_model('coded_resnext50_32x4d', device='meta')) == 'layer4.1'
    assert default_specialization_block(timm.create_model('coded_resnext29_10x11d', device='meta')) == 'layer2.2'
    curve = specialization_curve(model, data, block, ks=[0, 2, 5, 6], draws=3, seed=0)
    assert curve.num_samples == 48 and curve.ks == [0, 2, 5, 6]
    baseline = early_decoding_accuracy(model, collect_outputs(model, data))['classifier']
    assert curve.active[0] == pytest.approx([baseline] * 3) and curve.inactive[0] == pytest.approx([baseline] * 3)
    assert curve.active[3] is None and curve.inactive[3] is None  # only 5 active / 5 inactive subNNs
    assert all(0 <= a <= 1 for a in curve.active[1])

    # k = 5 inactive removes every inactive subNN of that block: compute it by hand with the gate
    target = dict(network_blocks(model))[block]
    words = target.codewords
    correct = 0
    with torch.no_grad():
        for images, labels in data:
            for x, c in zip(images, labels.tolist()):
                target.subnn_gate.copy_(words[c])
                correct += int(model(x[None]).argmax(1).item() == c)
    target.subnn_gate.fill_(1.)
    assert curve.inactive[2] == pytest.approx([correct / 48] * 3)
    # k = 5 active removes every active one: the same for every draw, computed by hand the same way,
    # and it changes the outputs
    correct, changed = 0, 0
    with torch.no_grad():
        for images, labels in data:
            for x, c in zip(images, labels.tolist()):
                untouched = model(x[None])
                target.subnn_gate.copy_(1. - words[c])
                logits = model(x[None])
                target.subnn_gate.fill_(1.)
                correct += int(logits.argmax(1).item() == c)
                changed += int(not torch.allclose(logits, untouched))
    assert curve.active[2] == pytest.approx([correct / 48] * 3) and changed == 48
    assert torch.equal(target.subnn_gate, torch.ones(10))  # gates restored


def test_decoding_needs_a_coded_model(data):
    plain = timm.create_model(SMALL, coded=False)
    with pytest.raises(NotCodedError):
        collect_outputs(plain, data)
    with pytest.raises(NotCodedError):
        specialization_curve(plain, data)


def test_evaluation_report_is_json_and_plots(data, tmp_path):
    import json

    model = randomised()
    report = evaluate(model, data, calibration_loader=data, ood_loader=data, classes='cat,0', model_name=SMALL,
                      specialization_draws=1)
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert d['model'] == SMALL and d['num_samples'] == 48
    assert [b['class_name'] for b in d['binary']] == ['cat', 'airplane']
    assert d['binary'][0]['parameter_share'] == pytest.approx(report.binary[0].parameters / sum(
        p.numel() for p in model.parameters()))
    assert d['binary'][0]['ood']['num_positives'] == 5 and d['binary'][0]['ood']['num_negatives'] == 45
    assert set(d['codewords']) == set(d['mean_energies']) == {'layer2.0', 'layer2.1', 'layer3.0', 'layer3.1'}
    assert d['early_exit'][-1]['relative_macs'] == 1.
    files = save_report_plots(d, tmp_path)
    assert sorted(p.name for p in files) == sorted(['precision_recall.png', 'early_decoding.png', 'energies.png',
                                                    'specialization.png', 'early_exit.png'])
    for f in files:
        assert f.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and f.stat().st_size > 10_000
    lines = report.summary_lines()
    assert lines[0].startswith(f'{SMALL}: top-1 accuracy') and any('specialization at layer2.1' in l for l in lines)


def test_plots_survive_rounding_and_never_lose_the_report(data, tmp_path):
    import copy
    import json

    d = evaluate(randomised(), data, calibration_loader=data, model_name=SMALL, specialization_draws=1).to_dict()
    # seven equal draws: numpy's mean - min is -1.8e-15, which made matplotlib refuse 'yerr'
    d['specialization']['active'] = [[0.123] * 7 for _ in d['specialization']['ks']]
    files = save_report_plots(copy.deepcopy(d), tmp_path / 'ok')
    assert 'specialization.png' in [f.name for f in files]
    broken = copy.deepcopy(d)
    broken['codewords'] = {'layer2.0': 'not a table'}  # a figure that cannot be drawn
    files = save_report_plots(broken, tmp_path / 'broken')
    assert 'energies.png' not in [f.name for f in files] and len(files) == 4
    assert any(n.startswith('figure energies.png could not be drawn') for n in broken['notes'])
    json.dumps(broken)


def test_progress_labels_name_the_classes_they_run():
    from timm_coded.analysis.evaluation import _class_list

    model = randomised()
    assert _class_list(model, [3, 8]) == 'cat, ship'  # not '3..8', which reads as six classes
    assert _class_list(model, list(range(10))) == 'airplane, automobile, bird, cat and 6 more'
