"""The coding loss inside timm's training tasks, driven with the objects train.py builds.

Every expected coding loss is recomputed here from the paper's formula on energies read with a
plain EnergyRecorder: mu * sum_l mean_{b,n} (r_l * N E_bn / sum_i E_bi - w_bn)^4.
"""
import copy
import logging

import pytest
import torch
import torch.nn as nn
import timm
import timm.task
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.task import resume_task_checkpoint
from timm.task.classification import ClassificationTask as TimmClassificationTask
from timm.utils import CheckpointSaver

import timm_coded  # noqa: F401  (registers the models)
from timm_coded.models.layers import EnergyRecorder
from timm_coded.training import (
    CodedClassificationTask, CodedMultiLabelClassificationTask, CodingLoss, coding_loss_from_recorder,
    install_timm_tasks, timm_tasks_installed, uninstall_timm_tasks,
)

NUM_CLASSES = 10
BATCH = 4
SIZE = 16  # the CIFAR stem keeps 16x16 inputs valid (4x4 after the last stage) and fast


@pytest.fixture
def timm_tasks():
    """timm.task as train.py sees it once timm-coded is active; restored afterwards."""
    was_installed = timm_tasks_installed()
    install_timm_tasks()
    yield timm.task
    if not was_installed:
        uninstall_timm_tasks()


def make_model(seed=0, **kwargs):
    # coded_resnext17_10x2d cut to one block per stage: 2 coded blocks (ratios 5/10 and 3/10), fast
    torch.manual_seed(seed)
    kwargs.setdefault('drop_subnn_rate', 0.)  # deterministic forward passes
    return timm.create_model('coded_resnext17_10x2d', layers=(1, 1, 1), **kwargs)


def batch(seed=1, n=BATCH):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def paper_coding_loss(model, x, target_words_fn):
    """mu * sum of the paper's L_code, from a separate forward pass (differentiable)."""
    with EnergyRecorder(model) as rec:
        model(x)
    total = 0.
    for r in rec.records:
        e = r.energies
        n = r.block.num_subnns
        e_bar = n * e / e.sum(dim=1, keepdim=True)
        words = target_words_fn(r.block.codewords)
        total = total + ((r.block.num_active / n * e_bar - words) ** 4).mean()
    return model.coding_loss_weight * total


def hard_words(y):
    return lambda codewords: codewords[y]


def soft_words(t):
    return lambda codewords: (t / t.sum(dim=1, keepdim=True)) @ codewords


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# --- the loss itself -------------------------------------------------------------------------------
def test_coding_loss_from_recorder_is_the_paper_formula():
    model = make_model()
    x, y = batch()
    recorder = EnergyRecorder(model)
    model(x)
    assert recorder.num_blocks == 2 and len(recorder.records) == 2  # stages 2 and 3
    got = coding_loss_from_recorder(recorder, y, weight=6.)
    assert got.dtype == torch.float32
    expected = paper_coding_loss(model, x, hard_words(y))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # power / threshold are honoured: threshold 0.05, power 2
    manual = 0.
    for r in recorder.records:
        e_bar = r.block.num_subnns * r.energies / r.energies.sum(1, keepdim=True)
        err = (r.block.num_active / r.block.num_subnns * e_bar - r.block.codewords[y]).abs()
        manual = manual + (torch.relu(err - 0.05) ** 2).mean()
    torch.testing.assert_close(coding_loss_from_recorder(recorder, y, 2., power=2., threshold=0.05), 2 * manual)


def test_coding_loss_reads_mu_from_the_model_and_releases_records():
    model = make_model(coding_loss_weight=2.5, coding_loss_power=2.)
    coding = CodingLoss(model)
    x, y = batch()
    model(x)  # outside recording(): nothing kept
    assert coding.records == []
    with coding.recording():
        model(x)
    assert len(coding.records) == 2
    got = coding(y)
    assert coding.records == []  # released after use
    manual = 0.
    with EnergyRecorder(model) as rec:
        model(x)
    for r in rec.records:
        e_bar = 10 * r.energies / r.energies.sum(1, keepdim=True)
        manual = manual + ((r.block.num_active / 10 * e_bar - r.block.codewords[y]) ** 2).mean()
    torch.testing.assert_close(got, 2.5 * manual)
    with pytest.raises(ValueError, match='no energies'):
        coding(y)


# --- the task as train.py creates it ---------------------------------------------------------------
def test_train_py_gets_the_coded_task_and_the_coding_loss_reaches_the_gradients(timm_tasks):
    # train.py: `from timm.task import ClassificationTask` then ClassificationTask(model=..., criterion=...)
    from timm.task import ClassificationTask
    assert ClassificationTask is CodedClassificationTask
    model = make_model()
    reference = copy.deepcopy(model)
    criterion = LabelSmoothingCrossEntropy(smoothing=0.1)
    task = ClassificationTask(model=model, criterion=criterion, device=torch.device('cpu'), dtype=None, verbose=True)
    x, y = batch()
    result = task(x, y)
    assert set(result) == {'loss', 'output', 'coding_loss', 'loss_without_coding'}
    torch.testing.assert_close(result['loss_without_coding'], criterion(result['output'], y))
    expected_coding = paper_coding_loss(copy.deepcopy(model), x, hard_words(y))
    torch.testing.assert_close(result['coding_loss'], expected_coding.detach(), rtol=1e-5, atol=1e-7)
    assert result['coding_loss'] > 0.1
    torch.testing.assert_close(result['loss'], result['loss_without_coding'] + result['coding_loss'])
    result['loss'].backward()

    # timm's own task on an identical model: the gradient difference is exactly d(mu * sum L_code)
    plain = TimmClassificationTask(model=reference, criterion=criterion, verbose=False)
    plain(x, y)['loss'].backward()
    code_model = copy.deepcopy(reference)
    code_model.zero_grad()
    paper_coding_loss(code_model, x, hard_words(y)).backward()
    coded_g, plain_g, code_g = grads(model), grads(reference), grads(code_model)
    conv = 'layer3.0.conv1.weight'
    assert code_g[conv].abs().max() > 1e-4  # the coding loss does pull on the coded blocks
    torch.testing.assert_close(coded_g[conv] - plain_g[conv], code_g[conv], rtol=1e-3, atol=1e-6)
    assert not torch.allclose(coded_g[conv], plain_g[conv])


@pytest.mark.parametrize('model_name,kwargs', [('coded_resnext17_10x2d', {'coded': False}), ('test_resnet', {})])
def test_non_coded_models_train_exactly_as_with_timm(model_name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=NUM_CLASSES, **kwargs)
    twin = copy.deepcopy(model)
    criterion = nn.CrossEntropyLoss()
    x, y = batch(n=4)
    x = nn.functional.interpolate(x, size=32)  # test_resnet needs a bigger input
    ours = CodedClassificationTask(model=model, criterion=criterion)
    assert ours.coding_loss.num_blocks == 0
    theirs = TimmClassificationTask(model=twin, criterion=criterion)
    r_ours, r_theirs = ours(x, y), theirs(x, y)
    assert set(r_ours) == set(r_theirs) == {'loss', 'output'}
    assert torch.equal(r_ours['loss'], r_theirs['loss']) and torch.equal(r_ours['output'], r_theirs['output'])
    r_ours['loss'].backward()
    r_theirs['loss'].backward()
    g_ours, g_theirs = grads(model), grads(twin)
    assert g_ours.keys() == g_theirs.keys() and all(torch.equal(g_ours[k], g_theirs[k]) for k in g_ours)


def test_criterion_kwargs_pass_through(timm_tasks):
    task = timm_tasks.ClassificationTask(make_model(), criterion_kwargs=dict(smoothing=0.1), verbose=False)
    assert isinstance(task.criterion, LabelSmoothingCrossEntropy)
    x, y = batch()
    assert 'coding_loss' in task(x, y)


# --- targets in all the forms train.py produces ------------------------------------------------------
def _mixed(x, y, label_smoothing=0.1):
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=label_smoothing, num_classes=NUM_CLASSES)
    torch.manual_seed(3)
    return mixup(x.clone(), y.clone())


@pytest.mark.parametrize('criterion_name', ['soft_target_ce', 'bce'])
def test_mixup_cutmix_targets_give_mixed_codewords(timm_tasks, criterion_name):
    criterion = SoftTargetCrossEntropy() if criterion_name == 'soft_target_ce' else BinaryCrossEntropy(smoothing=0.1)
    model = make_model()
    x, y = batch()
    x_mix, t = _mixed(x, y)
    assert t.shape == (BATCH, NUM_CLASSES) and not torch.allclose(t.max(1).values, torch.ones(BATCH))
    task = timm_tasks.ClassificationTask(model=model, criterion=criterion, verbose=False)
    result = task(x_mix, t)
    torch.testing.assert_close(result['loss_without_coding'], criterion(result['output'], t))
    expected = paper_coding_loss(copy.deepcopy(model), x_mix, soft_words(t))
    torch.testing.assert_close(result['coding_loss'], expected.detach(), rtol=1e-5, atol=1e-7)
    # the mixed codeword matters: the hard labels' codewords give another loss
    other = paper_coding_loss(copy.deepcopy(model), x_mix, hard_words(y))
    assert abs(other.item() - result['coding_loss'].item()) > 1e-3


def test_bce_and_label_smoothing_with_hard_labels(timm_tasks):
    x, y = batch()
    for criterion in (BinaryCrossEntropy(smoothing=0.1), LabelSmoothingCrossEntropy(smoothing=0.1)):
        model = make_model()
        result = timm_tasks.ClassificationTask(model=model, criterion=criterion, verbose=False)(x, y)
        torch.testing.assert_close(result['loss_without_coding'], criterion(result['output'], y))
        expected = paper_coding_loss(copy.deepcopy(model), x, hard_words(y))
        torch.testing.assert_close(result['coding_loss'], expected.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('repeat_targets', [True, False])
def test_jsd_split_batches(timm_tasks, repeat_targets):
    # --jsd-loss --aug-splits 2: the batch is [clean; augmented]; targets come repeated or once
    model = make_model()
    x, y = batch()
    x2 = torch.cat([x, x.flip(-1)])
    target = torch.cat([y, y]) if repeat_targets else y
    criterion = JsdCrossEntropy(num_splits=2, smoothing=0.1)
    result = timm_tasks.ClassificationTask(model=model, criterion=criterion, verbose=False)(x2, target)
    expected = paper_coding_loss(copy.deepcopy(model), x2, hard_words(torch.cat([y, y])))
    torch.testing.assert_close(result['coding_loss'], expected.detach(), rtol=1e-5, atol=1e-7)


def test_multilabel_task_uses_the_mean_codeword_of_the_positive_classes(timm_tasks):
    assert timm_tasks.MultiLabelClassificationTask is CodedMultiLabelClassificationTask
    model = make_model()
    x, _ = batch()
    t = torch.zeros(BATCH, NUM_CLASSES)
    t[0, [1, 3]] = 1
    t[1, 2] = 1
    t[2, [0, 5, 9]] = 1
    t[3, 7] = 1
    task = timm_tasks.MultiLabelClassificationTask(model=model, verbose=False)
    result = task(x, t)
    expected = paper_coding_loss(copy.deepcopy(model), x, soft_words(t))
    torch.testing.assert_close(result['coding_loss'], expected.detach(), rtol=1e-5, atol=1e-7)


# --- distillation: the student is hooked, the teacher is not ---------------------------------------------
@pytest.mark.parametrize('kind', ['logit', 'feature'])
def test_distillation_tasks_add_the_students_coding_loss_only(timm_tasks, kind):
    student = make_model(seed=0)
    teacher = make_model(seed=5)  # a coded teacher: its energies must not count
    x, y = batch()
    cls = timm_tasks.LogitDistillationTask if kind == 'logit' else timm_tasks.FeatureDistillationTask
    task = cls(student_model=student, teacher_model=teacher, criterion=nn.CrossEntropyLoss(), verbose=False)
    assert task.coding_loss.num_blocks == 2
    result = task(x, y)
    expected = paper_coding_loss(copy.deepcopy(student), x, hard_words(y))
    torch.testing.assert_close(result['coding_loss'], expected.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        result['loss_without_coding'], task.task_loss_weight * result['task_loss'] + task.distill_loss_weight * result['kd_loss'])
    result['loss'].backward()
    assert student.layer3[0].conv1.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


# --- train.py's options ------------------------------------------------------------------------------
def test_gradient_accumulation_divides_the_whole_loss(timm_tasks):
    # train.py: `_loss /= accum_steps` on result['loss'] (in place), then backward per micro-batch
    model = make_model()
    twin = copy.deepcopy(model)
    x, y = batch(n=8)
    task = timm_tasks.ClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)
    model.eval()  # batch-independent BN so that micro-batches add up to the full batch
    for xs, ys in zip(x.split(4), y.split(4)):
        loss = task(xs, ys)['loss']
        loss /= 2
        loss.backward()
    twin.eval()
    full = timm_tasks.ClassificationTask(model=twin, criterion=nn.CrossEntropyLoss(), verbose=False)(x, y)
    assert full['coding_loss'] > 0.1
    full['loss'].backward()
    g, g_full = grads(model), grads(twin)
    for name in ('layer3.0.conv1.weight', 'layer2.0.conv3.weight', 'fc.weight'):
        torch.testing.assert_close(g[name], g_full[name], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_keeps_the_coding_loss_in_float32(timm_tasks):
    model = make_model()
    x, y = batch()
    task = timm_tasks.ClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)
    fp32 = task(x, y)['coding_loss']
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        result = task(x, y)
    assert result['output'].dtype == torch.bfloat16
    assert result['coding_loss'].dtype == torch.float32 and result['loss'].dtype == torch.float32
    torch.testing.assert_close(result['coding_loss'], fp32, rtol=0.1, atol=1e-3)
    result['loss'].backward()
    assert model.layer3[0].conv1.weight.grad.abs().max() > 0


def test_channels_last_gives_the_same_loss(timm_tasks):
    model = make_model()
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x, y = batch()
    a = timm_tasks.ClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)(x, y)
    b = timm_tasks.ClassificationTask(model=twin, criterion=nn.CrossEntropyLoss(), verbose=False)(
        x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(b['coding_loss'], a['coding_loss'], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b['loss'], a['loss'], rtol=1e-4, atol=1e-6)


def test_grad_checkpointing_records_only_the_forward(timm_tasks):
    model = make_model()
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(True)
    x, y = batch()
    a = timm_tasks.ClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)(x, y)
    task = timm_tasks.ClassificationTask(model=twin, criterion=nn.CrossEntropyLoss(), verbose=False)
    b = task(x, y)
    b['loss'].backward()  # re-runs the checkpointed blocks: their hooks fire again, unrecorded
    assert task.coding_loss.records == []
    torch.testing.assert_close(b['loss'], a['loss'])


def test_model_ema_and_validation_forwards_are_not_recorded(timm_tasks):
    model = make_model()
    task = timm_tasks.ClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)
    task.setup_ema(decay=0.5)  # train.py --model-ema: a deepcopy, hooks included
    x, y = batch()
    first = task(x, y)
    first['loss'].backward()
    task.update_ema(step=1)
    ema_model = task.get_eval_model(ema=True)
    with torch.no_grad():
        ema_model.eval()(x)
        task.get_eval_model().eval()(x)
    assert task.coding_loss.records == []
    model.train()
    second = task(x, y)
    torch.testing.assert_close(second['coding_loss'], first['coding_loss'], rtol=1e-4, atol=1e-6)


def test_torch_compile_traces_the_hooks_without_recompiling(timm_tasks):
    import torch._dynamo
    torch._dynamo.reset()
    model = make_model()
    eager = copy.deepcopy(model)
    x, y = batch()
    expected = timm_tasks.ClassificationTask(model=eager, criterion=nn.CrossEntropyLoss(), verbose=False)(x, y)
    expected['loss'].backward()
    task = timm_tasks.ClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)
    task.compile(backend='aot_eager')  # train.py --torchcompile (inductor: see benchmarks/RESULTS.md)
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        for p in model.parameters():
            p.grad = None
        result = task(x, y)
        result['loss'].backward()
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] == 1  # compiled once, no graph breaks
    assert not torch._dynamo.utils.counters['graph_break']
    torch.testing.assert_close(result['coding_loss'], expected['coding_loss'], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result['loss'], expected['loss'], rtol=1e-5, atol=1e-6)
    name = 'layer3.0.conv1.weight'
    torch.testing.assert_close(grads(model)[name], grads(eager)[name], rtol=1e-4, atol=1e-6)


def test_resume_from_a_train_py_checkpoint(timm_tasks, tmp_path):
    model = make_model(seed=0)
    task = timm_tasks.ClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = batch()
    task(x, y)['loss'].backward()
    optimizer.step()
    optimizer.zero_grad()
    saver = CheckpointSaver(model=model, optimizer=optimizer, task=task, checkpoint_dir=str(tmp_path),
                            recovery_dir=str(tmp_path), max_history=1)
    saver.save_checkpoint(epoch=0, metric=1.)
    checkpoint = tmp_path / 'checkpoint-0.pth.tar'
    assert checkpoint.is_file()

    resumed_model = make_model(seed=7)  # other weights until the checkpoint is loaded
    resumed = timm_tasks.ClassificationTask(model=resumed_model, criterion=nn.CrossEntropyLoss(), verbose=False)
    resumed_opt = torch.optim.SGD(resumed_model.parameters(), lr=0.1, momentum=0.9)
    assert resume_task_checkpoint(resumed, str(checkpoint), optimizer=resumed_opt, log_info=False) == 1
    a, b = task(x, y), resumed(x, y)
    torch.testing.assert_close(b['coding_loss'], a['coding_loss'])
    torch.testing.assert_close(b['loss'], a['loss'])
    a['loss'].backward()
    b['loss'].backward()
    optimizer.step()
    resumed_opt.step()
    torch.testing.assert_close(resumed_model.layer3[0].conv1.weight, model.layer3[0].conv1.weight)


# --- what the user sees ------------------------------------------------------------------------------
def test_coding_loss_is_logged_every_interval(timm_tasks, monkeypatch, caplog):
    monkeypatch.setenv('TIMM_CODED_LOG_INTERVAL', '2')
    task = timm_tasks.ClassificationTask(model=make_model(), criterion=nn.CrossEntropyLoss(), verbose=True)
    x, y = batch()
    with caplog.at_level(logging.INFO, logger='timm_coded.training'):
        values = [task(x, y)['coding_loss'].item() for _ in range(3)]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Coding loss:')]
    assert len(lines) == 1
    assert f'{(values[0] + values[1]) / 2:#.4g}' in lines[0]


def test_torchscripted_coded_model_warns_once_that_the_loss_is_not_applied(timm_tasks, caplog):
    scripted = torch.jit.script(make_model().eval()).train()  # train.py --torchscript scripts before the task
    with caplog.at_level(logging.WARNING, logger='timm_coded.training'):
        task = timm_tasks.ClassificationTask(model=scripted, criterion=nn.CrossEntropyLoss(), verbose=False)
        x, y = batch()
        result = task(x, y)
        task(x, y)
    warnings = [r.getMessage() for r in caplog.records if 'NOT applied' in r.getMessage()]
    assert len(warnings) == 1 and 'TorchScript' in warnings[0]
    assert 'coding_loss' not in result


def test_install_and_uninstall_timm_tasks():
    was = timm_tasks_installed()
    try:
        uninstall_timm_tasks()
        assert timm.task.ClassificationTask is TimmClassificationTask
        assert 'ClassificationTask' in install_timm_tasks()
        assert timm.task.ClassificationTask is CodedClassificationTask
        # timm's own submodules keep timm's classes (the coded ones subclass them)
        assert timm.task.classification.ClassificationTask is TimmClassificationTask
        assert issubclass(timm.task.ClassificationTask, TimmClassificationTask)
    finally:
        (install_timm_tasks if was else uninstall_timm_tasks)()
