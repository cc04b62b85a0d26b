"""The zoo's CIFAR-10 weights shipped in the package: what they do, offline, by timm name and class name."""
import pytest
import timm
import torch

import timm_coded
from timm_coded.models.binary import gate_to_class, gate_to_classes
from timm_coded.data import make_loader, sample_data_dir
from timm_coded.hub.manifest import load_manifest
from conftest import assert_close_at_scale

ARCH = 'coded_resnext17_10x8d'


def _default_artifact():
    # timm's default pretrained tag is the first one registered: the manifest's first full artifact
    return next(a for a in load_manifest().find(architecture=ARCH) if a.kind == 'full')


@pytest.fixture(scope='module')
def pretrained():
    return timm.create_model(ARCH, pretrained=True).eval()


@pytest.fixture(scope='module')
def sample_val(pretrained):
    # the shipped sample's val images lie in the held-out split the zoo model never trained on
    return make_loader(sample_data_dir(), model_or_data_config=pretrained, train=False, batch_size=300, split='val')


def test_pretrained_by_architecture_name_is_the_zoo_model_and_classifies_held_out_images(pretrained, sample_val):
    assert pretrained.pretrained_cfg['tag'] == _default_artifact().tag
    correct = total = 0
    with torch.no_grad():
        for images, targets in sample_val:
            correct += (pretrained(images).argmax(1) == targets).sum().item()
            total += targets.numel()
    # 600 held-out images; random weights give ~10 %, the shipped toy (removed) gave ~35 %
    assert total == 600 and correct / total > 0.75


def test_every_class_has_a_binary_classifier_equal_to_the_gated_parent(pretrained):
    x = torch.randn(4, 3, 32, 32)
    for k, name in enumerate(pretrained.class_names):
        timm_name = f'{ARCH}_binary.{_default_artifact().tag}_{name}'
        entry = load_manifest().get(timm_name)
        with torch.no_grad(), gate_to_class(pretrained, k):
            expected = pretrained(x)[:, k]
        # by class name, and by timm name (the manifest says which class's subNNs the weights are)
        for binary in (timm_coded.load_binary_classifier(ARCH, name), timm.create_model(timm_name, pretrained=True)):
            binary.eval()
            assert binary.class_index == k and binary.class_name == name
            assert binary.threshold == pytest.approx(entry.binary.threshold)
            with torch.no_grad():
                assert_close_at_scale(binary(x)[:, 0], expected)


def test_a_binary_classifier_separates_its_class_on_held_out_images(pretrained, sample_val):
    cat = timm_coded.load_binary_classifier(ARCH, 'cat').eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, targets in sample_val:
            logits.append(cat(images)[:, 0])
            labels.append(targets == pretrained.class_names.index('cat'))
    logits, labels = torch.cat(logits), torch.cat(labels)
    predicted = logits >= cat.threshold
    recall = (predicted & labels).sum().item() / labels.sum().item()
    false_positive_rate = (predicted & ~labels).sum().item() / (~labels).sum().item()
    assert recall > 0.5 and false_positive_rate < 0.15  # 60 cats among 600 images


def test_shipped_subset_classifiers_load_by_timm_name_and_equal_the_gated_parent(pretrained, sample_val):
    subsets = [a for a in load_manifest().find(kind='subset') if a.parent == _default_artifact().name]
    assert {a.subset.name for a in subsets} == {'vehicles', 'pets'}
    x = torch.randn(4, 3, 32, 32)
    for artifact in subsets:
        subset = timm.create_model(artifact.name, pretrained=True).eval()
        indices = list(artifact.subset.class_indices)
        assert subset.class_indices == indices and subset.class_names == list(artifact.subset.class_names)
        assert subset.threshold == pytest.approx(artifact.subset.threshold)
        with torch.no_grad(), gate_to_classes(pretrained, indices):
            expected = pretrained(x)[:, indices]
        with torch.no_grad():
            assert_close_at_scale(subset(x), expected)
            # on held-out images: "one of the subset?" and "which one?" both work
            predicted, targets = zip(*[(subset.predict(images), t) for images, t in sample_val])
        predicted, targets = torch.cat(predicted), torch.cat(targets)
        members = torch.isin(targets, torch.tensor(indices))
        assert (predicted[members] != -1).float().mean() > 0.8 and (predicted[~members] == -1).float().mean() > 0.8
        assert (predicted[members] == targets[members]).float().mean() > 0.7


def test_unknown_class_names_what_exists():
    with pytest.raises(timm_coded.UnknownClassError, match='available: 0 airplane'):
        timm_coded.load_binary_classifier(ARCH, 'unicorn')


def test_the_cpu_toy_weights_are_gone():
    # the 38 % demonstration weights must never load by accident
    assert not [a for a in load_manifest() if a.architecture.startswith('coded_resnext17_10x2d')]
    assert timm.list_pretrained('coded_resnext17_10x2d*') == []


def test_bf16_fast_path_decodes_and_scores_like_float32(pretrained, sample_val):
    # The CPU fast path (channels_last + bf16 autocast, second moments in bfloat16) against the
    # float32 reference on the trained model and real held-out images. Stated tolerances: early
    # decoding and the classifier pick the same class for >= 97 % of images, the coding loss is
    # within 1 % and the normalised energies r*E_bar within 0.03 (they sum to N_act = 3 or 5).
    from timm_coded.analysis.decoding import collect_outputs, decoder_blocks, early_predictions
    from timm_coded.energy import coding_loss, rescaled_energies, target_codewords
    import copy
    reference = collect_outputs(pretrained, sample_val)
    fast_model = copy.deepcopy(pretrained).to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fast = collect_outputs(fast_model, sample_val)
    same = (fast.logits.argmax(1) == reference.logits.argmax(1)).float().mean()
    assert same >= 0.97
    fast_pred, ref_pred = early_predictions(pretrained, fast), early_predictions(pretrained, reference)
    for name, block in decoder_blocks(pretrained):
        assert (fast_pred[name][0] == ref_pred[name][0]).float().mean() >= 0.97, name
        e_fast = rescaled_energies(fast.energies[name], block.num_active, block.num_subnns)
        e_ref = rescaled_energies(reference.energies[name], block.num_active, block.num_subnns)
        assert (e_fast - e_ref).abs().max() < 0.03, name
        words = target_codewords(reference.targets, block.codewords)
        loss_fast = coding_loss(fast.energies[name], words, block.num_active, block.num_subnns)
        loss_ref = coding_loss(reference.energies[name], words, block.num_active, block.num_subnns)
        assert loss_fast == pytest.approx(loss_ref.item(), rel=0.01), name
