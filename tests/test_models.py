"""The coded models as timm models: registration, shapes, parameter counts, coding behaviour."""
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_coded
from timm_coded import CodingScheme, SchemeError
from timm_coded.energy import coding_loss, target_codewords
from timm_coded.models.layers import EnergyRecorder, coded_blocks
from conftest import assert_close_at_scale

PAPER_MODELS = ['coded_resnext29_10x11d', 'coded_resnext29_20x6d', 'coded_resnext50_32x4d']
SAMPLE = Path(timm_coded.__file__).parent / 'data' / 'cifar10_sample'


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_models_are_registered_with_pretrained_cfgs():
    names = timm.list_models('coded_*')
    for name in PAPER_MODELS + ['coded_resnext50', 'coded_resnext17_10x2d']:
        assert name in names
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.first_conv == 'conv1' and cfg.classifier == 'fc'
        assert 'arXiv:2202.05343' in cfg.paper_ids
    assert timm.models.get_pretrained_cfg('coded_resnext29_10x11d').input_size == (3, 32, 32)
    assert timm.models.get_pretrained_cfg('coded_resnext50').num_classes == 1000


@pytest.mark.parametrize('name,total,stages', [
    # exact counts of the authors' architectures (DESIGN.md); stages ~0.2/0.9/3.5 M and 0.2/1.2/7.0/14.5 M
    ('coded_resnext29_10x11d', 4_638_926, (0.2e6, 0.9e6, 3.5e6)),
    ('coded_resnext29_20x6d', 4_749_136, (0.2e6, 0.9e6, 3.6e6)),
    ('coded_resnext50_32x4d', 25_027_904, (0.2e6, 1.2e6, 7.0e6, 14.5e6)),
])
def test_parameter_counts_match_the_paper(name, total, stages):
    model = timm.create_model(name, device='meta')
    assert n_params(model) == total
    for stage_name, expected in zip(model.stage_names, stages):
        assert n_params(getattr(model, stage_name)) == pytest.approx(expected, rel=0.05)


def test_control_baseline_is_timm_resnext():
    """Every block uncoded + head bias = timm's resnext50_32x4d: strict load, identical logits."""
    ref = timm.create_model('resnext50_32x4d').eval()
    model = timm.create_model('coded_resnext50_32x4d', coded=False, head_bias=True).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    assert not coded_blocks(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    # the coded model has the same parameter names and shapes, so timm weights fine-tune into it
    coded = timm.create_model('coded_resnext50_32x4d', head_bias=True)
    coded.load_state_dict(ref.state_dict(), strict=True)
    assert len(coded_blocks(coded)) == 6 + 3


def test_stage_ratios_and_schemes():
    model = timm.create_model('coded_resnext29_10x11d')
    assert [s is None for s in model.schemes] == [True, False, False]
    assert model.schemes[1].codewords.sum(1).tolist() == [5] * 10
    assert model.schemes[2].codewords.sum(1).tolist() == [3] * 10
    assert model.class_names[3] == 'cat'
    assert model.coding_loss_weight == 6.
    assert timm.create_model('coded_resnext50_32x4d', device='meta').coding_loss_weight == 1.
    blocks = coded_blocks(model)
    assert [n for n, _ in blocks] == [f'layer{i}.{j}' for i in (2, 3) for j in range(3)]


def test_user_schemes_and_their_errors():
    scheme = CodingScheme(['1100', '0011', '1010'], class_names=['a', 'b', 'c'])
    model = timm.create_model(
        'coded_resnext17_10x2d', num_classes=3, num_subnns=4, num_active=(4, 2, 2),
        schemes=[None, scheme, scheme.to_dict()])
    assert model.class_names == ['a', 'b', 'c']
    assert model.schemes[1] == scheme
    with pytest.raises(SchemeError, match='num_classes=10'):
        timm.create_model('coded_resnext17_10x2d', num_subnns=4, schemes=[None, scheme, scheme])
    with pytest.raises(SchemeError, match='4 but the stage has 10 subNNs'):
        timm.create_model('coded_resnext17_10x2d', num_classes=3, schemes=[None, scheme, scheme])


def test_unknown_model_kwargs_are_rejected():
    with pytest.raises(TypeError):
        timm.create_model('coded_resnext17_10x2d', not_a_model_arg=1)


def test_other_num_classes_gets_a_deterministic_scheme():
    a = timm.create_model('coded_resnext17_10x2d', num_classes=42)
    b = timm.create_model('coded_resnext17_10x2d', num_classes=42)
    for sa, sb in zip(a.schemes[1:], b.schemes[1:]):
        assert sa.num_classes == 42 and sa == sb
        assert sa.min_distance >= 2
    with pytest.raises(SchemeError):  # 300 classes cannot get distinct 3-of-10 codewords (C(10,3) = 120)
        timm.create_model('coded_resnext17_10x2d', num_classes=300)


def _mask_probe(model):
    """Capture the dropSubNNs mask each coded block used (blocks return (out, mask))."""
    masks = {}
    for name, block in coded_blocks(model):
        block.register_forward_hook(lambda m, i, o, name=name: masks.__setitem__(name, o[1]))
    return masks


def test_drop_subnns_rate_per_sample_and_same_code_same_mask():
    torch.manual_seed(0)
    model = timm.create_model('coded_resnext17_10x2d', drop_subnn_rate=0.3).train()
    masks = _mask_probe(model)
    model(torch.randn(512, 3, 16, 16))
    # layer2.{0,1} share one scheme and so one mask; layer3.{0,1} another one
    assert masks['layer2.0'] is masks['layer2.1']
    assert masks['layer3.0'] is masks['layer3.1']
    assert not torch.equal(masks['layer2.0'], masks['layer3.0'])
    mask = masks['layer2.0']
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert (mask == 0).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert len({tuple(row.tolist()) for row in mask}) > 100  # drawn per sample

    independent = timm.create_model('coded_resnext17_10x2d', same_code_same_mask=False).train()
    masks = _mask_probe(independent)
    independent(torch.randn(64, 3, 16, 16))
    assert not torch.equal(masks['layer2.0'], masks['layer2.1'])


def test_eval_is_deterministic_and_drops_nothing():
    model = timm.create_model('coded_resnext17_10x2d', drop_subnn_rate=0.5).eval()
    masks = _mask_probe(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert all(m is None for m in masks.values())


def test_bf16_autocast_on_cpu_gives_finite_float32_energies_and_loss():
    model = timm.create_model('coded_resnext17_10x2d').train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with EnergyRecorder(model) as rec, torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(x)
        losses = [coding_loss(r.energies, target_codewords(y, r.block.codewords), r.block.num_active)
                  for r in rec.records]
    assert logits.dtype == torch.bfloat16
    assert all(r.energies.dtype == torch.float32 and torch.isfinite(r.energies).all() for r in rec.records)
    total = sum(losses)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _sample_batch(per_class=8):
    images, labels = [], []
    classes = sorted(p.name for p in (SAMPLE / 'train').iterdir() if p.is_dir())
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    for k, cls in enumerate(timm_coded.codes.CIFAR10_CLASSES):
        assert cls in classes
        for path in sorted((SAMPLE / 'train' / cls).glob('*.jpg'))[:per_class]:
            pixels = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32) / 255.
            images.append((torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std)
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


def test_optimisation_on_real_images_lowers_the_coding_loss():
    torch.manual_seed(0)
    x, y = _sample_batch()
    model = timm.create_model('coded_resnext17_10x2d', drop_subnn_rate=0.).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    recorder = EnergyRecorder(model)

    def coding_term():
        return sum(coding_loss(r.energies, target_codewords(y, r.block.codewords), r.block.num_active)
                   for r in recorder.records)

    history = []
    for _ in range(12):
        recorder.clear()
        logits = model(x)
        code = coding_term()
        loss = torch.nn.functional.cross_entropy(logits, y) + model.coding_loss_weight * code
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(code.item())
    assert history[-1] < 0.6 * history[0], history


def test_grad_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model('coded_resnext17_10x2d', drop_subnn_rate=0.).train()
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_torchscript_channels_last_and_features():
    model = timm.create_model('coded_resnext17_10x2d').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref)
        cl = model.to(memory_format=torch.channels_last)
        assert_close_at_scale(cl(x.to(memory_format=torch.channels_last)), ref)
    features = timm.create_model('coded_resnext17_10x2d', features_only=True).eval()
    outs = features(x)
    assert [o.shape[1] for o in outs] == features.feature_info.channels() == [32, 64, 128, 256]
    assert [32 // o.shape[-1] for o in outs] == features.feature_info.reduction() == [1, 1, 2, 4]


def test_reset_classifier_updates_codewords():
    model = timm.create_model('coded_resnext17_10x2d')
    model.reset_classifier(20)
    assert model.fc.out_features == 20
    assert all(b.codewords.shape == (20, 10) for _, b in coded_blocks(model))
    model.reset_classifier(0)
    assert isinstance(model.fc, torch.nn.Identity)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 256)


def test_reset_classifier_with_an_impossible_k_keeps_the_trained_head():
    model = timm.create_model('coded_resnext17_10x2d')
    head = model.fc.weight.detach().clone()
    with pytest.raises(SchemeError, match='300 classes need 300 distinct codewords'):
        model.reset_classifier(300)  # C(10, 5) = 252 words at most
    assert model.num_classes == 10 and model.fc.weight.shape == (10, 256) and torch.equal(model.fc.weight, head)
    assert [s.num_classes for s in model.schemes if s is not None] == [10, 10]


def test_create_model_with_an_ungeneratable_k_says_what_the_user_can_do():
    with pytest.raises(SchemeError, match=r'num_classes=1000000 has no built-in coding scheme .* none could be '
                                          r'generated within 10s .* pass it per stage with schemes=\[\.\.\.\]') as info:
        timm.create_model('coded_resnext50_32x4d', num_classes=10 ** 6, device='meta')
    assert 'raise the time budget' not in str(info.value)  # create_model has no time budget to raise


def test_every_architecture_of_the_table_is_registered_with_its_binary_twin_and_aliases():
    from timm.models import get_pretrained_cfg

    from timm_coded.models.binary import binary_architecture
    from timm_coded.models.coded_resnext import ALIASES, ARCHITECTURES, MODEL_ARCHS

    assert set(MODEL_ARCHS) == set(ARCHITECTURES) | set(ALIASES)
    for name, arch in ARCHITECTURES.items():
        assert timm.is_model(name) and timm.is_model(binary_architecture(name))
        assert get_pretrained_cfg(name).num_classes == arch.num_classes == MODEL_ARCHS[name]['num_classes']
        for alias in arch.aliases:
            assert timm.is_model(alias) and binary_architecture(alias) == binary_architecture(name)
            assert MODEL_ARCHS[alias] == MODEL_ARCHS[name]
    assert sorted(timm.list_models('coded_*_binary')) == sorted(binary_architecture(n) for n in ARCHITECTURES)
    from timm_coded.models.subset import subset_architecture
    assert sorted(timm.list_models('coded_*_subset')) == sorted(subset_architecture(n) for n in ARCHITECTURES)
