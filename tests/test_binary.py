"""Per-class binary classifiers: slicing invariant, sizes, rebuild/save/script, checkpoints, thresholds."""
import json
import re
import os

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_coded
from timm_coded import CheckpointMismatchError, IntegrityError, NotCodedError, UnknownClassError
from timm_coded.models.binary import (
    CodedBinaryClassifier, binary_architecture, binary_metrics, binary_model_args, calibrate_threshold,
    count_parameters, gate_to_class, load_checkpoint, parameter_share, slice_binary,
)
from conftest import assert_close_at_scale, randomised

# (model, input size) - the small CPU model and the paper's three; ImageNet at a small input
CIFAR_MODELS = ['coded_resnext17_10x2d', 'coded_resnext29_10x11d', 'coded_resnext29_20x6d']
IMAGENET = 'coded_resnext50_32x4d'


def assert_binary_matches_gated_parent(parent, classes, x):
    worst = 0.
    with torch.no_grad():
        for k in classes:
            binary = slice_binary(parent, k)
            with gate_to_class(parent, k):
                expected = parent(x)[:, k]
            got = binary(x)
            assert got.shape == (x.shape[0], 1)
            assert binary.class_index == k
            worst = max(worst, float((got[:, 0] - expected).abs().max()))
            assert_close_at_scale(got[:, 0], expected)
    return worst


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_sliced_logit_equals_gated_parent_for_every_class(name):
    parent = randomised(name)
    x = torch.randn(2, 3, 16, 16)  # the invariant does not depend on the input size; 16 px is 4x cheaper
    assert_binary_matches_gated_parent(parent, range(parent.num_classes), x)
    # the gate really changes the logit (else the comparison above would prove nothing)
    with torch.no_grad(), gate_to_class(parent, 3):
        gated = parent(x)[:, 3]
    with torch.no_grad():
        assert (parent(x)[:, 3] - gated).abs().max() > 1e-2


def covering_classes(model):
    """Classes such that every subNN of every coded stage is active for one of them and inactive
    for another (plus the first and last class): exercises every channel slice of the model."""
    chosen = {0, model.num_classes - 1}
    for scheme in model.schemes:
        if scheme is None or scheme.is_uncoded:
            continue
        words = scheme.codewords
        for n in range(scheme.num_subnns):
            for value in (True, False):
                if not any(words[k, n] == value for k in chosen):
                    chosen.add(int(np.flatnonzero(words[:, n] == value)[0]))
    return sorted(chosen)


def test_imagenet_sliced_logit_equals_gated_parent():
    """Every class when TIMM_CODED_FULL_TESTS=1 (about 2 min here); by default a set of classes
    that uses every subNN of every coded stage both as active and as inactive."""
    parent = randomised(IMAGENET)
    classes = range(parent.num_classes) if os.environ.get('TIMM_CODED_FULL_TESTS') else covering_classes(parent)
    assert len(classes) >= 8
    worst = assert_binary_matches_gated_parent(parent, classes, torch.randn(1, 3, 64, 64))
    assert worst <= 1e-5


@pytest.mark.parametrize('name,share', [
    ('coded_resnext29_10x11d', 0.463), ('coded_resnext29_20x6d', 0.374), ('coded_resnext50_32x4d', 0.416),
])
def test_parameter_share_is_the_exact_count(name, share):
    """DESIGN.md's exact count of what the masking keeps (the paper's 38/27/35 % also scale the
    shared skip convs by r; see docs/binary_classifiers.md)."""
    parent = timm.create_model(name, device='meta')
    for k in (0, parent.num_classes - 1):
        args = binary_model_args(parent, k)
        binary = timm.create_model(binary_architecture(name), device='meta', **args)
        assert round(parameter_share(binary, parent), 3) == share
        # all coded stages keep exactly N_act subNNs of width d; nothing else shrinks but the fc
        kept = sum(p.numel() for n, p in binary.named_parameters() if not n.startswith('fc'))
        assert count_parameters(binary) == kept + parent.num_features


def test_binary_is_a_registered_timm_model_rebuilt_from_json_args(tmp_path):
    parent = randomised('coded_resnext17_10x2d')
    binary = slice_binary(parent, 'cat', threshold=0.25)
    assert isinstance(binary, CodedBinaryClassifier) and binary.class_name == 'cat' and binary.class_index == 3
    args = binary._model_args
    assert json.loads(json.dumps(args)) == args
    assert args['parent_architecture'] == 'coded_resnext17_10x2d' and args['threshold'] == 0.25
    assert args['present_subnns'][0] is None
    assert args['present_subnns'][1:] == [list(s.active_subnns(3)) for s in parent.schemes[1:]]
    assert binary_architecture('coded_resnext17_10x2d') in timm.list_models('coded_*_binary')
    # the default class path of the registered entrypoint is the built-in scheme's
    default = timm.create_model('coded_resnext17_10x2d_binary', class_index=3, device='meta')
    assert [b.present_subnns for b in default.modules() if hasattr(b, 'present_subnns')] == \
        [b.present_subnns for b in binary.modules() if hasattr(b, 'present_subnns')]

    rebuilt = timm.create_model(binary_architecture('coded_resnext17_10x2d'), **args)
    rebuilt.load_state_dict(binary.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), binary(x))
        assert torch.equal(binary.predict(x), binary(x)[:, 0] >= 0.25)

    # timm's own export / local-dir loader round-trips it, threshold included
    timm.models.save_for_hf(binary, tmp_path / 'cat', safe_serialization=True)
    config = json.loads((tmp_path / 'cat' / 'config.json').read_text())
    assert config['architecture'] == 'coded_resnext17_10x2d_binary' and config['num_classes'] == 1
    assert config['model_args']['threshold'] == 0.25 and config['model_args']['class_name'] == 'cat'
    loaded = timm.create_model(f'local-dir:{tmp_path / "cat"}', pretrained=True).eval()
    assert loaded.threshold == 0.25 and loaded.class_index == 3
    with torch.no_grad():
        assert torch.equal(loaded(x), binary(x))


def test_binary_is_torchscriptable_and_smaller_on_cpu_memory():
    parent = randomised('coded_resnext17_10x2d')
    binary = slice_binary(parent, 7)
    scripted = torch.jit.script(binary)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), binary(x), atol=1e-6)
    assert count_parameters(binary) < 0.6 * count_parameters(parent)


def test_slicing_keeps_device_dtype_and_mode_and_does_not_share_storage():
    parent = randomised('coded_resnext17_10x2d').double().train()
    binary = slice_binary(parent, 0)
    assert binary.training and next(binary.parameters()).dtype == torch.float64
    with torch.no_grad():
        binary.conv1.weight.add_(1.)
    assert not torch.equal(binary.conv1.weight, parent.conv1.weight)
    assert torch.equal(binary.layer3[0].subnn_gate, torch.ones(3, dtype=torch.float64))


def test_slicing_errors_are_clear():
    with pytest.raises(NotCodedError, match='no coded block'):
        slice_binary(timm.create_model('coded_resnext17_10x2d', coded=False), 0)
    model = timm.create_model('coded_resnext17_10x2d')
    with pytest.raises(UnknownClassError, match="unknown class name 'unicorn'.*airplane"):
        slice_binary(model, 'unicorn')
    with pytest.raises(UnknownClassError, match='out of range'):
        slice_binary(model, 10)
    with pytest.raises(timm_coded.TimmCodedError, match='already a binary classifier'):
        slice_binary(slice_binary(model, 0), 0)


def test_load_checkpoint_formats_and_mismatch_errors(tmp_path):
    model = randomised('coded_resnext17_10x2d')
    state = model.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)

    save_file(state, tmp_path / 'w.safetensors')
    # timm train.py checkpoints: 'state_dict' (+ 'state_dict_ema'), DDP 'module.' prefixes, extra keys
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({'epoch': 3, 'arch': 'coded_resnext17_10x2d', 'state_dict': {f'module.{k}': v for k, v in state.items()},
                'state_dict_ema': ema, 'optimizer': {}}, tmp_path / 'train.pth.tar')
    for path in (tmp_path / 'w.safetensors', tmp_path / 'train.pth.tar'):
        loaded = load_checkpoint('coded_resnext17_10x2d', path)
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)
    with_ema = load_checkpoint('coded_resnext17_10x2d', tmp_path / 'train.pth.tar', use_ema=True)
    assert torch.equal(with_ema.conv1.weight, state['conv1.weight'] + 1)

    # another architecture: says which keys and shapes differ, and what the checkpoint looks like
    other = timm.create_model('coded_resnext29_10x11d').state_dict()
    save_file(other, tmp_path / 'cifar10.safetensors')
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint('coded_resnext17_10x2d', tmp_path / 'cifar10.safetensors')
    message = str(err.value)
    assert re.search(r'72 unexpected keys \(layer1\.1\.', message), message
    assert 'shape mismatches' in message and 'conv1.weight (64, 3, 3, 3) vs (32, 3, 3, 3)' in message
    assert 'looks like a coded_resnext29_10x11d checkpoint' in message
    smaller = dict(state)
    del smaller['fc.weight']
    save_file(smaller, tmp_path / 'headless.safetensors')
    with pytest.raises(CheckpointMismatchError, match=r'1 missing keys \(fc.weight\)'):
        load_checkpoint('coded_resnext17_10x2d', tmp_path / 'headless.safetensors')

    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(IntegrityError, match='cannot read checkpoint'):
        load_checkpoint('coded_resnext17_10x2d', tmp_path / 'junk.pth')
    with pytest.raises(FileNotFoundError):
        load_checkpoint('coded_resnext17_10x2d', tmp_path / 'missing.pth')
    with pytest.raises(timm_coded.TimmCodedError, match="unknown model 'coded_nope'"):
        load_checkpoint('coded_nope', tmp_path / 'w.safetensors')


def brute_force_best_f1(scores, labels):
    best = -1.
    for t in np.unique(scores):
        pred = scores >= t
        tp = (pred & labels).sum()
        f1 = 2 * tp / (pred.sum() + labels.sum())
        best = max(best, f1)
    return best


def test_calibrated_threshold_maximises_f1():
    # hand example: positives 0.9, 0.8, 0.3; negatives 0.7, 0.2, 0.1
    # cut after 0.8 -> P=1 R=2/3 F1=0.8; after 0.3 -> P=3/4 R=1 F1=0.857 (best); threshold halfway to 0.2
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert calibrate_threshold(scores, labels) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    for trial in range(20):
        labels = rng.random(300) < 0.1
        scores = rng.normal(size=300) + 2 * labels
        scores[:20] = np.round(scores[:20])  # ties
        threshold = calibrate_threshold(torch.tensor(scores), torch.tensor(labels))
        pred = scores >= threshold
        f1 = 2 * (pred & labels).sum() / (pred.sum() + labels.sum())
        assert f1 == pytest.approx(brute_force_best_f1(scores, labels))
    with pytest.raises(ValueError, match='no positive'):
        calibrate_threshold([0.1, 0.2], [0, 0])


def test_binary_metrics_sample_nine_negatives_per_positive():
    positives = np.array([2., 2., 2., -1.])          # 3 of 4 above 0: recall 0.75
    negatives = np.concatenate([np.full(18, 1.), np.full(982, -1.)])  # 1.8 % above 0
    logits = np.concatenate([positives, negatives])
    labels = np.arange(logits.size) < 4
    m = binary_metrics(logits, labels, threshold=0., seed=1)
    assert m.num_positives == 4 and m.num_negatives == 36 and m.recall == 0.75
    assert m.precision == 3 / (3 + m.false_positives) and m.f1 == pytest.approx(
        2 * m.precision * m.recall / (m.precision + m.recall))
    # averaged over seeds, the sampled false positives match 1.8 % of 36 negatives
    fps = [binary_metrics(logits, labels, 0., seed=s).false_positives for s in range(300)]
    assert np.mean(fps) == pytest.approx(36 * 0.018, rel=0.15)
    everything = binary_metrics(logits, labels, 0., negatives_per_positive=None)
    assert everything.num_negatives == 1000 and everything.false_positives == 18
    assert everything.precision == pytest.approx(3 / 21)
    few = binary_metrics(logits[:10], labels[:10], 0.)  # 6 negatives < 36: all of them
    assert few.num_negatives == 6
