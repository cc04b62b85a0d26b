"""Every path that loads weights checks them: the manifest's sha256 on timm's pretrained path, and
no non-floating or non-finite weights from any checkpoint."""
import dataclasses

import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_coded.hub.manifest
from timm_coded.models.binary import load_checkpoint
from timm_coded.errors import CheckpointMismatchError, IntegrityError
from timm_coded.hub.manifest import load_manifest

ARCH = 'coded_resnext17_10x2d'
ZOO = 'coded_resnext17_10x8d'  # has shipped weights


def _default_full_artifact():
    return next(a for a in load_manifest().find(architecture=ZOO) if a.kind == 'full')


def test_timm_pretrained_loading_verifies_the_manifest_sha256(monkeypatch):
    real = load_manifest()
    artifact = _default_full_artifact()
    files = tuple(dataclasses.replace(f, sha256='0' * 64) if f.path.endswith('.safetensors') else f
                  for f in artifact.files)
    tampered = dataclasses.replace(real, artifacts=tuple(
        dataclasses.replace(a, files=files) if a.name == artifact.name else a for a in real.artifacts))
    monkeypatch.setattr(timm_coded.hub.manifest, 'load_manifest', lambda *args, **kwargs: tampered)
    with pytest.raises(IntegrityError, match=r'model\.safetensors has sha256 [0-9a-f]{64}, the weights manifest says'):
        timm.create_model(artifact.name, pretrained=True)
    monkeypatch.undo()
    assert timm.create_model(artifact.name, pretrained=True) is not None  # the intact file loads


def _weights(dtype_or_value):
    state = timm.create_model(ARCH).state_dict()
    if isinstance(dtype_or_value, torch.dtype):
        return {k: (v.to(dtype_or_value) if v.is_floating_point() else v) for k, v in state.items()}
    state['layer3.1.conv3.weight'][0, 0] = dtype_or_value
    return state


@pytest.mark.parametrize('bad, message', [
    (torch.bool, 'is bool, not floating point'), (torch.uint8, 'is uint8, not floating point'),
    (torch.int64, 'is int64, not floating point'), (float('nan'), '1 non-finite value'),
    (float('inf'), '1 non-finite value')])
def test_non_floating_or_non_finite_weights_are_refused_everywhere(tmp_path, bad, message):
    path = tmp_path / 'model.safetensors'
    save_file(_weights(bad), str(path))
    with pytest.raises(CheckpointMismatchError, match=message):
        load_checkpoint(ARCH, path)
    with pytest.raises(CheckpointMismatchError, match=message):  # timm's own pretrained path
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_a_timm_resnext50_checkpoint_is_named_without_building_a_coded_head(tmp_path):
    state = timm.create_model('resnext50_32x4d', num_classes=1000).state_dict()
    path = tmp_path / 'resnext50.safetensors'
    save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError, match=r'looks like a timm resnext50_32x4d'):
        load_checkpoint(ARCH, path)
