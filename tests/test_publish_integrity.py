"""`publish` refuses artifacts whose weights do not load, and the model cards it writes say only what is true.

Bad folders are copies of the good exports the Hub tests build (test_hub.Exports) with one file spoiled;
each is refused with one line naming the file, before any plan is made or any request is sent.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import timm
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file

from test_hub import exports  # noqa: F401 (the Hub tests' exported toy models, a module fixture)
from timm_coded.cli import main
from timm_coded.errors import CheckpointMismatchError, IntegrityError, TimmCodedError
from timm_coded.hub import (
    ARTIFACT_FILES, export_artifact, plan_publish, publish, read_export, sha256_file, verify_export,
)
from timm_coded.hub.manifest import Manifest

REPO = 'acme/coded-toy'


def _copy(exports, tmp_path: Path, key: str = 'full') -> Path:
    folder = tmp_path / key
    shutil.copytree(exports.folders[key], folder)
    return folder


def _refused(folder: Path, error, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        plan_publish([folder], REPO, remote=None, manifest=Manifest())
    assert '\n' not in str(info.value)


def _resave(weights: Path, change) -> None:
    state = load_file(weights)
    change(state)
    save_file(state, weights, metadata={'format': 'pt'})


# ------------------------------------------------------------------------------------ bad artifacts

def test_truncated_weights_are_refused(exports, tmp_path):
    folder = _copy(exports, tmp_path)
    weights = folder / 'model.safetensors'
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    _refused(folder, IntegrityError,
             rf'^{re.escape(str(weights))} is not a valid safetensors file \(Error while deserializing header: '
             r'incomplete metadata, file not fully covered\): refusing it$')


def test_empty_weights_are_refused(exports, tmp_path):
    folder = _copy(exports, tmp_path)
    weights = folder / 'model.safetensors'
    weights.write_bytes(b'')
    _refused(folder, IntegrityError, rf'^{re.escape(str(weights))} is empty \(0 bytes\): refusing it$')


def test_random_bytes_are_refused(exports, tmp_path):
    folder = _copy(exports, tmp_path)
    weights = folder / 'model.safetensors'
    weights.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                      generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    _refused(folder, IntegrityError,
             rf'^{re.escape(str(weights))} is not a valid safetensors file \(Error while deserializing header: '
             r'header too large\): refusing it$')


def test_config_naming_another_architecture_is_refused(exports, tmp_path):
    folder = _copy(exports, tmp_path)
    config = json.loads((folder / 'config.json').read_text())
    config['architecture'] = 'test_efficientnet'  # registered, accepts the same model_args, other weights
    (folder / 'config.json').write_text(json.dumps(config))
    weights = folder / 'model.safetensors'
    _refused(folder, CheckpointMismatchError,
             rf'^{re.escape(str(weights))} does not fit test_efficientnet \(named by config.json\): '
             r'\d+ missing keys \(conv_stem.weight, .*; \d+ unexpected keys \(conv1.0.weight, ')


def test_config_naming_an_unregistered_architecture_is_refused(exports, tmp_path):
    folder = _copy(exports, tmp_path)
    config = json.loads((folder / 'config.json').read_text())
    config['architecture'] = 'no_such_arch'
    (folder / 'config.json').write_text(json.dumps(config))
    _refused(folder, CheckpointMismatchError,
             rf"^{re.escape(str(folder / 'config.json'))} names architecture 'no_such_arch', which is not "
             r'registered with timm \(import the module that registers it\)$')


@pytest.mark.parametrize('change, message', [
    (lambda c: c.clear() or c.update(timm_coded={'format': 1}), 'names no architecture'),
    (lambda c: c['timm_coded'].pop('kind'), 'its timm_coded block lacks kind'),
    (lambda c: c['timm_coded'].update(repo_id=None, tag=3), 'its timm_coded block lacks repo_id, tag'),
    (lambda c: c['timm_coded'].update(kind='half'), "kind 'half' is not 'full', 'binary' or 'subset'"),
    (lambda c: c['timm_coded'].update(kind='binary'), "a binary artifact needs its 'binary' block"),
])
def test_a_config_without_what_publishing_reads_is_one_line(exports, tmp_path, change, message):
    folder = _copy(exports, tmp_path)
    config = json.loads((folder / 'config.json').read_text())
    change(config)
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(TimmCodedError, match=re.escape(message)) as info:
        read_export(folder)
    assert '\n' not in str(info.value)
    (folder / 'config.json').write_text('[1, 2]')  # valid JSON, not an object
    with pytest.raises(TimmCodedError, match='has no timm_coded block'):
        read_export(folder)


def test_a_nan_weight_is_refused(exports, tmp_path):
    folder = _copy(exports, tmp_path)
    weights = folder / 'model.safetensors'

    def poison(state):
        state['fc.weight'][0, 0] = float('nan')
    _resave(weights, poison)
    _refused(folder, CheckpointMismatchError,
             rf'^{re.escape(str(weights))}: fc.weight holds 1 non-finite value\(s\) \(NaN/inf\): refusing it$')


def test_integer_weights_are_refused(exports, tmp_path):
    folder = _copy(exports, tmp_path)
    weights = folder / 'model.safetensors'

    def to_int(state):
        state['fc.weight'] = state['fc.weight'].round().to(torch.int64)
    _resave(weights, to_int)
    _refused(folder, CheckpointMismatchError,
             rf'^{re.escape(str(weights))}: fc.weight is int64, not floating point: not a weights file of this model$')


def test_a_good_export_still_plans_and_verifies(exports):
    plan = plan_publish([exports.full], REPO, remote=None, manifest=Manifest())
    assert [c.branch for c in plan.commits] == ['main']
    assert [op.path_in_repo for op in plan.commits[0].operations] == list(ARTIFACT_FILES)
    model = verify_export(exports.full)  # the rebuilt model, with the exported weights loaded strictly
    with torch.no_grad():
        assert torch.equal(model(torch.ones(1, 3, 48, 48)), exports.full_model(torch.ones(1, 3, 48, 48)))


def test_one_bad_folder_stops_the_whole_publish_before_any_request(exports, tmp_path):
    folder = _copy(exports, tmp_path, 'b')
    (folder / 'model.safetensors').write_bytes(b'')
    dead = HfApi(endpoint='http://127.0.0.1:9')  # any request would fail with a connection error
    manifest_path = tmp_path / 'weights_manifest.json'
    weights = re.escape(str(folder / 'model.safetensors'))
    with pytest.raises(IntegrityError, match=rf'^{weights} is empty \(0 bytes\): refusing it$'):
        publish([exports.full, folder, exports.folders['c']], REPO, api=dead, manifest_path=manifest_path)
    assert not manifest_path.exists()


def test_cli_refuses_a_bad_folder_with_one_line(exports, tmp_path, capsys):
    folder = _copy(exports, tmp_path)
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(['publish', str(folder), '--repo', REPO, '--dry-run', '--manifest', str(tmp_path / 'm.json')]) == 2
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.splitlines() == [
        f'timm-coded publish: error: {weights} is not a valid safetensors file (Error while deserializing header: '
        'invalid header length): refusing it']


# ------------------------------------------------------------------------------------ model cards

@pytest.fixture(scope='module')
def extracted(tmp_path_factory):
    """What `timm-coded extract --repo me/x --tag c10` writes (the library call behind it), from a checkpoint
    and data under a temp folder, plus the full model exported as `publish CHECKPOINT` does."""
    import timm_coded  # noqa: F401 (registers the coded models)
    from timm_coded.pipeline import extract_binary_classifiers

    root = tmp_path_factory.mktemp('extract')
    torch.manual_seed(0)
    model = timm.create_model('coded_resnext17_10x2d').eval()
    checkpoint = root / 'runs' / 'small.safetensors'
    checkpoint.parent.mkdir()
    save_file(model.state_dict(), checkpoint)
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(30, 3, 32, 32, generator=generator), torch.arange(10).repeat(3))]
    (cat,) = extract_binary_classifiers(
        model, ['cat'], root / 'hub', loader, checkpoint=checkpoint,
        calibration_source=f"the training split of {root / 'data'}",
        hub_card={'repo_id': 'me/x', 'tag': 'c10', 'dataset': 'cifar10'})
    full = export_artifact(model, root / 'full', architecture='coded_resnext17_10x2d', model_args={},
                           label_names=model.class_names, card={'repo_id': 'me/x', 'tag': 'c10'})
    return {'root': root, 'cat': cat, 'full': full, 'sha256': sha256_file(checkpoint)}


def _portable(text: str, root: Path) -> None:
    assert '/tmp' not in text and str(root) not in text
    assert '{' not in text and '}' not in text  # no Python dict repr


def test_an_extracted_card_is_not_published_and_names_no_local_path(extracted):
    card = ModelCard.load(extracted['cat'] / 'README.md')
    text = card.text
    _portable(str(card), extracted['root'])
    assert '**Not published**' in text
    assert 'me/x' not in text and 'hf-hub:' not in text  # no Hub location before publishing
    assert "model = timm.create_model('local-dir:<folder>', pretrained=True).eval()" in text
    assert 'from the Coded ResNeXt `coded_resnext17_10x2d.c10`.' in text
    assert f"| parent checkpoint | `small.safetensors` (sha256 `{extracted['sha256']}`) |" in text
    assert '| threshold rule | maximises F1 on the training split of data |' in text
    # config.json (published with the card) names the checkpoint the same way
    config = json.loads((extracted['cat'] / 'config.json').read_text())
    assert config['timm_coded']['training']['parent_checkpoint'] == {
        'file': 'small.safetensors', 'sha256': extracted['sha256']}
    assert str(extracted['root']) not in (extracted['cat'] / 'config.json').read_text()


def test_a_planned_card_says_where_it_is_published(extracted):
    plan = plan_publish([extracted['full'], extracted['cat']], 'me/x', remote=None, manifest=Manifest())
    main_commit, cat_commit = plan.commits
    card = cat_commit.export.files[ARTIFACT_FILES.index('README.md')].data.decode('utf-8')
    _portable(card, extracted['root'])
    text = ModelCard(card).text
    assert 'not published' not in text.lower()
    assert 'Published on the Hugging Face Hub: `me/x` at revision `binary-cat`.' in text
    assert ('from the Coded ResNeXt `coded_resnext17_10x2d.c10` (published: `me/x` at revision `main`).'
            in text)
    assert "model = timm.create_model('hf-hub:me/x@binary-cat', pretrained=True).eval()" in text
    assert f"| parent checkpoint | `small.safetensors` (sha256 `{extracted['sha256']}`) |" in text
    full = main_commit.export.files[ARTIFACT_FILES.index('README.md')].data.decode('utf-8')
    assert "model = timm.create_model('hf-hub:me/x@main', pretrained=True).eval()" in full
    # the export folders themselves are unchanged: their cards still say they are not published
    assert 'Not published' in (extracted['cat'] / 'README.md').read_text()


def test_a_planned_card_names_a_parent_published_earlier_at_its_commit(extracted):
    commit = 'a' * 40
    manifest = Manifest((read_export(extracted['full']).to_artifact('me/x', commit),))
    plan = plan_publish([extracted['cat']], 'me/x', remote=None, manifest=manifest)
    text = plan.commits[0].export.files[ARTIFACT_FILES.index('README.md')].data.decode('utf-8')
    assert f'(published: `me/x` at revision `main`, commit `{commit}`)' in text
    _portable(text, extracted['root'])


@pytest.mark.parametrize('offline', ['HF_HUB_OFFLINE', 'unreachable'])
def test_dry_run_plans_offline_against_an_unknown_remote(exports, capsys, monkeypatch, offline):
    from huggingface_hub import constants

    if offline == 'HF_HUB_OFFLINE':
        monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    else:  # nothing listens on this port
        monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    assert main(['publish', *map(str, exports.all_folders()), '--repo', exports.repo_id, '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'remote state unknown (offline or the Hub unreachable): planned as if the repo did not exist yet' in out
    assert 'create_repo(private=False)' in out and out.count('CommitOperationAdd(path_in_repo=\'model.safetensors\'') == 3
    assert 'dry run: nothing was sent' in out
