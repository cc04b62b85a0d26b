"""The fast coded block equals a naive per-subNN implementation written here from the paper.

The naive version materialises every subNN output t_n = W_n h_n (as the authors' code does),
measures E_n = mean(t_n^2), normalises by sqrt(mean_n E_n), drops, sums, then BN + skip + ReLU.
"""
import pytest
import torch
import torch.nn.functional as F

from timm_coded.energy import coding_loss, decoding_scores, normalized_energies, target_codewords
from timm_coded.models.layers import CodedBottleneck, EnergyRecorder, draw_subnn_mask

from conftest import assert_close_at_scale


def _randomize_bn(module: torch.nn.Module, generator: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=generator) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=generator) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=generator) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=generator) + 0.5


def make_block(num_subnns=6, width=5, active=2, in_chs=12, out_chs=16, stride=2, present=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    downsample = torch.nn.Sequential(
        torch.nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), torch.nn.BatchNorm2d(out_chs))
    num_classes = 5
    words = torch.zeros(num_classes, num_subnns)
    for k in range(num_classes):
        words[k, [(k + j) % num_subnns for j in range(active)]] = 1
    block = CodedBottleneck(
        in_chs, out_chs, num_subnns=num_subnns, subnn_width=width, num_active=active, stride=stride,
        downsample=downsample, present_subnns=present, codewords=words, drop_subnn_rate=0.25)
    _randomize_bn(block, g)
    for p in block.parameters():
        if p.dim() == 4:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    return block


def naive_forward(block: CodedBottleneck, x: torch.Tensor, mask=None):
    """Reference: every subNN output materialised, as written in the paper."""
    h = block.act2(block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x))))))
    d, n_present = block.subnn_width, block.num_present
    w = block.conv3.weight
    outputs = [F.conv2d(h[:, i * d:(i + 1) * d], w[:, i * d:(i + 1) * d]) for i in range(n_present)]
    outputs = [t * g for t, g in zip(outputs, block.subnn_gate)]
    energies = torch.stack([t.pow(2).mean(dim=(1, 2, 3)) for t in outputs], dim=1)
    scale = torch.sqrt(energies.sum(1) / block.num_subnns)  # the original N, also when sliced
    total = 0
    for i, t in enumerate(outputs):
        t = t / scale[:, None, None, None]
        if mask is not None:
            t = t * mask[:, i, None, None, None]
        total = total + t
    out = block.bn3(total) + block.downsample(x)
    return F.relu(out), energies


def naive_coding_loss(energies, words, active, n, power=4.):
    e_bar = energies / energies.mean(1, keepdim=True)
    return ((active / n * e_bar - words).abs() ** power).mean()


@pytest.mark.parametrize('train', [False, True])
def test_fast_block_equals_naive_reference(train):
    torch.manual_seed(0)
    block = make_block().double()
    block.train(train)
    x = torch.randn(4, 12, 9, 9, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 4])
    mask = draw_subnn_mask(4, 6, 0.25, x.device).double() if train else None
    if train:
        assert (mask == 0).any(), 'the test must drop something'
        block.new_mask = False  # use the mask given, to compare with the naive version

    def run(fn):
        if train:  # identical BN batch statistics on both sides need identical running-stat state
            state = {k: v.clone() for k, v in block.state_dict().items()}
        out, energies = fn()
        loss_code = coding_loss(energies, target_codewords(labels, block.codewords), 2, 6)
        total = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + 3 * loss_code
        grads = torch.autograd.grad(total, [x] + list(block.parameters()))
        if train:
            block.load_state_dict(state)
        return out, energies, loss_code, grads

    def fast():
        with EnergyRecorder(block) as rec:
            out, _ = block(x, mask)
        return out, rec.records[0].energies

    out_f, e_f, l_f, g_f = run(fast)
    out_n, e_n, l_n, g_n = run(lambda: naive_forward(block, x, mask))
    assert e_f.dtype == torch.float32  # energies are always computed in float32
    torch.testing.assert_close(e_f.double(), e_n, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out_f, out_n, rtol=1e-5, atol=1e-6)
    naive_loss = naive_coding_loss(e_n, block.codewords[labels].double(), 2, 6)
    torch.testing.assert_close(l_f.double(), naive_loss, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(l_n.double(), naive_loss, rtol=1e-5, atol=1e-8)
    for gf, gn in zip(g_f, g_n):
        torch.testing.assert_close(gf, gn, rtol=1e-4, atol=1e-6)


def test_float32_block_matches_float64_reference():
    block = make_block(seed=3)
    block.eval()
    x = torch.randn(2, 12, 8, 8)
    out32, _ = block(x)
    out64, _ = naive_forward(block.double(), x.double())
    assert (out32.double() - out64).abs().max() < 1e-5


def test_removed_subnns_equal_zeroed_outputs_and_keep_original_n():
    block = make_block(seed=1).eval()
    x = torch.randn(3, 12, 8, 8)
    block.subnn_gate[torch.tensor([1, 4])] = 0.
    with EnergyRecorder(block) as rec:
        out, _ = block(x)
    ref, ref_energies = naive_forward(block, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    energies = rec.records[0].energies
    assert torch.all(energies[:, [1, 4]] == 0)
    # the normalization still divides by N = 6: the kept energies sum to N after it
    torch.testing.assert_close(normalized_energies(energies, 6).sum(1), torch.full((3,), 6.))


def test_sliced_block_equals_gated_full_block():
    full = make_block(seed=2).eval()
    present = [0, 2, 5]
    sliced = make_block(present=present, seed=2).eval()
    d = full.subnn_width
    channels = torch.tensor([i * d + j for i in present for j in range(d)])
    sd = full.state_dict()
    for name in ('conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var',
                 'conv2.weight', 'bn2.weight', 'bn2.bias', 'bn2.running_mean', 'bn2.running_var'):
        sd[name] = sd[name][channels]
    sd['conv3.weight'] = sd['conv3.weight'][:, channels]
    sliced.load_state_dict(sd)
    full.subnn_gate.zero_()
    full.subnn_gate[present] = 1.
    x = torch.randn(2, 12, 8, 8)
    torch.testing.assert_close(sliced(x)[0], full(x)[0], rtol=1e-5, atol=1e-6)


def test_normalized_energies_sum_to_n_and_decoding_picks_the_codeword():
    energies = torch.rand(7, 6) + 0.1
    assert torch.allclose(normalized_energies(energies).sum(1), torch.full((7,), 6.))
    words = torch.tensor([[1., 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])
    # energies concentrated on a class's active subNNs decode to that class
    energies = words[[2, 0, 1]] * 5 + 0.01
    assert decoding_scores(energies, words, 2).argmax(1).tolist() == [2, 0, 1]


def test_soft_targets_give_mixed_codewords_and_jsd_batches_repeat():
    words = torch.tensor([[1., 0, 1, 0], [0, 1, 0, 1]])
    soft = torch.tensor([[0.75, 0.25], [0.0, 1.0]])
    mixed = target_codewords(soft, words)
    torch.testing.assert_close(mixed, torch.tensor([[0.75, 0.25, 0.75, 0.25], [0, 1, 0, 1.]]))
    hard = target_codewords(torch.tensor([1, 0]), words, batch_size=6)
    assert hard.shape == (6, 4) and torch.equal(hard[2:4], hard[:2])
    with pytest.raises(ValueError, match='do not match'):
        target_codewords(torch.zeros(2, 3), words)


def test_loss_power_and_threshold():
    energies = torch.tensor([[4., 0., 0., 0.]])  # E_bar = [4, 0, 0, 0]; r = 1/4 -> r E_bar = [1, 0, 0, 0]
    words = torch.tensor([[0., 1., 0., 0.]])
    # |r E_bar - w| = [1, 1, 0, 0]
    assert coding_loss(energies, words, 1, 4, power=4.).item() == pytest.approx(0.5)
    assert coding_loss(energies, words, 1, 4, power=2., threshold=0.5).item() == pytest.approx(0.125)


def test_zero_input_stays_finite():
    block = make_block().eval()
    out, _ = block(torch.zeros(2, 12, 8, 8))
    assert torch.isfinite(out).all()


def test_per_sample_gate_equals_one_gate_per_sample():
    block = make_block(seed=4).eval()
    x = torch.randn(3, 12, 8, 8)
    gates = torch.tensor([[1., 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    expected = []
    for i in range(3):
        block.subnn_gate = gates[i].clone()
        expected.append(block(x[i:i + 1])[0])
    block.subnn_gate = gates.clone()
    torch.testing.assert_close(block(x)[0], torch.cat(expected), rtol=1e-5, atol=1e-6)


def test_coded_conv3_is_initialised_like_the_authors_grouped_conv():
    import timm

    torch.manual_seed(0)
    model = timm.create_model('coded_resnext29_10x11d')
    for name, block in model.named_modules():
        if not isinstance(block, CodedBottleneck):
            continue
        std = float(block.conv3.weight.std())
        c_out = block.conv3.out_channels
        # the authors' conv3 is grouped with N*C outputs: Kaiming fan-out gives sqrt(2 / (N*C));
        # timm's dense init sqrt(2 / C) is kept where the block is an ordinary (uncoded) ResNeXt block
        expected = (2. / (block.num_subnns * c_out)) ** 0.5 if block.coded else (2. / c_out) ** 0.5
        assert std == pytest.approx(expected, rel=0.05), name


def test_the_block_loss_and_decoder_share_one_normalisation(monkeypatch):
    # energy.py owns the arithmetic: changing normalization_scale changes the block's output,
    # and the loss / decoder read the same normalised energies (a one-file change)
    import timm_coded.energy as energy
    import timm_coded.models.layers as layers

    torch.manual_seed(0)
    block = CodedBottleneck(32, 32, num_subnns=4, subnn_width=2, num_active=2).eval()
    torch.nn.init.ones_(block.bn3.weight)
    x = torch.randn(3, 32, 8, 8)
    with torch.no_grad():
        reference = block(x)[0]
    monkeypatch.setattr(layers, 'normalization_scale', lambda e, n: 2 * energy.normalization_scale(e, n))
    with torch.no_grad():
        doubled = block(x)[0]
    assert not torch.allclose(doubled, reference)
    e = torch.rand(5, 4)
    words = torch.tensor([[1., 1., 0., 0.]] * 5)
    assert torch.allclose(energy.rescaled_energies(e, 2, 4).sum(1), torch.full((5,), 2.))
    torch.testing.assert_close(energy.coding_loss(e, words, 2, 4),
                               (energy.rescaled_energies(e, 2, 4) - words).abs().pow(4).mean())


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('one_product', [True, False])
def test_low_precision_second_moments_and_their_gradient_are_exact(channels_last, one_product, monkeypatch):
    # the bfloat16 fast path's products and hand-written backward (both strategies), in float64
    from timm_coded import energy
    if not one_product:
        monkeypatch.setattr(energy, 'FULL_PRODUCT_MAX_CHANNELS', 4)  # 12 channels: per-subNN products
    torch.manual_seed(0)
    h = torch.randn(2, 3 * 4, 5, 6, dtype=torch.float64)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    h.requires_grad_(True)
    moments = energy._LowPrecisionSecondMoments.apply
    per_subnn = h.unflatten(1, (3, 4)).flatten(3)
    torch.testing.assert_close(moments(h, 3), per_subnn @ per_subnn.transpose(-1, -2), rtol=1e-6, atol=0)
    assert torch.autograd.gradcheck(lambda t: moments(t, 3), (h,))
    grad, = torch.autograd.grad(moments(h, 3).sum(), h)
    assert grad.is_contiguous(memory_format=torch.channels_last) == channels_last  # h's layout


@pytest.mark.parametrize('width', [2, 30])
def test_bf16_energies_agree_with_float32_on_the_same_activations(width):
    # Under bf16 autocast the second moments stay in bfloat16 (only S is rounded): the energies
    # must stay within 1 % of the float32 computation on the same (bf16-rounded) activations,
    # and their gradient must match too, in both layouts and on both product paths.
    from timm_coded import energy
    num_subnns = 10 if width == 30 else 6  # N*d = 300 > FULL_PRODUCT_MAX_CHANNELS, 12 below
    assert (num_subnns * width > energy.FULL_PRODUCT_MAX_CHANNELS) == (width == 30)
    torch.manual_seed(0)
    weight = torch.randn(16, num_subnns * width, 1, 1)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        h = torch.relu(torch.randn(4, num_subnns * width, 8, 8)).to(torch.bfloat16)
        h = h.contiguous(memory_format=memory_format)
        fast_h, ref_h = h.clone().requires_grad_(True), h.float().requires_grad_(True)
        fast = energy.subnn_energies(fast_h, weight, num_subnns)
        reference = energy.subnn_energies(ref_h, weight, num_subnns)
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast, reference, rtol=1e-2, atol=0)
        probe = torch.randn_like(reference)
        (fast * probe).sum().backward()
        (reference * probe).sum().backward()
        assert_close_at_scale(fast_h.grad.float(), ref_h.grad, rtol=2e-2)


def test_gram_matrices_stay_float32_under_autocast():
    # Under bf16 autocast only S is rounded to bfloat16: the Gram matrices W_n^T W_n and the
    # contraction stay float32 (autocast would run the Gram product as a bf16 bmm). Activations of
    # 0 and 1 over 64 pixels make every entry of S a small integer, exact in bfloat16 whatever order
    # a GEMM sums in, so the only rounding left to see is the Gram matrices'.
    from timm_coded import energy
    torch.manual_seed(0)
    num_subnns, width = 10, 16
    weight = torch.randn(128, num_subnns * width, 1, 1) * 0.05
    h = (torch.rand(4, num_subnns * width, 8, 8) < 0.5).to(torch.bfloat16)
    h = h.contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', torch.bfloat16):
        fast = energy.subnn_energies(h, weight, num_subnns)
    reference = energy.subnn_energies(h.float(), weight, num_subnns)  # no autocast: float32 throughout
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=0)  # with a bf16 Gram: ~1e-3 apart


def test_float16_autocast_keeps_second_moments_in_float32():
    # float16 tops out at 65504: sums of squares over 1024 pixels of activations ~300 overflow it,
    # so under float16 autocast the second moments must still be formed in float32
    from timm_coded import energy
    torch.manual_seed(0)
    weight = torch.randn(16, 40, 1, 1)
    h = (torch.relu(torch.randn(2, 40, 32, 32)) * 300).half()
    with torch.autocast('cpu', torch.float16):
        fast = energy.subnn_energies(h, weight, 10)
    reference = energy.subnn_energies(h.float(), weight, 10)
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=0)


def test_energies_on_the_meta_device():
    # timm's model tests build and run models on 'meta', where even torch.autocast(enabled=False)
    # raises: the float32 guards of the energy arithmetic must step aside there
    from timm_coded import energy
    h = torch.empty(2, 40, 8, 8, device='meta')
    weight = torch.empty(16, 40, 1, 1, device='meta')
    energies = energy.subnn_energies(h, weight, 10)
    assert energies.device.type == 'meta' and energies.shape == (2, 10) and energies.dtype == torch.float32
