"""The README's main job (`timm-coded demo`) end to end, on a small slice of the shipped sample."""
import json

import timm
import torch

from timm_coded.binary import gate_to_class
from timm_coded.cli import main
from timm_coded.hub import read_export


def test_demo_trains_evaluates_slices_and_reports(tmp_path, capsys):
    out = tmp_path / 'demo'
    assert main(['demo', '--epochs', '1', '--limit-per-class', '12', '--out', str(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert 'top-1 accuracy' in printed and 'early decoding accuracy' in printed

    report = json.loads((out / 'report.json').read_text())
    assert report['model'] == 'coded_resnext17_10x2d' and report['num_samples'] == 120
    assert set(report['early_decoding']) == {'layer2.0', 'layer2.1', 'layer3.0', 'layer3.1', 'classifier'}
    assert len(report['binary']) == 10 and report['training']['epochs'] == 1
    assert {p.name for p in (out / 'figures').iterdir()} >= {'early_decoding.png', 'energies.png'}
    readme = (out / 'README.md').read_text()
    assert 'What these numbers mean' in readme and '](figures/early_decoding.png)' in readme

    # every class folder is a Hub-ready artifact that timm rebuilds and that equals the gated parent
    parent = timm.create_model('coded_resnext17_10x2d', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(out / 'checkpoint' / 'model.safetensors'))).eval()
    x = torch.randn(2, 3, 32, 32)
    for k, name in enumerate(parent.class_names):
        export = read_export(out / 'binary_classifiers' / name)
        assert export.meta['binary']['class_name'] == name
        binary = timm.create_model(f'local-dir:{out / "binary_classifiers" / name}', pretrained=True).eval()
        with torch.no_grad(), gate_to_class(parent, k):
            expected = parent(x)[:, k]
        torch.testing.assert_close(binary(x)[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_demo_refuses_to_overwrite_and_names_the_problem(tmp_path, capsys):
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    assert main(['demo', '--epochs', '1', '--limit-per-class', '2', '--out', str(out), '--no-progress']) == 2
    assert 'already exists' in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ['keep.txt']


def test_demo_rejects_a_data_folder_without_the_models_classes(tmp_path, capsys):
    from PIL import Image
    for cls in ('apple', 'pear'):
        (tmp_path / 'data' / cls).mkdir(parents=True)
        for i in range(3):
            Image.new('RGB', (32, 32)).save(tmp_path / 'data' / cls / f'{i}.jpg')
    rc = main(['demo', '--epochs', '1', '--data-dir', str(tmp_path / 'data'), '--out', str(tmp_path / 'o'),
               '--no-progress'])
    assert rc == 2
    assert 'airplane' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_demo_replaces_its_own_previous_output(tmp_path):
    out = tmp_path / 'coded-demo'
    (out / 'checkpoint').mkdir(parents=True)
    (out / 'report.json').write_text('{}')
    (out / 'stale.txt').write_text('from an older run')
    assert main(['demo', '--epochs', '1', '--limit-per-class', '7', '--batch-size', '32', '--out', str(out),
                 '--no-progress']) == 0
    assert not (out / 'stale.txt').exists()
    assert json.loads((out / 'report.json').read_text())['num_samples'] == 70
