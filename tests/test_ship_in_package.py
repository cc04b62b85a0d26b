"""Shipping exported folders into the package: all or nothing, and no classifier left behind that
was sliced from weights the package no longer has."""
import dataclasses
import os
import shutil

import pytest

import timm_coded.hub.manifest as manifest_module
from timm_coded.data import sample_data_dir
from timm_coded.errors import TimmCodedError
from timm_coded.hub import ship_in_package
from timm_coded.hub.export import sha256_file
from timm_coded.hub.manifest import HubLocation, load_manifest, save_manifest
from timm_coded.pipeline import calibration_data, export_model
from conftest import randomised


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Two exports of the same architecture and tag (full + cat + dog), from different weights."""
    out = tmp_path_factory.mktemp('exports')
    model = randomised()
    images = out / 'images'  # a few of the shipped sample's real images: calibration is not under test
    for split, count in (('train', 4), ('val', 2)):
        for folder in sorted((sample_data_dir() / split).iterdir()):
            (images / split / folder.name).mkdir(parents=True)
            for source in sorted(folder.iterdir())[:count]:
                shutil.copyfile(source, images / split / folder.name / source.name)
    data = calibration_data(model, images, batch_size=40)
    card = {'repo_id': 'acme/toy', 'tag': 'toy'}
    first = export_model(model, out / 'first', architecture='coded_resnext17_10x2d', card=card,
                         classes=['cat', 'dog'], data=data)
    second = export_model(randomised(seed=1), out / 'second', architecture='coded_resnext17_10x2d', card=card,
                          classes=['cat'], data=data)
    return first, second


@pytest.fixture
def package(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, 'PACKAGE_DIR', tmp_path / 'pkg')
    return tmp_path / 'pkg', tmp_path / 'pkg' / 'weights_manifest.json'


def state(root, manifest_path):
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob('*')) if p.is_file()}
    return files


def test_shipping_again_replaces_the_classifiers_of_the_previous_weights(exported, package):
    root, manifest_path = package
    first, second = exported
    shipped = ship_in_package(first, manifest_path=manifest_path)
    names = [a.name for a in shipped]
    assert names == ['coded_resnext17_10x2d.toy', 'coded_resnext17_10x2d_binary.toy_cat',
                     'coded_resnext17_10x2d_binary.toy_dog']
    assert load_manifest(manifest_path).names == names
    assert sorted(p.name for p in (root / 'weights').iterdir()) == sorted(names)  # no staging folder left

    ship_in_package(second, manifest_path=manifest_path)  # new weights, and only a cat classifier
    manifest = load_manifest(manifest_path)
    assert manifest.names == names[:2]  # the dog classifier of the previous weights is gone, folder too
    assert sorted(p.name for p in (root / 'weights').iterdir()) == names[:2]
    for artifact in manifest:
        assert sha256_file(artifact.location.resolve() / 'model.safetensors') == artifact.weights_file.sha256
    assert manifest.get(names[0]).weights_file.sha256 == sha256_file(second[0] / 'model.safetensors')


def test_a_failure_half_way_leaves_package_and_manifest_as_they_were(exported, package, monkeypatch):
    root, manifest_path = package
    first, second = exported
    ship_in_package(first, manifest_path=manifest_path)
    before = state(root, manifest_path)

    def fail_on_save(*args, **kwargs):  # every folder is swapped in by now; the manifest write fails
        raise OSError('disk full')
    monkeypatch.setattr(manifest_module, 'save_manifest', fail_on_save)
    with pytest.raises(OSError, match='disk full'):
        ship_in_package(second, manifest_path=manifest_path)
    assert state(root, manifest_path) == before

    monkeypatch.undo()
    monkeypatch.setattr(manifest_module, 'PACKAGE_DIR', root)
    real_replace, calls = os.replace, []

    def fail_on_second_swap(src, dst):  # the first folder is swapped, the second is not
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', fail_on_second_swap)
    with pytest.raises(KeyboardInterrupt):
        ship_in_package(second, manifest_path=manifest_path)
    monkeypatch.setattr(os, 'replace', real_replace)
    assert state(root, manifest_path) == before


def test_a_published_classifier_of_the_previous_weights_is_refused(exported, package):
    root, manifest_path = package
    first, second = exported
    ship_in_package(first, manifest_path=manifest_path)
    manifest = load_manifest(manifest_path)
    dog = manifest.get('coded_resnext17_10x2d_binary.toy_dog')
    published = dataclasses.replace(dog, location=HubLocation('acme/toy', 'binary-dog', '0' * 40))
    save_manifest(manifest.with_artifact(published), manifest_path)
    before = state(root, manifest_path)
    with pytest.raises(TimmCodedError, match='would orphan coded_resnext17_10x2d_binary.toy_dog'):
        ship_in_package(second, manifest_path=manifest_path)
    assert state(root, manifest_path) == before


def test_a_shipped_binary_loads_by_its_timm_name_with_every_recorded_parent_option(exported, package, monkeypatch):
    """The parent's options that shape the weights (here its classifier bias) reach the sliced twin
    built from a manifest tag, as they do through `local-dir:`."""
    import timm
    import torch
    from timm_coded.models.binary import gate_to_class

    root, manifest_path = package
    images = exported[0][0].parent.parent / 'images'
    parent = randomised(head_bias=True)
    folders = export_model(parent, root.parent / 'biased', architecture='coded_resnext17_10x2d',
                           card={'repo_id': 'acme/toy', 'tag': 'toy'}, classes=['cat'],
                           data=calibration_data(parent, images, batch_size=40))
    shipped = ship_in_package(folders, manifest_path=manifest_path)
    monkeypatch.setenv(manifest_module.MANIFEST_ENV, str(manifest_path))
    cat = shipped[1]
    assert cat.model_args['head_bias'] is True
    binary = timm.create_model('coded_resnext17_10x2d_binary', pretrained=True, pretrained_cfg=dict(
        architecture=cat.architecture, tag=cat.tag, file=str(cat.location.resolve() / 'model.safetensors'),
        num_classes=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), gate_to_class(parent, 3):
        expected = parent(x)[:, 3]
    with torch.no_grad():
        torch.testing.assert_close(binary(x)[:, 0], expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
