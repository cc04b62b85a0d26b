"""The CIFAR-10 weights shipped in the package: listed in the manifest, trained, loadable offline."""
import pytest
import timm
import torch

import timm_coded
from timm_coded.binary import gate_to_class
from timm_coded.data import make_loader, sample_data_dir
from timm_coded.manifest import load_manifest

TAG = 'coded_resnext17_10x2d.cifar10_cpu'


def test_manifest_lists_the_full_model_and_ten_binaries_with_honest_metadata():
    manifest = load_manifest()
    full = manifest.get(TAG)
    assert full.kind == 'full' and full.location.to_dict()['type'] == 'package'
    assert full.training['epochs'] == 4 and full.training['train_images'] == 15000
    assert 0.3 < full.metrics['top1'] < 0.5  # 38.7 % on 5,000 held-out images (benchmarks/RESULTS.md)
    binaries = [a for a in manifest.find(kind='binary') if a.parent == TAG]
    assert sorted(a.binary.class_name for a in binaries) == sorted(timm_coded.codes.CIFAR10_CLASSES)
    assert TAG in timm.list_pretrained('coded_resnext17_10x2d*')


def test_pretrained_weights_are_trained_ones():
    model = timm.create_model('coded_resnext17_10x2d', pretrained=True).eval()
    loader = make_loader(sample_data_dir(), model_or_data_config=model, train=False, batch_size=300, split='val')
    correct = total = 0
    with torch.no_grad():
        for images, targets in loader:
            correct += (model(images).argmax(1) == targets).sum().item()
            total += targets.numel()
    assert total == 600 and correct / total > 0.3  # random weights give ~10 %


@pytest.mark.parametrize('cls', ['cat', 7])
def test_load_binary_classifier_by_class_equals_the_gated_parent(cls):
    parent = timm.create_model('coded_resnext17_10x2d', pretrained=True).eval()
    binary = timm_coded.load_binary_classifier('coded_resnext17_10x2d', cls).eval()
    k = parent.class_names.index(cls) if isinstance(cls, str) else cls
    assert binary.class_index == k and binary.class_name == parent.class_names[k]
    entry = load_manifest().get(f'coded_resnext17_10x2d_binary.cifar10_cpu_{parent.class_names[k]}')
    assert binary.threshold == pytest.approx(entry.binary.threshold)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), gate_to_class(parent, k):
        expected = parent(x)[:, k]
    with torch.no_grad():
        torch.testing.assert_close(binary(x)[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_unknown_class_names_what_exists():
    with pytest.raises(timm_coded.UnknownClassError, match='available: 0 airplane'):
        timm_coded.load_binary_classifier('coded_resnext17_10x2d', 'giraffe')
