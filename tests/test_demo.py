"""The README's main job (`timm-coded demo`) end to end, on a small slice of the shipped sample."""
import json
from pathlib import Path

import timm
import torch

from timm_coded.models.binary import gate_to_class
from timm_coded.cli import main
from timm_coded.hub import read_export
from conftest import assert_close_at_scale


def test_demo_trains_evaluates_slices_and_reports(tmp_path, capsys):
    out = tmp_path / 'demo'
    # a previous demo's output (its record lists what it wrote) plus files the user added there
    (out / 'figures').mkdir(parents=True)
    (out / 'figures' / 'old_figure.png').write_text('written by the previous demo')
    (out / 'report.json').write_text('{}')
    (out / '.timm-coded-outputs.json').write_text('{"files": ["report.json", "figures/old_figure.png"]}')
    (out / 'my_notes.txt').write_text('mine')
    (out / 'figures' / 'my_annotated.png').write_text('mine too')
    (out / 'experiments').mkdir()
    assert main(['demo', '--epochs', '1', '--limit-per-class', '12', '--out', str(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert 'top-1 accuracy' in printed and 'early decoding accuracy' in printed

    report = json.loads((out / 'report.json').read_text())
    assert report['model'] == 'coded_resnext17_10x2d' and report['num_samples'] == 120
    # only what the previous demo wrote was replaced or removed; the user's files are all there
    assert not (out / 'figures' / 'old_figure.png').exists()
    assert (out / 'my_notes.txt').read_text() == 'mine' and (out / 'figures' / 'my_annotated.png').exists()
    assert (out / 'experiments').is_dir() and [p.name for p in tmp_path.iterdir()] == ['demo']
    assert set(report['early_decoding']) == {'layer2.0', 'layer2.1', 'layer3.0', 'layer3.1', 'classifier'}
    assert len(report['binary']) == 10 and report['training']['epochs'] == 1
    assert {p.name for p in (out / 'figures').iterdir()} >= {'early_decoding.png', 'energies.png', 'my_annotated.png'}
    readme = (out / 'README.md').read_text()
    assert 'What these numbers mean' in readme and '](figures/early_decoding.png)' in readme

    # every class folder is a Hub-ready artifact that timm rebuilds and that equals the gated parent
    parent = timm.create_model('coded_resnext17_10x2d', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(out / 'checkpoint' / 'model.safetensors'))).eval()
    x = torch.randn(2, 3, 32, 32)
    for k, name in enumerate(parent.class_names):
        export = read_export(out / 'binary_classifiers' / name)
        assert export.meta['binary']['class_name'] == name
        assert export.meta['training']['dataset'] == 'cifar10'  # the shipped sample: the demo knows the dataset
        binary = timm.create_model(f'local-dir:{out / "binary_classifiers" / name}', pretrained=True).eval()
        with torch.no_grad(), gate_to_class(parent, k):
            expected = parent(x)[:, k]
        assert_close_at_scale(binary(x)[:, 0], expected)


def test_demo_refuses_to_replace_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'report.json').write_text('the user wrote this')  # a name the demo writes, not by the demo
    assert main(['demo', '--epochs', '1', '--limit-per-class', '2', '--out', str(out), '--no-progress']) == 2
    assert 'already holds report.json, not written by timm-coded' in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ['report.json'] and list(tmp_path.iterdir()) == [out]


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


def test_demo_refuses_a_model_whose_class_count_differs_from_the_data(tmp_path, capsys):
    out = tmp_path / 'o'
    assert main(['demo', '--model', 'coded_resnext29_20x6d', '--out', str(out), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'has 10 classes' in err and 'the model (coded_resnext29_20x6d) has 100 outputs' in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_demo_cards_name_no_dataset_for_a_users_images():
    from timm_coded.demo import DemoConfig, _hub_card

    assert 'dataset' not in _hub_card(DemoConfig(data_dir=Path('my_images')))
    assert _hub_card(DemoConfig())['dataset'] == 'cifar10'
