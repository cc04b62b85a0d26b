"""weights_manifest.json: schema validation, atomic writes, and the pretrained cfgs it feeds to timm."""
from __future__ import annotations

import ast
import copy
import json
import os
import sys
from pathlib import Path

import pytest

import timm_coded.hub.manifest as manifest_module
from timm_coded.errors import ManifestError, TimmCodedError
from timm_coded.hub.manifest import (
    Artifact, ArtifactFile, BinaryInfo, HubLocation, Manifest, load_manifest,
    pretrained_cfg_overrides, save_manifest, update_manifest,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHA_A = 'a' * 64
SHA_B = 'b' * 64
COMMIT = '0123456789abcdef0123456789abcdef01234567'


def _full(**overrides) -> dict:
    d = {
        'architecture': 'coded_resnext29_10x11d',
        'tag': 'cifar10',
        'kind': 'full',
        'location': {'type': 'hub', 'repo_id': 'acme/coded-cifar10', 'revision': 'main', 'commit': COMMIT},
        'files': [
            {'path': 'config.json', 'sha256': SHA_A, 'size': 10},
            {'path': 'model.safetensors', 'sha256': SHA_B, 'size': 1000},
        ],
        'pretrained_cfg': {'num_classes': 10, 'input_size': [3, 32, 32], 'mean': [0.49, 0.48, 0.45]},
        'model_args': {'num_classes': 10},
        'metrics': {'top1': 94.4},
        'training': {'dataset': 'cifar10', 'split': 'train', 'epochs': 300},
        'parent': None,
    }
    d.update(overrides)
    return d


def _binary(**overrides) -> dict:
    d = _full(
        architecture='coded_resnext29_10x11d_binary', tag='cifar10_cat', kind='binary',
        location={'type': 'hub', 'repo_id': 'acme/coded-cifar10', 'revision': 'binary-cat', 'commit': None},
        binary={'class_index': 3, 'class_name': 'cat', 'threshold': 1.25},
        metrics={'precision': 0.8, 'recall': 0.7, 'f1': 0.75, 'parameter_share': 0.463},
        parent='coded_resnext29_10x11d.cifar10')
    d.update(overrides)
    return d


def _doc(*artifacts) -> dict:
    return {'schema_version': 1, 'artifacts': list(artifacts)}


def test_round_trip_through_json(tmp_path):
    manifest = Manifest.from_dict(_doc(_full(), _binary()))
    path = save_manifest(manifest, tmp_path / 'm.json')
    assert json.loads(path.read_text()) == manifest.to_dict()
    again = load_manifest(path)
    assert again == manifest
    full, binary = again
    assert full.name == 'coded_resnext29_10x11d.cifar10'
    assert full.location == HubLocation('acme/coded-cifar10', 'main', COMMIT)
    assert full.weights_file == ArtifactFile('model.safetensors', SHA_B, 1000)
    assert binary.binary == BinaryInfo(3, 'cat', 1.25)
    assert again.find(kind='binary', parent=full.name) == [binary]
    assert again.get('coded_resnext29_10x11d_binary.cifar10_cat') is binary


@pytest.mark.parametrize('mutate, message', [
    (lambda d: d.update(schema_version=2), 'newer than this timm-coded understands'),
    (lambda d: d.update(schema_version='1'), 'expected an int'),
    (lambda d: d.update(extra=1), "unknown key(s) ['extra']"),
    (lambda d: d['artifacts'][0].update(kind='half'), "expected one of ('full', 'binary', 'subset')"),
    (lambda d: d['artifacts'][0]['files'][1].update(sha256='ABC'), 'files[1].sha256'),
    (lambda d: d['artifacts'][0]['files'][1].update(size=-1), 'byte count'),
    (lambda d: d['artifacts'][0]['files'][0].update(path='../evil.json'), 'relative POSIX path'),
    (lambda d: d['artifacts'][0]['files'][0].update(path='model.safetensors'), 'duplicate paths'),
    (lambda d: d['artifacts'][0]['files'][0].update(path='other.safetensors'), 'exactly one .safetensors'),
    (lambda d: d['artifacts'][0]['location'].update(repo_id='no-slash'), "Hub repo id 'org/name'"),
    (lambda d: d['artifacts'][0]['location'].update(commit='abc'), '40-digit'),
    (lambda d: d['artifacts'][0]['location'].update(type='ftp'), "type 'hub' or 'package'"),
    (lambda d: d['artifacts'][0]['pretrained_cfg'].update(hf_hub_id='x/y'), 'decided by "location"'),
    (lambda d: d['artifacts'][0].update(metrics={'top1': 'high'}), 'metrics.top1'),
    (lambda d: d['artifacts'][0].update(binary={'class_index': 1, 'class_name': 'x', 'threshold': 0}),
     "only kind 'binary'"),
    (lambda d: d['artifacts'][1].pop('binary'), "needs a 'binary' block"),
    (lambda d: d['artifacts'][1]['binary'].update(threshold=float('nan')), 'finite number'),
    (lambda d: d['artifacts'][1].update(parent='coded_resnext29_10x11d.imagenet'), 'is not an artifact'),
    (lambda d: d['artifacts'].append(copy.deepcopy(d['artifacts'][0])), 'duplicate artifact names'),
    (lambda d: d['artifacts'][0].update(tag='CIFAR-10'), 'pretrained tag'),
    (lambda d: d['artifacts'][1].update(model_args={'scheme': float('inf')}), 'model_args: not JSON'),
    (lambda d: d['artifacts'][1].update(model_args={'class_index': 4, 'threshold': 1.25}),
     "model_args.class_index: 4 disagrees with the binary block (3)"),
    (lambda d: d['artifacts'][1].update(model_args={'class_name': 'dog'}), 'model_args.class_name'),
])
def test_malformed_manifests_are_rejected_with_the_place_named(tmp_path, mutate, message):
    doc = _doc(_full(), _binary())
    mutate(doc)
    path = tmp_path / 'weights_manifest.json'
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert isinstance(info.value, TimmCodedError)


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / 'm.json'
    path.write_text('{\n  "schema_version": 1,\n  "artifacts": [,]\n}\n')
    with pytest.raises(ManifestError, match='not valid JSON: .* line 3 column 17'):
        load_manifest(path)
    with pytest.raises(ManifestError, match='does not exist'):
        load_manifest(tmp_path / 'missing.json')


def test_artifacts_built_in_code_are_validated_too():
    location = HubLocation('acme/x', 'main', None)
    files = (ArtifactFile('model.safetensors', SHA_A, 1),)
    with pytest.raises(ManifestError, match="needs a 'binary' block"):
        Artifact(architecture='a', tag='t', kind='binary', location=location, files=files)
    with pytest.raises(ManifestError, match='sha256'):
        Artifact(architecture='a', tag='t', kind='full', location=location,
                 files=(ArtifactFile('model.safetensors', 'xyz', 1),))
    parent_missing = Artifact.from_dict(_binary(), 'x')
    with pytest.raises(ManifestError, match='is not an artifact in this manifest'):
        Manifest((parent_missing,))


def test_save_is_atomic_and_replaces_a_symlinks_target(tmp_path):
    real = tmp_path / 'repo' / 'weights_manifest.json'
    real.parent.mkdir()
    real.write_text(Manifest().to_json())
    link = tmp_path / 'pkg' / 'weights_manifest.json'
    link.parent.mkdir()
    link.symlink_to(os.path.relpath(real, link.parent))

    manifest = Manifest.from_dict(_doc(_full()))
    save_manifest(manifest, link)
    assert link.is_symlink()  # the package's link still points at the top-level file ...
    assert load_manifest(real) == manifest  # ... which now holds the new content
    assert sorted(p.name for p in real.parent.iterdir()) == ['weights_manifest.json']  # no temp file left

    # a failing write leaves the old file untouched
    class Unserialisable(Manifest):
        def to_json(self):
            raise RuntimeError('disk full')
    with pytest.raises(RuntimeError):
        save_manifest(Unserialisable(), link)
    assert load_manifest(real) == manifest
    assert sorted(p.name for p in real.parent.iterdir()) == ['weights_manifest.json']


def test_update_replaces_by_name_and_keeps_order(tmp_path):
    path = tmp_path / 'm.json'
    update_manifest([Artifact.from_dict(_full(), 'x')], path)  # created when missing
    update_manifest([Artifact.from_dict(_binary(), 'x')], path)
    newer = Artifact.from_dict(_full(metrics={'top1': 95.0}), 'x')
    manifest = update_manifest([newer], path)
    assert manifest.names == ['coded_resnext29_10x11d.cifar10', 'coded_resnext29_10x11d_binary.cifar10_cat']
    assert load_manifest(path).get('coded_resnext29_10x11d.cifar10').metrics == {'top1': 95.0}


def test_load_rereads_a_changed_file(tmp_path):
    path = tmp_path / 'm.json'
    path.write_text(json.dumps(_doc()))
    assert len(load_manifest(path)) == 0
    path.write_text(json.dumps(_doc(_full())))
    os.utime(path, ns=(1, 10**18))  # a new mtime even on coarse-clock file systems
    assert len(load_manifest(path)) == 1


def test_pretrained_cfg_overrides_for_hub_and_package_artifacts(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, 'PACKAGE_DIR', tmp_path)
    unpinned = _binary(location={'type': 'hub', 'repo_id': 'acme/coded-cifar10', 'revision': 'binary-cat'})
    package = _full(
        tag='demo', location={'type': 'package', 'path': 'pretrained/demo'},
        files=[{'path': 'weights/small.safetensors', 'sha256': SHA_A, 'size': 5}], pretrained_cfg={})
    manifest = Manifest.from_dict(_doc(_full(), unpinned, package))

    cfgs = pretrained_cfg_overrides('coded_resnext29_10x11d', manifest)
    assert set(cfgs) == {'cifar10', 'demo'}
    assert cfgs['cifar10'] == {
        'num_classes': 10, 'input_size': (3, 32, 32), 'mean': (0.49, 0.48, 0.45),
        'hf_hub_id': f'acme/coded-cifar10@{COMMIT}'}  # pinned to the published commit
    assert cfgs['demo'] == {'file': str(tmp_path / 'pretrained' / 'demo' / 'weights' / 'small.safetensors')}
    binary = pretrained_cfg_overrides('coded_resnext29_10x11d_binary', manifest)
    assert binary['cifar10_cat']['hf_hub_id'] == 'acme/coded-cifar10@binary-cat'  # no commit: the branch
    assert pretrained_cfg_overrides('unknown_arch', manifest) == {}

    renamed = _full(files=[{'path': 'weights.safetensors', 'sha256': SHA_A, 'size': 5}])
    cfg = pretrained_cfg_overrides('coded_resnext29_10x11d', Manifest.from_dict(_doc(renamed)))['cifar10']
    assert cfg['hf_hub_filename'] == 'weights.safetensors'


def test_pretrained_cfg_keys_are_timm_pretrained_cfg_fields():
    from dataclasses import fields
    from timm.models import PretrainedCfg

    cfg = pretrained_cfg_overrides('coded_resnext29_10x11d', Manifest.from_dict(_doc(_full())))['cifar10']
    assert set(cfg) <= {f.name for f in fields(PretrainedCfg)}
    assert PretrainedCfg(**cfg).has_weights


def test_environment_variable_points_at_another_manifest(tmp_path, monkeypatch):
    path = tmp_path / 'elsewhere.json'
    path.write_text(json.dumps(_doc(_full())))
    monkeypatch.setenv(manifest_module.MANIFEST_ENV, str(path))
    assert manifest_module.default_manifest_path() == path
    assert load_manifest().names == ['coded_resnext29_10x11d.cifar10']
    assert set(pretrained_cfg_overrides('coded_resnext29_10x11d')) == {'cifar10'}


def test_shipped_manifest_is_valid_and_the_package_link_reaches_it(monkeypatch):
    monkeypatch.delenv(manifest_module.MANIFEST_ENV, raising=False)
    packaged = manifest_module.PACKAGE_DIR / 'weights_manifest.json'
    top_level = REPO_ROOT / 'weights_manifest.json'
    assert packaged.is_symlink() and os.readlink(packaged) == '../weights_manifest.json'
    assert packaged.resolve() == top_level.resolve()
    manifest = load_manifest()
    assert manifest.to_dict() == json.loads(top_level.read_text())


def test_manifest_module_imports_only_the_standard_library():
    """The model modules import manifest.py at registration: it must not pull in torch or timm."""
    tree = ast.parse(Path(manifest_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add('.' * node.level + (node.module or ''))
    local = {m for m in imported if m.startswith('.')}
    assert local == {'..errors', '.._io'}
    third_party = {m for m in imported - local if m not in sys.stdlib_module_names}
    assert third_party == set()
    for module in ('_io', 'errors'):  # the local modules it uses are standard-library only too
        tree = ast.parse((Path(manifest_module.__file__).parent.parent / f'{module}.py').read_text())
        names = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert {m for m in names if m not in sys.stdlib_module_names} == set(), module


@pytest.mark.parametrize('arg, value', [('subset_name', 'cats'), ('class_indices', [3, 4]), ('class_names', ['dog', 'cat'])])
def test_a_subset_entry_whose_model_args_disagree_with_its_block_is_refused(arg, value):
    shipped = json.loads((REPO_ROOT / 'weights_manifest.json').read_text())
    subset = next(a for a in shipped['artifacts'] if a['kind'] == 'subset')
    Artifact.from_dict(subset, 'entry')  # as shipped: consistent
    with pytest.raises(ManifestError, match=f'entry.model_args.{arg}: .* disagrees with the subset block'):
        Artifact.from_dict(dict(subset, model_args=dict(subset['model_args'], **{arg: value})), 'entry')


def test_a_folder_artifact_must_keep_the_weights_timm_reads():
    """load_artifact builds a folder artifact with timm's local-dir:, which reads model.safetensors by
    name: another verified weights file would not be the one loaded, so the entry is refused."""
    from timm_coded.hub import load_artifact

    entry = _full(location={'type': 'package', 'path': 'weights/x'}, files=[
        {'path': 'config.json', 'sha256': SHA_A, 'size': 10},
        {'path': 'weights.safetensors', 'sha256': SHA_B, 'size': 1000}])
    with pytest.raises(ManifestError, match='keeps its weights in model.safetensors, not weights.safetensors'):
        load_artifact(Artifact.from_dict(entry, 'entry'))
