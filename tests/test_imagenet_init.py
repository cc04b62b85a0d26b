"""`coded_resnext50_32x4d.a1h_in1k`: coded fine-tuning that starts from timm's own ResNeXt-50 weights.

The tag loads timm's repository `timm/resnext50_32x4d.a1h_in1k` from the Hub. Offline, the local Hub
server (olah, see hub_server.py) serves a repository of that name holding a real timm `resnext50_32x4d`
(random weights with non-trivial BN statistics), written by timm's own `save_for_hf` exactly as timm
publishes its weights; the real huggingface_hub client and timm's loader fetch it. No mocks.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import timm
from safetensors.torch import load_file, save_file
from timm.models import get_pretrained_cfg, save_for_hf

import timm_coded  # noqa: F401  (registers the models)
from hub_server import local_hub, point_client_at  # noqa: F401 (fixtures)
from timm_coded.errors import CheckpointMismatchError
from timm_coded.training import CodedClassificationTask

TAG = 'coded_resnext50_32x4d.a1h_in1k'
SOURCE = 'resnext50_32x4d.a1h_in1k'  # timm's cfg: its Hub repo is what the tag loads
REPO = get_pretrained_cfg(SOURCE).hf_hub_id
NUM_CLASSES = 7  # no shipped coding scheme: one is generated, as for any fine-tuning dataset
HEAD = ('fc.weight', 'fc.bias')


def _timm_model(name: str, seed: int) -> nn.Module:
    """A real timm model whose every tensor is distinctive (timm zero-initialises the last BN gammas)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(seed + 1)
        model.fc.bias.uniform_(-1., 1.)
    return model.eval()


class Served:
    """timm's repository as the Hub serves it, on the local server."""

    def __init__(self, hub, root: Path):
        self.hub = hub
        self.root = root
        self.folder = root / 'resnext50_32x4d'
        save_for_hf(_timm_model('resnext50_32x4d', seed=3), self.folder, safe_serialization=True)
        self.state = load_file(self.folder / 'model.safetensors')
        hub.commit_files(REPO, self.folder, 'main', message='timm resnext50_32x4d')

    def serve_variant(self, repo_id: str, state) -> str:
        """Serve `state` (timm's config.json beside it) as another repository."""
        folder = self.root / repo_id.replace('/', '--')
        folder.mkdir()
        (folder / 'config.json').write_bytes((self.folder / 'config.json').read_bytes())
        save_file(state, folder / 'model.safetensors', metadata={'format': 'pt'})
        self.hub.commit_files(repo_id, folder, 'main')
        return repo_id


@pytest.fixture(scope='module')
def served(local_hub, tmp_path_factory):
    return Served(local_hub, tmp_path_factory.mktemp('timm-repo'))


@pytest.fixture(scope='module')
def client(served, tmp_path_factory):
    """huggingface_hub (and so timm) pointed at the local server, with an empty cache, for the module."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp('hf-cache')
        point_client_at(mp, served.hub.url, cache)
        yield cache


@pytest.fixture(scope='module')
def finetune(client):
    """What a user fine-tuning on a 7-class dataset creates."""
    torch.manual_seed(0)
    return timm.create_model(TAG, pretrained=True, num_classes=NUM_CLASSES)


def test_the_tag_is_timms_weights_and_data_config():
    cfg = get_pretrained_cfg(TAG).to_dict()
    upstream = get_pretrained_cfg(SOURCE).to_dict()
    assert cfg['hf_hub_id'] == upstream['hf_hub_id'] == 'timm/resnext50_32x4d.a1h_in1k'
    assert not cfg['url']  # one source: the Hub repository
    for key in ('input_size', 'test_input_size', 'interpolation', 'crop_pct', 'test_crop_pct', 'crop_mode', 'mean',
                'std', 'num_classes', 'pool_size', 'first_conv', 'classifier', 'license'):
        assert cfg[key] == upstream[key], key
    assert timm.list_pretrained('coded_resnext50*') == ['coded_resnext50.a1h_in1k', TAG]
    # the bare name stays the untrained paper architecture: its data config, no weights
    bare = get_pretrained_cfg('coded_resnext50_32x4d').to_dict()
    assert not bare.get('hf_hub_id') and bare['interpolation'] == 'bilinear' and bare['crop_pct'] == 0.875
    assert get_pretrained_cfg('coded_resnext50_32x4d_binary').interpolation == 'bilinear'
    with pytest.raises(RuntimeError, match='No pretrained weights exist'):
        timm.create_model('coded_resnext50_32x4d', pretrained=True, device='meta')


def test_finetuning_starts_from_the_backbone_with_a_new_head(finetune, served, client):
    assert finetune.pretrained_cfg['hf_hub_id'] == REPO and finetune.pretrained_cfg['tag'] == 'a1h_in1k'
    assert (client / 'models--timm--resnext50_32x4d.a1h_in1k').is_dir()  # fetched by the real client
    state = finetune.state_dict()
    backbone = [k for k in served.state if k not in HEAD]
    assert sorted(backbone) == sorted(k for k in state if k not in HEAD)  # every backbone tensor, nothing else
    different = [k for k in backbone if not torch.equal(state[k], served.state[k])]
    assert different == []  # bit-exact
    # the head: fresh, K=7 rows, no bias (the authors' classifier); codewords for K=7 in the coded stages
    assert 'fc.bias' not in state and state['fc.weight'].shape == (NUM_CLASSES, 2048)
    assert not any(torch.equal(row, src) for row in state['fc.weight'] for src in served.state['fc.weight'])
    assert [s.num_classes if s is not None else None for s in finetune.schemes] == [None, None, 7, 7]


def test_one_coded_finetuning_step(finetune):
    model = copy.deepcopy(finetune).train()  # the module's model stays as loaded
    task = CodedClassificationTask(model=model, criterion=nn.CrossEntropyLoss())
    assert task.coding_loss.num_blocks == 9  # layer3 (6 blocks, 16/32 active) + layer4 (3 blocks, 8/32)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([0, 6])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    result = task(x, y)
    assert result['output'].shape == (2, NUM_CLASSES)
    assert torch.isfinite(result['loss']) and result['coding_loss'] > 0
    torch.testing.assert_close(result['loss'], result['loss_without_coding'] + result['coding_loss'])
    result['loss'].backward()
    optimizer.step()
    for name in ('fc.weight', 'layer3.0.conv3.weight', 'layer1.0.conv2.weight', 'conv1.weight'):
        assert not torch.equal(before[name], model.get_parameter(name)), name


def test_1000_classes_keep_timms_classifier_without_its_bias(client, served, caplog):
    with caplog.at_level(logging.WARNING, logger='timm_coded.models.coded_resnext'):
        model = timm.create_model(TAG, pretrained=True)
    state = model.state_dict()
    assert torch.equal(state['fc.weight'], served.state['fc.weight']) and 'fc.bias' not in state
    assert all(torch.equal(state[k], served.state[k]) for k in state)
    assert 'fc.bias dropped' in caplog.text and 'head_bias=True' in caplog.text


def test_features_and_grayscale_load_the_backbone(client, served):
    # what timm's own suite asks of every pretrained tag: in_chans != 3 and features_only
    model = timm.create_model(TAG, pretrained=True, features_only=True, in_chans=1)
    state = model.state_dict()
    torch.testing.assert_close(state['conv1.weight'], served.state['conv1.weight'].sum(dim=1, keepdim=True))
    assert torch.equal(state['layer4.2.bn3.running_var'], served.state['layer4.2.bn3.running_var'])
    with torch.no_grad():
        features = model.eval()(torch.randn(1, 1, 64, 64))
    assert [f.shape[1] for f in features] == [64, 256, 512, 1024, 2048]


def _with_nan(state, key):
    bad = dict(state)
    bad[key] = state[key].clone()
    bad[key].view(-1)[0] = float('nan')
    return bad


@pytest.mark.parametrize('case, message', [
    ('resnet50', r"timm/resnet50\.a1_in1k does not fit coded_resnext50_32x4d \(it needs timm resnext50_32x4d "
                 r"weights\): 176 tensor\(s\) of another shape, e.g\. layer1\.0\.conv1\.weight is \(64, 64, 1, 1\), "
                 r"the model needs \(128, 64, 1, 1\)"),
    ('renamed', r'2 missing tensor\(s\), e\.g\. layer2\.0\.conv1\.weight; 2 unexpected tensor\(s\), e\.g\. '
                r'layer2\.0\.conv1\.weight_orig'),
    ('nan', r'layer3\.1\.conv2\.weight holds 1 non-finite value\(s\) \(NaN/inf\): refusing it'),
])
def test_a_repository_that_does_not_fit_is_refused(client, served, finetune, case, message):
    if case == 'resnet50':  # timm's resnet50: the same names, other shapes
        state = _timm_model('resnet50', seed=4).state_dict()
    elif case == 'renamed':  # two tensors missing, two unexpected (e.g. a pruning wrapper's names)
        state = {(k + '_orig' if k in ('layer2.0.conv1.weight', 'layer3.0.conv1.weight') else k): v
                 for k, v in served.state.items()}
    else:
        state = _with_nan(served.state, 'layer3.1.conv2.weight')
    repo = served.serve_variant(f'timm/{case}.a1_in1k' if case == 'resnet50' else f'acme/resnext50-{case}', state)
    # a new head: timm's loader goes non-strict, so only the tag's own check stands between a wrong
    # repository and a silently random backbone (schemes: the fine-tuning model's, not generated again)
    with pytest.raises(CheckpointMismatchError, match=message) as error:
        timm.create_model(TAG, pretrained=True, num_classes=NUM_CLASSES, schemes=finetune.schemes,
                          pretrained_cfg_overlay=dict(hf_hub_id=repo))
    assert '\n' not in str(error.value) and repo in str(error.value)
