"""Class-subset classifiers: exactly the masked full model, smaller, calibrated, exported, loaded by timm name."""
import json

import pytest
import timm
import torch

from timm_coded.errors import TimmCodedError, UnknownClassError
from timm_coded.hub import read_export
from timm_coded.hub.layout import artifact_branch
from timm_coded.hub.manifest import Artifact, Manifest, PackageLocation
from timm_coded.models.binary import count_parameters, gate_to_class, gate_to_classes, slice_binary
from timm_coded.models.subset import CodedSubsetClassifier, slice_subset, subset_architecture
from timm_coded.pipeline import calibration_data, export_model
from conftest import assert_close_at_scale, randomised

VEHICLES = ['airplane', 'automobile', 'ship', 'truck']


def _union_of_codewords(model, classes):
    out = []
    for scheme in model.schemes:
        if scheme is None or scheme.is_uncoded:
            out.append(None)
        else:
            out.append(sorted({int(n) for c in classes for n in scheme.active_subnns(scheme.class_index(c))}))
    return out


@pytest.mark.parametrize('classes', [VEHICLES, ['cat', 'dog'], ['truck', 'airplane', 'frog']])
def test_subset_equals_the_full_model_with_the_other_subnns_removed(classes):
    model = randomised().eval()
    subset = slice_subset(model, classes, 'some')
    assert isinstance(subset, CodedSubsetClassifier) and subset.class_names == classes
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad(), gate_to_classes(model, classes):
        expected = model(x)[:, subset.class_indices]
    with torch.no_grad():
        got = subset(x)
    assert got.shape == (6, len(classes))
    assert_close_at_scale(got, expected)
    # physically smaller: each coded block holds exactly the union of the classes' codewords
    kept = [b.present_subnns for b in subset.modules() if hasattr(b, 'present_subnns') and b.coded]
    union = [u for u in _union_of_codewords(model, classes) for _ in range(2) if u is not None]
    assert kept == union
    assert count_parameters(subset) < count_parameters(model)
    # removing subNNs changed the outputs (the gate is not a no-op)
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, subset.class_indices], expected, rtol=1e-3, atol=0)


def test_one_class_subset_logic_matches_the_binary_classifier():
    model = randomised().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), gate_to_class(model, 'cat'):
        one = model(x)[:, 3]
    with torch.no_grad(), gate_to_classes(model, ['cat']):
        assert torch.equal(model(x)[:, 3], one)
    with torch.no_grad():
        assert_close_at_scale(slice_binary(model, 'cat')(x)[:, 0], one)
    # gates are restored
    with torch.no_grad():
        assert not torch.equal(model(x)[:, 3], one)


def test_predict_returns_parent_indices_or_minus_one():
    model = randomised().eval()
    subset = slice_subset(model, ['ship', 'cat'], 'pair')
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits = subset(x)
        subset.threshold = float(logits.max(dim=1).values.median())
        predicted = subset.predict(x)
    best = logits.max(dim=1)
    expected = torch.tensor([8, 3])[best.indices]
    expected[best.values < subset.threshold] = -1
    assert torch.equal(predicted, expected) and (predicted == -1).any() and (predicted != -1).any()


def test_the_subset_architecture_rebuilds_from_json_model_args_and_timm_defaults():
    model = randomised().eval()
    subset = slice_subset(model, VEHICLES, 'vehicles', threshold=0.25)
    args = json.loads(json.dumps(subset._model_args))
    rebuilt = timm.create_model(subset_architecture('coded_resnext17_10x2d'), **args).eval()
    rebuilt.load_state_dict(subset.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), subset(x))
    assert rebuilt.threshold == 0.25 and rebuilt.subset_name == 'vehicles' and rebuilt.class_indices == [0, 1, 8, 9]
    # without arguments (as timm's generic tests build it): every class, i.e. the whole network
    default = timm.create_model('coded_resnext17_10x2d_subset')
    assert default.num_classes == 10 and count_parameters(default) == count_parameters(model)
    # a head size the caller asks for wins over the subset's (num_classes=0: features, as in timm)
    headless = timm.create_model(subset_architecture('coded_resnext17_10x2d'), **dict(args, num_classes=0)).eval()
    with torch.no_grad():
        assert headless(x).shape == (2, headless.num_features)


@pytest.mark.parametrize('classes, name, message', [
    (['cat'], 'one', 'at least two classes'),
    (['cat', 'cat'], 'twice', 'names a class twice'),
    (['cat', 'unicorn'], 'bad', 'unicorn'),
    (VEHICLES, 'Vehicles!', 'subset name'),
])
def test_bad_subsets_get_one_line_errors(classes, name, message):
    with pytest.raises((TimmCodedError, UnknownClassError), match=message):
        slice_subset(randomised(), classes, name)


def test_sliced_classifiers_are_not_sliced_again():
    subset = slice_subset(randomised(), VEHICLES, 'vehicles')
    with pytest.raises(TimmCodedError, match='already a sliced classifier'):
        slice_subset(subset, VEHICLES, 'again')


def test_export_calibrates_and_writes_a_subset_artifact(tmp_path):
    model = randomised().eval()
    data = calibration_data(model, batch_size=300)
    folders = export_model(model, tmp_path, architecture='coded_resnext17_10x2d',
                           card={'repo_id': 'acme/toy', 'tag': 'toy', 'dataset': 'cifar10'}, classes='none',
                           data=data, subsets={'vehicles': VEHICLES})
    assert [f.relative_to(tmp_path).as_posix() for f in folders] == ['full', 'subset/vehicles']
    export = read_export(folders[1])
    assert export.kind == 'subset' and export.name == 'coded_resnext17_10x2d_subset.toy_vehicles'
    assert export.branch == 'subset-vehicles' == artifact_branch('subset', 'vehicles')
    info = export.meta['subset']
    assert info['class_names'] == VEHICLES and info['class_indices'] == [0, 1, 8, 9]
    # the threshold is the F1-maximising one of the membership decision on the calibration images
    subset = timm.create_model('coded_resnext17_10x2d_subset', pretrained=True,
                               pretrained_cfg_overlay={'file': str(folders[1] / 'model.safetensors')},
                               **export.config['model_args']).eval()
    from timm_coded.models.binary import calibrate_threshold
    from timm_coded.models.subset import subset_logits
    logits, targets = subset_logits(subset, data.calibration)
    members = torch.isin(targets, torch.tensor([0, 1, 8, 9]))
    assert info['threshold'] == pytest.approx(calibrate_threshold(logits.max(dim=1).values, members))
    assert subset.threshold == pytest.approx(info['threshold'])
    # the manifest record: kind 'subset' with its block, valid JSON round trip
    parent = read_export(folders[0]).to_artifact_at(PackageLocation('weights/p'))
    artifact = export.to_artifact_at(PackageLocation('weights/x'))
    again = Manifest.from_dict(json.loads(Manifest((parent, artifact)).to_json())).get(artifact.name)
    assert again.subset.class_names == tuple(VEHICLES) and again.kind == 'subset' and again.parent == parent.name
    card = (folders[1] / 'README.md').read_text()
    assert 'Class-subset classifier **vehicles**' in card and 'class-subset-classifier' in card
    assert 0 < export.meta['metrics']['parameter_share'] < 1
    assert 0 <= export.meta['metrics']['top1_within_subset'] <= 1
    # publishing puts it on its own branch, in its own commit (planned offline: no Hub needed)
    from timm_coded.hub.upload import plan_publish
    plan = plan_publish(folders, 'acme/toy', manifest=Manifest(())).describe()
    assert "create_branch(branch='subset-vehicles'" in plan
    assert 'Publish coded_resnext17_10x2d_subset.toy_vehicles: class-subset classifier vehicles' in plan


def test_manifest_refuses_an_inconsistent_subset_block():
    from timm_coded.errors import ManifestError
    from timm_coded.hub.manifest import ArtifactFile
    base = dict(architecture='coded_resnext17_10x2d_subset', tag='t_v', kind='subset',
                location=PackageLocation('weights/x'), files=(ArtifactFile('model.safetensors', '0' * 64, 1),))
    with pytest.raises(ManifestError, match="kind 'subset' needs a 'subset' block"):
        Artifact(**base)
    good = {'name': 'v', 'class_indices': [0, 1], 'class_names': ['a', 'b'], 'threshold': 0.5}
    d = dict(Artifact.from_dict({**_json(base), 'subset': good}, 'x').to_dict())
    for bad, message in (({**good, 'class_indices': [0, 0]}, 'distinct'),
                         ({**good, 'class_names': ['a']}, 'one name per class index'),
                         ({**good, 'threshold': float('nan')}, 'finite')):
        with pytest.raises(ManifestError, match=message):
            Artifact.from_dict({**d, 'subset': bad}, 'x')


def _json(base):
    return {**base, 'location': base['location'].to_dict(), 'files': [f.to_dict() for f in base['files']]}
