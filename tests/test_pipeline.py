"""The one export flow (pipeline.py) that the CLI, the demo and scripts/ship_weights.py share."""
import json

import pytest
import torch

from timm_coded.errors import DataError, TimmCodedError
from timm_coded.hub import read_export
from timm_coded.models.binary import gate_to_class
from timm_coded.pipeline import calibration_data, export_model, extract_binary_classifiers
from conftest import assert_close_at_scale, randomised


def test_calibration_data_defaults_to_the_shipped_sample_only_for_cifar10_classes():
    model = randomised()
    data = calibration_data(model, batch_size=200)
    assert 'CIFAR-10 sample shipped' in data.source and data.validation is not None and data.notes == []
    images, labels = next(iter(data.calibration))
    assert images.shape[1:] == (3, 32, 32) and labels.max() < 10
    other = randomised(num_classes=5)
    with pytest.raises(DataError, match='coded_x does not have the CIFAR-10 classes.*--data-dir'):
        calibration_data(other, model_name='coded_x')


def test_export_model_writes_the_full_model_and_exact_binaries(tmp_path):
    model = randomised()
    data = calibration_data(model, batch_size=300)
    folders = export_model(model, tmp_path, architecture='coded_resnext17_10x2d',
                           card={'repo_id': 'acme/toy', 'tag': 'toy'}, classes=['cat'], data=data)
    assert [f.relative_to(tmp_path).as_posix() for f in folders] == ['full', 'binary/cat']
    full, cat = read_export(folders[0]), read_export(folders[1])
    assert full.architecture == 'coded_resnext17_10x2d' and cat.architecture == 'coded_resnext17_10x2d_binary'
    config = json.loads((folders[1] / 'config.json').read_text())
    assert config['label_names'] == ['cat']
    # the exported binary is the full model with the other subNNs removed, read back from its files
    import timm
    binary = timm.create_model('coded_resnext17_10x2d_binary', pretrained=True,
                               pretrained_cfg_overlay={'file': str(folders[1] / 'model.safetensors')},
                               **config['model_args']).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), gate_to_class(model, 3):
        expected = model(x)[:, 3]
    with torch.no_grad():
        assert_close_at_scale(binary(x)[:, 0], expected)


def test_export_model_without_classes_needs_no_data(tmp_path):
    folders = export_model(randomised(), tmp_path, architecture='coded_resnext17_10x2d',
                           card={'repo_id': 'acme/toy', 'tag': 'toy'}, classes='none')
    assert [f.name for f in folders] == ['full']


def test_export_model_never_writes_into_a_folder_that_holds_files(tmp_path):
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'notes.txt').write_text('precious')
    with pytest.raises(TimmCodedError, match='already exists and is not an empty folder'):
        export_model(randomised(), tmp_path, architecture='coded_resnext17_10x2d',
                     card={'repo_id': 'acme/toy', 'tag': 'toy'}, classes='none')
    assert (tmp_path / 'full' / 'notes.txt').read_text() == 'precious'


def test_an_export_whose_final_move_fails_puts_the_previous_one_back(tmp_path, monkeypatch):
    import os

    from timm_coded.hub import export_artifact
    from timm_coded.hub.export import sha256_file

    card = {'repo_id': 'acme/toy', 'tag': 'toy'}
    model = randomised()
    folder = export_artifact(model, tmp_path / 'full', architecture='coded_resnext17_10x2d', model_args={},
                             label_names=model.class_names, card=card)
    before = sha256_file(folder / 'model.safetensors')
    real_replace = os.replace

    def refuse_the_new_folder(src, dst):
        if str(src).endswith('.tmp'):
            raise OSError('no space left')
        return real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', refuse_the_new_folder)
    with pytest.raises(OSError, match='no space left'):
        export_artifact(randomised(seed=1), folder, architecture='coded_resnext17_10x2d', model_args={},
                        label_names=model.class_names, card=card, overwrite=True)
    monkeypatch.undo()
    assert sha256_file(folder / 'model.safetensors') == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['full']  # no staging or trash folder left


def test_class_names_become_valid_pretrained_tags(tmp_path):
    """'T-shirt' or 'St. Bernard' end tags in [a-z0-9_], as timm and the manifest require."""
    import shutil

    from timm_coded.data import sample_data_dir

    names = ['T-shirt', 'St. Bernard'] + [f'class {k}' for k in range(2, 10)]
    model = randomised(class_names=names)
    for split, count in (('train', 3), ('val', 2)):
        for name, folder in zip(names, sorted((sample_data_dir() / split).iterdir())):
            (tmp_path / 'images' / split / name).mkdir(parents=True)
            for source in sorted(folder.iterdir())[:count]:
                shutil.copyfile(source, tmp_path / 'images' / split / name / source.name)
    data = calibration_data(model, tmp_path / 'images', batch_size=40)
    with pytest.raises(TimmCodedError, match=r"card tag 'Toy-1' must match \[a-z0-9\]"):  # before calibrating
        extract_binary_classifiers(model, names[:2], tmp_path / 'bad', data.calibration,
                                   hub_card={'repo_id': 'acme/toy', 'tag': 'Toy-1'})
    assert not (tmp_path / 'bad').exists()
    folders = export_model(model, tmp_path / 'out', architecture='coded_resnext17_10x2d',
                           card={'repo_id': 'acme/toy', 'tag': 'toy'}, classes=names[:2], data=data)
    assert [read_export(f).name for f in folders[1:]] == [
        'coded_resnext17_10x2d_binary.toy_t_shirt', 'coded_resnext17_10x2d_binary.toy_st_bernard']
    assert [f.name for f in folders[1:]] == ['T-shirt', 'St._Bernard']
