"""Hub export / publish / download, against a real Hub-compatible server (olah, see hub_server.py).

The stand-in models are timm's tiny `test_resnet` (0.37 M parameters): a 3-class "full" model and two
1-output "binary classifiers". Nothing here fakes HTTP: downloads go through the real huggingface_hub
client and timm, and publish's commits are checked as the exact CommitOperation objects it would send.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import timm
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, hf_hub_download
from safetensors.torch import load_file

from hub_server import local_hub, hub_client, point_client_at  # noqa: F401 (fixtures)
from timm_coded.errors import CheckpointMismatchError, IntegrityError, TimmCodedError, UnknownClassError
from timm_coded.hub import (
    ARTIFACT_FILES, artifact_branch, download_artifact, export_artifact, fetch_remote_state, git_blob_sha1,
    load_artifact, load_binary_classifier, plan_publish, publish, read_export, sha256_file,
)
from timm_coded.hub.manifest import Artifact, ArtifactFile, HubLocation, Manifest, PackageLocation, load_manifest
import timm_coded.hub.manifest as manifest_module
from conftest import assert_close_at_scale

ARCH = 'test_resnet'
CLASSES = ['a', 'b', 'c']
INPUT = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def _model(num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=num_classes)
    with torch.no_grad():  # non-trivial BN statistics, so a load that skipped buffers would show
        for name, buf in model.named_buffers():
            if name.endswith('running_mean'):
                buf.normal_()
            elif name.endswith('running_var'):
                buf.uniform_(0.5, 2.0)
    return model.eval()


class Exports:
    """A full model and two binary classifiers, exported once for the module."""

    def __init__(self, root: Path, repo_id: str):
        self.repo_id = repo_id
        self.full_model = _model(3, seed=1)
        self.full = export_artifact(
            self.full_model, root / 'full', architecture=ARCH, model_args={'num_classes': 3},
            label_names=CLASSES, card=dict(
                repo_id=repo_id, tag='toy', metrics={'top1': 91.25}, dataset='cifar10', split='test', epochs=3))
        self.models = {'full': self.full_model}
        self.folders = {'full': self.full}
        for index, name, threshold, seed in ((1, 'b', 0.25, 2), (2, 'c', -0.5, 3)):
            model = _model(1, seed=seed)
            self.models[name] = model
            self.folders[name] = export_artifact(
                model, root / f'bin_{name}', architecture=ARCH, model_args={'num_classes': 1}, label_names=[name],
                card=dict(
                    repo_id=repo_id, tag=f'toy_{name}', class_index=index, class_name=name, threshold=threshold,
                    parent='test_resnet.toy', parameter_share=0.4, dataset='cifar10', split='train',
                    metrics={'precision': 0.9, 'recall': 0.8, 'f1': 0.847}))

    def all_folders(self):
        return [self.folders[k] for k in ('full', 'b', 'c')]

    def expected(self, key: str) -> torch.Tensor:
        with torch.no_grad():
            return self.models[key](INPUT)


@pytest.fixture(scope='module')
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp('exports'), 'acme/coded-toy')


def _outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(INPUT)


def _ops(operations):
    """Commit operations as comparable tuples (huggingface_hub's UploadInfo compares by identity)."""
    out = []
    for op in operations:
        if isinstance(op, CommitOperationAdd):
            out.append(('add', op.path_in_repo, str(op.path_or_fileobj), op.upload_info.size,
                        op.upload_info.sha256.hex()))
        else:
            assert isinstance(op, CommitOperationDelete)
            out.append(('delete', op.path_in_repo, op.is_folder))
    return out


def _planned_folders(plan, root: Path) -> dict:
    """branch -> a folder holding exactly the files the plan's commit leaves on that branch (config.json and
    model.safetensors of the export, README.md the card written for the repo)."""
    folders = {}
    for commit in plan.commits:
        folder = root / commit.branch
        folder.mkdir(parents=True, exist_ok=True)
        for f in commit.export.files:
            (folder / f.path).write_bytes(f.read_bytes())
        folders[commit.branch] = folder
    return folders


def _publish_like_the_plan(hub, repo_id: str, folders, root: Path, branches=None) -> dict:
    """Commit to the server what `publish` would send, the way it lays it out; return branch -> commit."""
    planned = _planned_folders(plan_publish(folders, repo_id, remote=None), root)
    return {branch: hub.commit_files(repo_id, folder, branch, message=f'publish {branch}')
            for branch, folder in planned.items() if branches is None or branch in branches}


# ------------------------------------------------------------------------------------------------ export

def test_export_writes_a_timm_hub_folder(exports):
    from timm.models import PretrainedCfg
    from dataclasses import fields

    folder = exports.folders['b']
    assert sorted(p.name for p in folder.iterdir()) == sorted(ARTIFACT_FILES)
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == ARCH
    assert config['num_classes'] == 1 and config['num_features'] == exports.models['b'].num_features
    assert config['label_names'] == ['b']
    assert config['model_args']['num_classes'] == 1
    assert set(config['pretrained_cfg']) <= {f.name for f in fields(PretrainedCfg)}
    assert config['pretrained_cfg']['tag'] == 'toy_b'
    meta = config['timm_coded']
    assert meta['kind'] == 'binary' and 'revision' not in meta  # the Hub layout is decided at publish time
    assert read_export(exports.folders['b']).branch == 'binary-b'
    assert meta['binary'] == {'class_index': 1, 'class_name': 'b', 'threshold': 0.25}
    # where the parent is published is not assumed at export time (publish looks it up)
    assert meta['parent'] == {'artifact': 'test_resnet.toy', 'repo_id': None, 'revision': None, 'commit': None}
    # weights are exactly the model's state dict
    weights = load_file(folder / 'model.safetensors')
    state = exports.models['b'].state_dict()
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)
    # the folder alone rebuilds the model through timm
    rebuilt = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert torch.equal(_outputs(rebuilt), exports.expected('b'))


def test_export_model_card_has_metadata_and_text(exports):
    card = ModelCard.load(exports.folders['c'] / 'README.md')
    assert card.data.library_name == 'timm'
    assert card.data.datasets == ['cifar10']
    assert card.data.metrics == ['precision', 'recall', 'f1']
    assert {'timm', 'binary-classifier', 'image-classification'} <= set(card.data.tags)
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ('precision', 0.9), ('recall', 0.8), ('f1', 0.847)]
    text = card.text
    assert 'class **c** (index 2)' in text
    assert '**-0.5**' in text  # threshold
    assert '| share of the parent\'s parameters | 40.0 % |' in text
    assert '| f1 | 0.847 |' in text
    # an export is not published: the card says so, names no Hub location, and loads from the folder
    assert '**Not published**' in text and 'hf-hub:' not in text and 'acme/coded-toy' not in text
    assert 'from the Coded ResNeXt `test_resnet.toy`.' in text  # the parent, by artifact name only
    assert "model = timm.create_model('local-dir:<folder>', pretrained=True).eval()" in text
    full = ModelCard.load(exports.full / 'README.md')
    assert 'binary-classifier' not in full.data.tags
    assert 'Not published' in full.text and 'hf-hub:' not in full.text


def test_publish_uploads_a_card_that_says_where_it_is_published(exports):
    plan = plan_publish(exports.all_folders(), exports.repo_id, remote=None)
    cards = {c.branch: c.export.files[ARTIFACT_FILES.index('README.md')] for c in plan.commits}
    binary = ModelCard(cards['binary-c'].data.decode('utf-8'))
    assert binary.data.datasets == ['cifar10'] and 'binary-classifier' in binary.data.tags
    text = binary.text
    assert 'Published on the Hugging Face Hub: `acme/coded-toy` at revision `binary-c`.' in text
    assert 'Not published' not in text
    # the parent is published by the same plan, on main
    assert 'from the Coded ResNeXt `test_resnet.toy` (published: `acme/coded-toy` at revision `main`)' in text
    assert "model = timm.create_model('hf-hub:acme/coded-toy@binary-c', pretrained=True).eval()" in text
    full = ModelCard(cards['main'].data.decode('utf-8')).text
    assert "model = timm.create_model('hf-hub:acme/coded-toy@main', pretrained=True).eval()" in full
    assert 'the `binary-<class>` and `subset-<name>` branches of `acme/coded-toy`' in full
    # the card the plan sends is the one it hashes (the export's own README.md is not sent)
    for commit in plan.commits:
        (op,) = [op for op in commit.operations if op.path_in_repo == 'README.md']
        assert op.path_or_fileobj == cards[commit.branch].data
        assert op.upload_info.sha256.hex() == cards[commit.branch].sha256


@pytest.mark.parametrize('change, error, message', [
    (dict(card={'repo_id': 'acme/x'}), TimmCodedError, "card needs 'tag'"),
    (dict(card={'repo_id': 'acme/x', 'tag': 't', 'colour': 1}), TimmCodedError, "unknown card key"),
    (dict(card={'repo_id': 'acme/x', 'tag': 't', 'class_index': 1, 'class_name': 'b', 'parent': 'p.t'}),
     TimmCodedError, "needs ['threshold']"),
    (dict(label_names=['a', 'b']), TimmCodedError, '2 label names for a model with 3 outputs'),
    (dict(model_args={'num_classes': 4}), CheckpointMismatchError, 'num_classes=4 disagrees with the current model'),
    (dict(model_args={'num_classes': 3, 'stem_width': 32}), CheckpointMismatchError, 'does not rebuild this model'),
    (dict(model_args={'num_classes': 3, 'bogus_arg': 1}), CheckpointMismatchError, 'does not accept model_args'),
    (dict(architecture='no_such_arch'), TimmCodedError, 'not registered'),
])
def test_export_rejects_bad_input_and_leaves_nothing(tmp_path, exports, change, error, message):
    kwargs = dict(architecture=ARCH, model_args={'num_classes': 3}, label_names=CLASSES,
                  card={'repo_id': 'acme/x', 'tag': 't'})
    kwargs.update(change)
    with pytest.raises(error, match=message.replace('[', r'\[').replace(']', r'\]').replace('*', r'\*')):
        export_artifact(exports.full_model, tmp_path / 'out', **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_unless_asked(tmp_path, exports):
    card = {'repo_id': 'acme/x', 'tag': 't'}
    out = export_artifact(exports.full_model, tmp_path / 'out', architecture=ARCH, model_args={'num_classes': 3},
                          label_names=CLASSES, card=card)
    before = sha256_file(out / 'model.safetensors')
    with pytest.raises(FileExistsError):
        export_artifact(exports.full_model, out, architecture=ARCH, model_args={'num_classes': 3},
                        label_names=CLASSES, card=card)
    other = _model(3, seed=9)
    export_artifact(other, out, architecture=ARCH, model_args={'num_classes': 3}, label_names=CLASSES, card=card,
                    overwrite=True)
    assert sha256_file(out / 'model.safetensors') != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']  # no temp folders left behind


def test_branch_names():
    assert artifact_branch('full') == 'main'
    assert artifact_branch('binary', 'Pickup Truck') == 'binary-pickup-truck'
    with pytest.raises(TimmCodedError):
        artifact_branch('binary', '***')


# ------------------------------------------------------------------------------------------------ plan

def test_plan_for_a_new_repo_is_the_exact_commit_operations(exports):
    plan = plan_publish(exports.all_folders(), exports.repo_id, remote=None, private=True)
    assert plan.create_repo and plan.private
    assert [c.branch for c in plan.commits] == ['main', 'binary-b', 'binary-c']
    assert [c.create_branch for c in plan.commits] == [False, True, True]
    assert [c.parent_commit for c in plan.commits] == [None, None, None]
    for commit, key in zip(plan.commits, ('full', 'b', 'c')):
        folder = exports.folders[key]
        card = commit.export.files[ARTIFACT_FILES.index('README.md')].data  # written for the repo
        assert _ops(commit.operations) == _ops(
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=card if name == 'README.md' else str(folder / name))
            for name in ARTIFACT_FILES)
        # upload_info is what huggingface_hub sends: the file's sha256 and size
        for op in commit.operations:
            content = card if op.path_in_repo == 'README.md' else (folder / op.path_in_repo).read_bytes()
            assert op.upload_info.sha256.hex() == hashlib.sha256(content).hexdigest()
            assert op.upload_info.size == len(content)
    assert plan.commits[1].commit_message == 'Publish test_resnet.toy_b: binary classifier for class b (index 1)'


def test_plan_refuses_mismatched_repo_and_unknown_parent(exports, tmp_path):
    with pytest.raises(TimmCodedError, match='was exported for acme/coded-toy'):
        plan_publish([exports.full], 'acme/other')
    with pytest.raises(TimmCodedError, match="names parent 'test_resnet.toy'"):
        plan_publish([exports.folders['b']], exports.repo_id, manifest=Manifest())
    with pytest.raises(TimmCodedError, match='holds'):
        (tmp_path / 'empty').mkdir()
        plan_publish([tmp_path / 'empty'], exports.repo_id)


# ------------------------------------------------------------------------------------- local Hub server

def test_round_trip_through_the_hub_at_two_branches(hub_client, exports):
    repo = 'acme/roundtrip'
    heads = {
        'main': hub_client.commit_files(repo, exports.full, 'main'),
        'binary-b': hub_client.commit_files(repo, exports.folders['b'], 'binary-b'),
    }
    refs = HfApi().list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == heads
    for branch, key, folder in (('main', 'full', exports.full), ('binary-b', 'b', exports.folders['b'])):
        for name in ARTIFACT_FILES:
            path = hf_hub_download(repo, name, revision=branch)
            assert sha256_file(path) == sha256_file(folder / name)
        model = timm.create_model(f'hf-hub:{repo}@{branch}', pretrained=True)
        assert model.pretrained_cfg['hf_hub_id'] == f'{repo}@{branch}'
        assert torch.equal(_outputs(model), exports.expected(key))
    # same bytes by commit sha too (what the manifest pins)
    model = timm.create_model(f"hf-hub:{repo}@{heads['binary-b']}", pretrained=True)
    assert torch.equal(_outputs(model), exports.expected('b'))


def test_publish_rerun_sends_nothing_and_records_the_manifest(hub_client, exports, tmp_path):
    repo = exports.repo_id
    heads = _publish_like_the_plan(hub_client, repo, exports.all_folders(), tmp_path / 'sent')
    manifest_path = tmp_path / 'weights_manifest.json'
    result = publish(exports.all_folders(), repo, api=HfApi(), manifest_path=manifest_path)
    assert result.plan.up_to_date  # everything is on the server already: no write request was made
    manifest = load_manifest(manifest_path)
    assert manifest.names == ['test_resnet.toy', 'test_resnet.toy_b', 'test_resnet.toy_c']
    for artifact, key in zip(manifest, ('full', 'b', 'c')):
        branch = 'main' if key == 'full' else f'binary-{key}'
        sent = tmp_path / 'sent' / branch  # the export's weights and config, the card written for the repo
        assert artifact.location == HubLocation(repo, branch, heads[branch])
        assert artifact.files == tuple(
            ArtifactFile(n, sha256_file(sent / n), (sent / n).stat().st_size) for n in ARTIFACT_FILES)
        assert sha256_file(sent / 'model.safetensors') == sha256_file(exports.folders[key] / 'model.safetensors')
    full, b, c = manifest
    assert full.kind == 'full' and full.metrics == {'top1': 91.25} and full.parent is None
    assert full.training == {'dataset': 'cifar10', 'split': 'test', 'epochs': 3}
    assert full.pretrained_cfg['num_classes'] == 3 and full.pretrained_cfg['label_names'] == CLASSES
    assert full.model_args == {'num_classes': 3, 'in_chans': 3, 'global_pool': 'avg'}
    assert b.kind == 'binary' and b.parent == 'test_resnet.toy'
    assert (b.binary.class_index, b.binary.class_name, b.binary.threshold) == (1, 'b', 0.25)
    assert b.metrics == {'precision': 0.9, 'recall': 0.8, 'f1': 0.847, 'parameter_share': 0.4}

    # load back through the manifest: verified download at the pinned commit, built by timm
    model = load_binary_classifier('test_resnet', 'c', manifest)
    assert (model.threshold, model.class_index, model.class_name) == (-0.5, 2, 'c')
    assert torch.equal(_outputs(model), exports.expected('c'))
    assert model.pretrained_cfg['hf_hub_id'] == f"{repo}@{heads['binary-c']}"
    assert torch.equal(_outputs(load_binary_classifier('test_resnet.toy', 1, manifest)), exports.expected('b'))
    assert torch.equal(_outputs(load_artifact('test_resnet.toy', manifest=manifest)), exports.expected('full'))
    with pytest.raises(UnknownClassError, match='available: 1 b, 2 c'):
        load_binary_classifier('test_resnet', 'a', manifest)


def test_publish_plan_and_dry_run_cli_on_a_partly_published_repo(hub_client, exports, tmp_path, capsys):
    repo = exports.repo_id.replace('coded-toy', 'coded-toy-partial')
    folders = _reexport_for(exports, repo, tmp_path)
    sent = _planned_folders(plan_publish(folders, repo, remote=None), tmp_path / 'sent')
    hub_client.commit_files(repo, sent['main'], 'main')
    stale = tmp_path / 'stale'
    stale.mkdir()
    (stale / 'notes.txt').write_text('left over\n')
    main_head = hub_client.commit_files(repo, stale, 'main', replace_all=False)
    mixed = tmp_path / 'mixed'
    mixed.mkdir()
    for name in ('config.json', 'README.md'):
        (mixed / name).write_bytes((sent['binary-b'] / name).read_bytes())
    (mixed / 'model.safetensors').write_bytes((folders[2] / 'model.safetensors').read_bytes())
    b_head = hub_client.commit_files(repo, mixed, 'binary-b')

    remote = fetch_remote_state(repo)
    assert set(remote.branches) == {'main', 'binary-b'}
    assert remote.branches['main'].commit == main_head
    # LFS files are compared by sha256, plain git files by their git blob id
    assert remote.branches['main'].files['model.safetensors'].sha256 == sha256_file(folders[0] / 'model.safetensors')
    assert remote.branches['main'].files['config.json'].blob_id == git_blob_sha1(folders[0] / 'config.json')
    assert remote.branches['main'].files['config.json'].sha256 is None
    assert remote.branches['main'].files['README.md'].blob_id == git_blob_sha1(sent['main'] / 'README.md')

    plan = plan_publish(folders, repo, remote)
    assert not plan.create_repo
    main, b, c = plan.commits
    assert (main.branch, main.create_branch, main.parent_commit) == ('main', False, main_head)
    assert _ops(main.operations) == _ops([CommitOperationDelete(path_in_repo='notes.txt')])
    assert (b.branch, b.create_branch, b.parent_commit) == ('binary-b', False, b_head)
    assert _ops(b.operations) == _ops([CommitOperationAdd('model.safetensors', str(folders[1] / 'model.safetensors'))])
    assert (c.branch, c.create_branch, c.parent_commit) == ('binary-c', True, None)
    # c starts from main as it will be after main's commit: no notes.txt to delete, every file differs
    assert _ops(c.operations) == _ops(
        CommitOperationAdd(n, (sent['binary-c'] / n).read_bytes() if n == 'README.md' else str(folders[2] / n))
        for n in ARTIFACT_FILES)

    # the CLI's --dry-run prints exactly this plan and writes nothing
    manifest_path = tmp_path / 'manifest.json'
    assert _publish_cli([*folders, '--repo', repo, '--dry-run', '--manifest', manifest_path]) == 0
    out = capsys.readouterr().out
    assert plan.describe() in out
    assert "CommitOperationDelete(path_in_repo='notes.txt')" in out
    weights = folders[1] / 'model.safetensors'
    assert (f"CommitOperationAdd(path_in_repo='model.safetensors', size={weights.stat().st_size}, "
            f"sha256={sha256_file(weights)}") in out
    assert "create_branch(branch='binary-c', revision='main')" in out
    assert not manifest_path.exists()


def _reexport_for(exports: Exports, repo: str, root: Path):
    folders = []
    for key in ('full', 'b', 'c'):
        src = read_export(exports.folders[key])
        card = {k: v for k, v in src.meta.items() if k in ('tag', 'kind', 'metrics', 'training', 'license')}
        card['repo_id'] = repo
        if key != 'full':
            card.update(src.meta['binary'])
            card['parent'] = src.meta['parent']['artifact']
        folders.append(export_artifact(
            exports.models[key], root / f'{key}-{repo.split("/")[1]}', architecture=ARCH,
            model_args={'num_classes': exports.models[key].num_classes},
            label_names=CLASSES if key == 'full' else [key], card=card))
    return folders


def _published(hub, repo: str, folder: Path) -> Artifact:
    export = read_export(folder)
    commit = hub.commit_files(repo, folder, export.branch)
    return export.to_artifact(repo, commit)


def test_tampered_file_on_the_server_is_refused_and_not_cached(hub_client, exports):
    repo = 'acme/tampered'
    artifact = _published(hub_client, repo, exports.full)
    weights = artifact.weights_file
    obj = hub_client.lfs_object(repo, weights.sha256)
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    obj.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match='model.safetensors has sha256 .* manifest says sha256 ' + weights.sha256):
        download_artifact(artifact)
    cache = Path(os.environ['HF_HUB_CACHE']) / 'models--acme--tampered'
    snapshot = cache / 'snapshots' / artifact.location.commit
    assert (snapshot / 'config.json').is_file()  # the good files stay
    assert not (snapshot / 'model.safetensors').exists()
    assert not any(p.stat().st_size == weights.size for p in (cache / 'blobs').iterdir())  # bad blob gone


def test_corrupted_cache_is_refused_then_redownloaded(hub_client, exports):
    repo = 'acme/cachecorrupt'
    artifact = _published(hub_client, repo, exports.folders['b'])
    folder = download_artifact(artifact)
    blob = (folder / 'model.safetensors').resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match='removed from the cache'):
        download_artifact(artifact)
    assert not (folder / 'model.safetensors').exists()
    again = download_artifact(artifact)  # the bad copy is gone, so the next call fetches a good one
    assert sha256_file(again / 'model.safetensors') == artifact.weights_file.sha256


def test_offline_reuse_after_download(hub_client, exports, tmp_path, monkeypatch):
    repo = 'acme/offline'
    artifact = _published(hub_client, repo, exports.folders['c'])
    manifest_path = tmp_path / 'weights_manifest.json'
    manifest_path.write_text(Manifest((
        _published(hub_client, repo, exports.full), artifact)).to_json())
    cache = Path(os.environ['HF_HUB_CACHE'])
    download_artifact(artifact)

    # in this process: nothing reachable, offline mode on
    point_client_at(monkeypatch, 'http://127.0.0.1:9', cache, offline=True)
    model = load_binary_classifier('test_resnet.toy', 'c', load_manifest(manifest_path))
    assert torch.equal(_outputs(model), exports.expected('c'))

    # a fresh interpreter with HF_HUB_OFFLINE=1 set before huggingface_hub is imported
    expected = exports.expected('c').numpy().tobytes().hex()
    code = (
        'import torch, timm_coded.hub as h, timm_coded.hub.manifest as m\n'
        'x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))\n'
        "model = h.load_binary_classifier('test_resnet', 'c', m.load_manifest()).eval()\n"
        'with torch.no_grad(): print(model(x).numpy().tobytes().hex(), model.threshold)\n')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_ENDPOINT='http://127.0.0.1:9', HF_HUB_CACHE=str(cache),
               TIMM_CODED_MANIFEST=str(manifest_path), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [expected, '-0.5']


# ------------------------------------------------------------------------ manifest -> timm pretrained cfgs

def _register_manifest_model(name: str, manifest: Manifest):
    """A throwaway architecture whose pretrained cfgs come from `manifest`, as the model modules do it."""
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    from timm_coded.hub.manifest import pretrained_cfg_overrides

    module = types.ModuleType(f'_timm_coded_test_{name}')
    cfgs = {f'{name}.{tag}': dict(kw, mean=(0.5,) * 3, std=(0.5,) * 3, first_conv='conv1.0', classifier='fc')
            for tag, kw in pretrained_cfg_overrides(name, manifest).items()}
    module.default_cfgs = generate_default_cfgs(cfgs)

    def entrypoint(pretrained=False, **kwargs):
        args = dict(block=[BasicBlock, BasicBlock, Bottleneck, BasicBlock], layers=(1, 1, 1, 1), stem_width=16,
                    stem_type='deep', avg_down=True, channels=(32, 48, 48, 96))
        return build_model_with_cfg(ResNet, name, pretrained, **dict(args, **kwargs))

    entrypoint.__name__ = name
    entrypoint.__module__ = module.__name__
    sys.modules[module.__name__] = module
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # registering again in the same process only warns
        register_model(entrypoint)


def test_manifest_pretrained_cfgs_load_through_timm_from_hub_and_package(hub_client, exports, tmp_path, monkeypatch):
    name = 'tchubtest_resnet'
    repo = 'acme/registry'
    hub_artifact = _published(hub_client, repo, exports.full)
    hub_artifact = Artifact(
        architecture=name, tag='toy', kind='full', location=hub_artifact.location, files=hub_artifact.files,
        pretrained_cfg={'num_classes': 3, 'input_size': [3, 48, 48]})
    # a package artifact: weights shipped inside the package (PACKAGE_DIR points at a temp copy here)
    monkeypatch.setattr(manifest_module, 'PACKAGE_DIR', tmp_path)
    (tmp_path / 'pretrained' / 'small').mkdir(parents=True)
    weights = tmp_path / 'pretrained' / 'small' / 'model.safetensors'
    weights.write_bytes((exports.full / 'model.safetensors').read_bytes())
    package_artifact = Artifact(
        architecture=name, tag='bundled', kind='full', location=PackageLocation('pretrained/small'),
        files=(ArtifactFile('model.safetensors', sha256_file(weights), weights.stat().st_size),),
        pretrained_cfg={'num_classes': 3})
    manifest = Manifest((hub_artifact, package_artifact))
    _register_manifest_model(name, manifest)

    assert set(timm.list_pretrained(f'{name}.*')) == {f'{name}.toy', f'{name}.bundled'}
    cfg = timm.models.get_pretrained_cfg(f'{name}.toy')
    assert cfg.hf_hub_id == f'{repo}@{hub_artifact.location.commit}'
    assert cfg.input_size == (3, 48, 48)
    assert timm.models.get_pretrained_cfg(f'{name}.bundled').file == str(weights)
    for tag in ('toy', 'bundled'):
        model = timm.create_model(f'{name}.{tag}', pretrained=True)
        assert torch.equal(_outputs(model), exports.expected('full')), tag
    # the same artifacts through load_artifact (verified first)
    assert torch.equal(_outputs(load_artifact(package_artifact)), exports.expected('full'))
    weights.write_bytes(b'\0' * weights.stat().st_size)
    with pytest.raises(IntegrityError, match='refusing it$'):
        load_artifact(package_artifact)
    assert weights.exists()  # a package file is reported, never deleted


def test_shipped_manifest_agrees_with_the_timm_registry():
    """Every shipped artifact's architecture is registered; full models' tags are timm pretrained tags
    (their cfgs are generated from the manifest), binary classifiers load by class through
    `load_binary_classifier` (their per-class model args live in the manifest, not in a timm cfg)."""
    import timm_coded  # noqa: F401 (registers the coded models)
    from timm_coded.hub import load_binary_classifier

    manifest = load_manifest()
    if not len(manifest):
        pytest.skip('the shipped weights_manifest.json lists no artifacts yet')
    pretrained = set(timm.list_pretrained())
    for artifact in manifest:
        assert timm.is_model(artifact.architecture), artifact.architecture
        if artifact.kind == 'full':
            assert artifact.name in pretrained, artifact.name
            cfg = timm.models.get_pretrained_cfg(artifact.name)
            assert cfg.num_classes == artifact.pretrained_cfg['num_classes']
        elif artifact.kind == 'binary':
            parent = manifest.get(artifact.parent)
            model = load_binary_classifier(parent.architecture, artifact.binary.class_name, manifest)
            assert model.class_index == artifact.binary.class_index
            assert model.threshold == pytest.approx(artifact.binary.threshold)
        else:  # a class-subset classifier: a timm pretrained tag, its classes from the manifest
            assert artifact.kind == 'subset' and artifact.name in pretrained, artifact.name
            model = timm.create_model(artifact.name, pretrained=True)
            assert model.class_indices == list(artifact.subset.class_indices)
            assert model.threshold == pytest.approx(artifact.subset.threshold)


def _publish_cli(argv):
    from timm_coded.cli import publish as publish_cli
    parser = argparse.ArgumentParser(prog='timm-coded')
    publish_cli.register(parser.add_subparsers(dest='command'))
    args = parser.parse_args(['publish', *map(str, argv)])
    return args.func(args)


def test_cli_exports_and_dry_runs_a_checkpoint_for_a_new_repo(hub_client, tmp_path, capsys):
    torch.manual_seed(5)
    model = timm.create_model(ARCH).eval()
    checkpoint = tmp_path / 'checkpoint.pth'
    torch.save({'state_dict': model.state_dict(), 'epoch': 3}, checkpoint)
    export_dir = tmp_path / 'export'
    assert _publish_cli([checkpoint, '--model', ARCH, '--tag', 'ckpt', '--repo', 'acme/from-checkpoint',
                         '--dataset', 'imagenet-1k', '--export-dir', export_dir, '--dry-run',
                         '--manifest', tmp_path / 'm.json']) == 0
    out = capsys.readouterr().out
    assert out.startswith('repo acme/from-checkpoint: create_repo(private=False)')  # olah has no such repo
    weights = export_dir / 'full' / 'model.safetensors'
    assert (f"CommitOperationAdd(path_in_repo='model.safetensors', size={weights.stat().st_size}, "
            f'sha256={sha256_file(weights)}') in out
    assert not (tmp_path / 'm.json').exists()
    rebuilt = timm.create_model(f"local-dir:{export_dir / 'full'}", pretrained=True)
    assert torch.equal(_outputs(rebuilt), _outputs(model))

    with pytest.raises(TimmCodedError, match='needs --model NAME and --tag TAG'):
        _publish_cli([checkpoint, '--repo', 'acme/x', '--dry-run'])
    with pytest.raises(TimmCodedError, match='folders are published as they are'):
        _publish_cli([export_dir / 'full', '--repo', 'acme/x', '--classes', 'cat', '--dry-run'])


def test_publish_records_each_artifact_as_it_lands_and_stops_at_a_refused_write(hub_client, exports, tmp_path):
    """olah refuses writes: publish gets past the artifact the repo already holds, then the server's refusal
    of the next branch stops it, and the manifest describes exactly what is published (resumable)."""
    from huggingface_hub.errors import HfHubHTTPError

    repo = exports.repo_id.replace('coded-toy', 'coded-toy-refused')
    folders = _reexport_for(exports, repo, tmp_path)
    main_head = _publish_like_the_plan(hub_client, repo, folders, tmp_path / 'sent', branches={'main'})['main']
    manifest_path = tmp_path / 'weights_manifest.json'
    with pytest.raises(HfHubHTTPError, match='branch/binary-b'):
        publish(folders, repo, api=HfApi(), manifest_path=manifest_path)
    manifest = load_manifest(manifest_path)
    assert manifest.names == ['test_resnet.toy']
    assert manifest.get('test_resnet.toy').location == HubLocation(repo, 'main', main_head)


def test_coded_model_round_trip_through_the_hub(hub_client, tmp_path):
    """The real CIFAR-10 Coded ResNeXt-29 exports, publishes and reloads bit-exactly through timm."""
    import timm_coded  # noqa: F401 (registers the coded models)

    name = 'coded_resnext29_10x11d'
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    folder = export_artifact(
        model, tmp_path / 'coded', architecture=name, model_args={}, label_names=[str(i) for i in range(10)],
        card={'repo_id': 'acme/coded-resnext29-cifar10', 'tag': 'cifar10', 'dataset': 'cifar10'})
    artifact = _published(hub_client, 'acme/coded-resnext29-cifar10', folder)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        from_hub = timm.create_model(f'hf-hub:{artifact.location.hf_hub_id}', pretrained=True).eval()
        assert torch.equal(from_hub(x), expected)
        assert torch.equal(load_artifact(artifact).eval()(x), expected)


def test_cli_publishes_a_coded_checkpoint_with_calibrated_binaries_dry_run(hub_client, tmp_path, capsys):
    """`publish CHECKPOINT` slices, calibrates and exports the requested classes, then plans one
    commit per artifact (full model on main, each class on binary-<class>)."""
    import shutil

    import timm_coded  # noqa: F401
    from safetensors.torch import save_file
    from timm_coded.data import sample_data_dir

    torch.manual_seed(0)
    model = timm.create_model('coded_resnext17_10x2d').eval()
    checkpoint = tmp_path / 'model.safetensors'
    save_file(model.state_dict(), str(checkpoint))
    data = tmp_path / 'data'
    for split in ('train', 'val'):
        for cls in model.class_names:
            (data / split / cls).mkdir(parents=True)
            for path in sorted((sample_data_dir() / split / cls).glob('*.jpg'))[:4]:
                shutil.copy(path, data / split / cls / path.name)
    export_dir = tmp_path / 'export'
    assert _publish_cli([checkpoint, '--model', 'coded_resnext17_10x2d', '--tag', 'c10', '--repo', 'acme/c10',
                         '--classes', 'cat', '3', '--data-dir', data, '--export-dir', export_dir, '--dry-run',
                         '--manifest', tmp_path / 'm.json']) == 0
    out = capsys.readouterr().out
    assert "create_branch(branch='binary-cat'" in out and 'coded_resnext17_10x2d_binary.c10_cat' in out
    assert out.count("CommitOperationAdd(path_in_repo='model.safetensors'") == 2  # full + cat ('3' is cat)
    cat = timm.create_model(f"local-dir:{export_dir / 'binary' / 'cat'}", pretrained=True).eval()
    config = json.loads((export_dir / 'binary' / 'cat' / 'config.json').read_text())
    assert config['model_args']['class_index'] == 3 and config['timm_coded']['binary']['class_name'] == 'cat'
    from timm_coded.models.binary import gate_to_class
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), gate_to_class(model, 3):
        assert_close_at_scale(cat(x)[:, 0], model(x)[:, 3])


def test_hf_hub_names_of_manifest_artifacts_load_the_pinned_commit_verified(hub_client, tmp_path, monkeypatch):
    """`timm.create_model('hf-hub:<repo>@<branch>')` (what a published card shows) of an artifact in
    the manifest loads the commit the manifest pins, sha256-verified, even after the branch moved;
    a repo the manifest does not list is loaded as timm loads it."""
    import timm_coded  # noqa: F401 (registers the coded models)
    from conftest import randomised
    from timm_coded.hub.manifest import MANIFEST_ENV, save_manifest

    name, repo = 'coded_resnext17_10x2d', 'acme/pinned'
    card = {'repo_id': repo, 'tag': 'toy'}
    trusted, other = randomised(), randomised(seed=1)
    folders = {key: export_artifact(m, tmp_path / key, architecture=name, model_args={},
                                    label_names=m.class_names, card=card)
               for key, m in (('trusted', trusted), ('other', other))}
    artifact = _published(hub_client, repo, folders['trusted'])
    save_manifest(Manifest((artifact,)), tmp_path / 'm.json')
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / 'm.json'))
    hub_client.commit_files(repo, folders['other'], 'main')  # the branch moves on after the manifest pinned it
    hub_client.commit_files('acme/unlisted', folders['other'], 'main')
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ref in (f'{repo}@main', repo, f'{repo}@{artifact.location.commit}'):
            loaded = timm.create_model(f'hf-hub:{ref}', pretrained=True).eval()
            assert torch.equal(loaded(x), trusted(x)), ref
            assert artifact.location.commit in loaded.pretrained_cfg['file'], ref  # the pinned snapshot
        unlisted = timm.create_model('hf-hub:acme/unlisted@main', pretrained=True).eval()
        assert torch.equal(unlisted(x), other(x))

    # the pinned copy in the cache is checked on this path too
    blob = Path(timm.create_model(f'hf-hub:{repo}@main', pretrained=True).pretrained_cfg['file']).resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        timm.create_model(f'hf-hub:{repo}@main', pretrained=True)


def test_export_onnx_of_a_hub_repo_that_does_not_exist_is_one_line(hub_client, tmp_path, capsys):
    from timm_coded.cli import main

    assert main(['export-onnx', 'hf-hub:acme/no-such-repo', '--out', str(tmp_path / 'x.onnx')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("timm-coded export-onnx: error: cannot build 'hf-hub:acme/no-such-repo'")
    assert not (tmp_path / 'x.onnx').exists()
