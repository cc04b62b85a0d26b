"""`timm-coded extract` and `timm-coded evaluate` end to end on the small model (random weights)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from timm_coded.models.binary import gate_to_class
from timm_coded.cli import main
from timm_coded._io import OUTPUTS_RECORD
from conftest import assert_close_at_scale

SMALL = 'coded_resnext17_10x2d'
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def random_model(name=SMALL, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'small.safetensors'
    save_file(random_model().state_dict(), path)
    return path


def write_images(folder: Path, per_class: int, seed: int, classes=CLASSES):
    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / c / f'{i}.png')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_images(root / 'train', 3, seed=0)
    write_images(root / 'val', 2, seed=1)
    return root


@pytest.fixture(scope='module')
def ood_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('ood')
    write_images(root, 3, seed=2, classes=('apple', 'bee'))
    return root


def run_cli(*args):
    return main([str(a) for a in args])


def test_extract_writes_one_loadable_folder_per_class(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / 'binaries'
    assert run_cli('extract', checkpoint, '--model', SMALL, '--classes', 'cat,1', '--data-dir', data_dir,
                   '--out', out, '--batch-size', 16) == 0
    assert sorted(p.name for p in out.iterdir()) == [OUTPUTS_RECORD, 'automobile', 'cat']
    captured = capsys.readouterr()
    assert 'cat: threshold' in captured.out
    assert 'it/s' not in captured.err and '\r' not in captured.err  # no progress bars into a redirected log
    parent = random_model()
    x = torch.randn(4, 3, 32, 32)
    for name, index in (('cat', 3), ('automobile', 1)):
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'metrics.json', 'model.safetensors']
        config = json.loads((folder / 'config.json').read_text())
        metrics = json.loads((folder / 'metrics.json').read_text())
        assert config['architecture'] == f'{SMALL}_binary' and config['label_names'] == [name]
        assert config['model_args']['class_index'] == index
        assert config['model_args']['threshold'] == metrics['threshold']
        assert metrics['parent_checkpoint']['sha256'] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        assert metrics['calibration']['num_positives'] == 3 and metrics['calibration']['num_negatives'] == 27
        assert metrics['validation']['num_positives'] == 2 and metrics['validation']['num_negatives'] == 18
        assert 0.5 < metrics['parameter_share'] < 0.6
        assert 'training split' in metrics['threshold_rule']
        # timm alone rebuilds it from the folder, and it is the gated parent's logit
        binary = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        assert binary.threshold == metrics['threshold']
        with torch.no_grad(), gate_to_class(parent, index):
            assert_close_at_scale(binary(x)[:, 0], parent(x)[:, index])


def test_extract_defaults_to_the_shipped_sample(checkpoint, tmp_path):
    out = tmp_path / 'b'
    assert run_cli('extract', checkpoint, '--model', SMALL, '--classes', 'frog', '--out', out,
                   '--batch-size', 250) == 0
    metrics = json.loads((out / 'frog' / 'metrics.json').read_text())
    assert 'shipped' in metrics['threshold_rule']
    assert metrics['calibration']['num_positives'] == 300 and metrics['validation']['num_positives'] == 60


def assert_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    # progress bars may precede it; the error itself is one line
    errors = [line for line in err.replace('\r', '\n').splitlines() if ': error: ' in line]
    assert len(errors) == 1 and errors[0].startswith('timm-coded '), err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_extract_bad_input_gives_one_line_and_writes_nothing(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / 'deep' / 'out'
    base = ['extract', checkpoint, '--model', SMALL, '--data-dir', data_dir, '--out', out]
    assert_error(capsys, run_cli(*base, '--classes', 'unicorn'), "unknown class name 'unicorn'")
    # another architecture's checkpoint
    other = tmp_path / 'other.safetensors'
    save_file(timm.create_model('coded_resnext29_10x11d').state_dict(), other)
    assert_error(capsys, run_cli('extract', other, '--model', SMALL, '--out', out), 'does not fit',
                 'shape mismatches', 'coded_resnext29_10x11d')
    # a model without coded blocks (a plain timm ResNet here)
    plain = tmp_path / 'plain.safetensors'
    save_file(timm.create_model('resnet10t').state_dict(), plain)
    assert_error(capsys, run_cli('extract', plain, '--model', 'resnet10t', '--out', out), 'no coded block')
    # empty / missing image folders
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert_error(capsys, run_cli(*base[:4], '--data-dir', empty, '--out', out), 'is empty')
    assert_error(capsys, run_cli(*base[:4], '--data-dir', tmp_path / 'nope', '--out', out), 'does not exist')
    assert not (tmp_path / 'deep').exists()

    # an image that breaks half-way through (in val/, read after calibration): nothing is left
    broken = tmp_path / 'broken'
    write_images(broken / 'train', 2, seed=0)
    write_images(broken / 'val', 1, seed=0)
    (broken / 'val' / 'truck' / '0.png').write_bytes(b'not a png')
    assert_error(capsys, run_cli(*base[:4], '--data-dir', broken, '--out', out, '--classes', 'all'),
                 'cannot read image')
    assert not (tmp_path / 'deep').exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []

    # a file the user put where a classifier goes is never replaced, not even with --overwrite
    (out / 'cat').mkdir(parents=True)
    (out / 'cat' / 'model.safetensors').write_text('mine')
    for flags in ((), ('--overwrite',)):
        assert_error(capsys, run_cli(*base, '--classes', 'cat', *flags),
                     'already holds cat/model.safetensors, not written by timm-coded')
    assert (out / 'cat' / 'model.safetensors').read_text() == 'mine'
    (out / 'cat' / 'model.safetensors').unlink()
    assert run_cli(*base, '--classes', 'cat') == 0  # an empty folder: nothing to lose
    # its own earlier output is replaced only with --overwrite
    assert_error(capsys, run_cli(*base, '--classes', 'cat'), 'already holds cat/config.json')
    assert run_cli(*base, '--classes', 'cat', '--overwrite') == 0
    assert (out / 'cat' / 'model.safetensors').is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ['out']


def test_evaluate_prints_and_writes_report_and_figures(checkpoint, data_dir, ood_dir, tmp_path, capsys):
    out = tmp_path / 'report'
    assert run_cli('evaluate', checkpoint, '--model', SMALL, '--data-dir', data_dir, '--ood-dir', ood_dir,
                   '--out', out, '--draws', 1, '--batch-size', 32) == 0
    printed = capsys.readouterr().out
    assert f'{SMALL}: top-1 accuracy' in printed and 'early decoding accuracy' in printed
    assert 'specialization at layer2.1' in printed and 'early exit' in printed
    assert sorted(p.name for p in out.iterdir()) == sorted([
        OUTPUTS_RECORD, 'report.json', 'precision_recall.png', 'early_decoding.png', 'energies.png', 'specialization.png',
        'early_exit.png'])
    report = json.loads((out / 'report.json').read_text())
    assert report['num_samples'] == 20 and len(report['binary']) == 10
    cat = report['binary'][3]
    assert cat['class_name'] == 'cat' and cat['calibration']['num_positives'] == 3
    assert cat['validation']['num_positives'] == 2 and cat['ood']['num_negatives'] == 6  # all 6 OOD images
    assert set(report['early_decoding']) == {'layer2.0', 'layer2.1', 'layer3.0', 'layer3.1', 'classifier'}
    assert report['specialization']['block'] == 'layer2.1' and report['specialization']['draws'] == 1
    for png in out.glob('*.png'):
        assert png.read_bytes()[:4] == b'\x89PNG'

    # a second run does not overwrite without --overwrite
    code = run_cli('evaluate', checkpoint, '--model', SMALL, '--data-dir', data_dir, '--out', out, '--draws', 0,
                   '--no-binary')
    assert_error(capsys, code, 'already holds report.json, precision_recall.png, early_decoding.png and 3 more from an earlier run; pass --overwrite')


def test_evaluate_bad_folders(checkpoint, data_dir, tmp_path, capsys):
    empty_ood = tmp_path / 'ood'
    empty_ood.mkdir()
    (empty_ood / 'notes.txt').write_text('no images here')
    out = tmp_path / 'r'
    assert_error(capsys, run_cli('evaluate', checkpoint, '--model', SMALL, '--data-dir', data_dir,
                                 '--ood-dir', empty_ood, '--out', out), 'no images in')
    assert not out.exists()
    wrong = tmp_path / 'wrong'
    write_images(wrong / 'val', 1, seed=0, classes=('apple', 'bee'))
    assert_error(capsys, run_cli('evaluate', checkpoint, '--model', SMALL, '--data-dir', wrong, '--out', out),
                 'missing airplane')
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_extract_hub_ready_folders_for_publish(checkpoint, data_dir, tmp_path, capsys):
    from timm_coded.hub import read_export

    out = tmp_path / 'hub'
    assert run_cli('extract', checkpoint, '--model', SMALL, '--classes', 'cat', '--data-dir', data_dir, '--out', out,
                   '--repo', 'org/cifar10-small', '--tag', 'cifar10') == 0
    artifact = read_export(out / 'cat')  # exactly config.json, model.safetensors, README.md
    assert artifact.architecture == f'{SMALL}_binary' and artifact.branch == 'binary-cat'
    assert artifact.meta['binary']['class_index'] == 3
    assert artifact.meta['binary']['threshold'] == artifact.config['model_args']['threshold']
    assert artifact.meta['parent']['artifact'] == f'{SMALL}.cifar10'
    assert_error(capsys, run_cli('extract', checkpoint, '--model', SMALL, '--out', tmp_path / 'x', '--repo', 'a/b'),
                 '--repo and --tag go together')


def test_extracted_folders_and_weights_follow_the_umask(checkpoint, data_dir, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        assert run_cli('extract', checkpoint, '--model', SMALL, '--classes', 'cat', '--data-dir', data_dir,
                       '--out', tmp_path / 'out', '--repo', 'me/x', '--tag', 'c10', '--batch-size', 16) == 0
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob('*')}
    assert modes['out'] == modes['out/cat'] == 0o755  # not mkdtemp's 0700
    assert modes['out/cat/model.safetensors'] == modes['out/cat/config.json'] == 0o644  # not 0600


def test_extract_subset_writes_one_exact_classifier(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / 'subsets'
    assert run_cli('extract', checkpoint, '--model', SMALL, '--subset', 'vehicles',
                   '--classes', 'airplane,automobile,ship,truck', '--data-dir', data_dir, '--out', out) == 0
    printed = capsys.readouterr().out
    assert 'vehicles' in printed and 'of the parameters' in printed and 'top-1 within the subset' in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == ['vehicles']
    metrics = json.loads((out / 'vehicles' / 'metrics.json').read_text())
    assert metrics['class_indices'] == [0, 1, 8, 9] and metrics['validation'] is not None
    assert 0 < metrics['parameter_share'] < 1
    subset = timm.create_model('local-dir:' + str(out / 'vehicles'), pretrained=True).eval()
    assert subset.threshold == pytest.approx(metrics['threshold'])
    parent = random_model()
    from timm_coded.models.binary import gate_to_classes
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), gate_to_classes(parent, [0, 1, 8, 9]):
        expected = parent(x)[:, [0, 1, 8, 9]]
    with torch.no_grad():
        assert_close_at_scale(subset(x), expected)


def test_extract_subset_bad_input_gives_one_line_and_writes_nothing(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / 'subsets'
    for extra, fragment in ((['--classes', 'cat'], 'at least two classes'),
                            ([], '--subset needs --classes'),
                            (['--classes', 'cat,unicorn'], 'unicorn')):
        code = run_cli('extract', checkpoint, '--model', SMALL, '--subset', 'pets', *extra, '--data-dir', data_dir,
                       '--out', out)
        assert_error(capsys, code, fragment)
    code = run_cli('extract', checkpoint, '--model', SMALL, '--subset', 'Pets!', '--classes', 'cat,dog',
                   '--out', out)
    assert_error(capsys, code, 'subset name')
    assert not out.exists()
