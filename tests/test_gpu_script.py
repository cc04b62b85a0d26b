"""benchmarks/gpu/oneshot.py, the one-shot GPU run, at toy scale on the CPU, so it cannot rot.

The script runs in a subprocess exactly as on the GPU machine, with `--device cpu --scale toy`, on a
tar.gz of generated JPEGs in CIFAR-10's layout (train/<class>/<NNNN>.jpg). Stage 1 runs a stub
train.py (timm's train.py is not in the wheel): the stub proves that the wrapper
(benchmarks/gpu/timm_script.py) installs the coding-loss task and that the log parsing works. With a
real copy of timm's train.py (TIMM_CODED_TIMM_SCRIPTS=DIR, or .gpu-carry/timm-scripts/ as
benchmarks/gpu/prepare_carry.py leaves it) one more test runs it for 2 steps on the CPU.
"""
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'gpu' / 'oneshot.py'
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
PER_CLASS = 4
HISTORY_KEYS = {'model', 'model_kwargs', 'args', 'train_config', 'params', 'train_images', 'val_images', 'split',
                'history'}
EPOCH_KEYS = {'epoch', 'loss', 'coding_loss', 'train_accuracy', 'val_accuracy', 'lr', 'seconds'}
# what scripts/ship_weights.py reads from history['args']
SHIP_ARGS = {'batch_size', 'lr', 'weight_decay', 'label_smoothing', 'ema_decay', 'seed', 'holdout_per_class',
             'epochs', 'warmup_epochs'}

STUB_TRAIN_PY = textwrap.dedent('''
    """Stand-in for timm's train.py: the task train.py imports, two steps, train.py's log lines."""
    import logging
    import sys

    import torch
    import timm
    from timm.task import ClassificationTask

    logging.basicConfig(level=logging.INFO, format='%(name)s - %(message)s')
    _logger = logging.getLogger('train')
    argv = sys.argv[1:]
    model = timm.create_model(argv[argv.index('--model') + 1], num_classes=10)
    if '--amp' in argv:
        _logger.info('Using native Torch AMP. Training in mixed precision.')
    else:
        _logger.info('AMP not enabled. Training in torch.float32.')
    task = ClassificationTask(model=model, criterion=torch.nn.CrossEntropyLoss(), device=torch.device('cpu'),
                              verbose=True)
    if '--torchcompile' in argv:
        _logger.info('Compiling task components with backend=stub, mode=None')
    for step in range(2):
        loss = task(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))['loss']
        loss.backward()
        _logger.info(f'Train: 0 [{step:>4d}/2 ( 50%)]  Loss: {loss.item():#.3g} ({loss.item():#.3g})  LR: 1e-1')
''')


def make_tar(path: Path, per_class: int = PER_CLASS) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, 'w:gz') as tf:
        for c, name in enumerate(CLASSES):
            for i in range(per_class):
                pixels = (rng.integers(0, 128, (32, 32, 3)) + 12 * c).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format='JPEG')
                info = tarfile.TarInfo(f'train/{name}/{i:04d}.jpg')
                info.size = len(buf.getvalue())
                tf.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def run_oneshot(tmp: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    cmd = [sys.executable, str(SCRIPT), '--data', str(tmp / 'cifar10.tar.gz'), '--out', str(tmp / 'out'),
           '--device', 'cpu', '--scale', 'toy', '--budget-minutes', '4', '--epochs', '1', '--decode-workers', '1',
           *extra]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


def load_oneshot_module():
    return load_script(SCRIPT, 'oneshot_under_test')


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('oneshot')
    make_tar(tmp / 'cifar10.tar.gz')
    (tmp / 'scripts').mkdir()
    (tmp / 'scripts' / 'train.py').write_text(STUB_TRAIN_PY)
    proc = run_oneshot(tmp, '--timm-scripts', str(tmp / 'scripts'), '--trainpy-runs', 'amp_fp16,torchcompile')
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((tmp / 'out' / 'summary.json').read_text())
    return tmp / 'out', summary, proc


def is_positive_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_summary_structure(toy_run):
    out, summary, _ = toy_run
    assert summary['schema'] == 'timm_coded.gpu_oneshot/1'
    assert summary['status'] == 'ok', json.dumps(summary, indent=1)[:4000]
    assert summary['scale'] == 'toy' and summary['environment']['device'] == 'cpu'
    assert set(summary['stages']) == {'trainpy', 'throughput', 'training'}
    plan = summary['time_plan']
    assert plan['budget_s'] == 240 and summary['elapsed_s'] > 0  # no wall-clock bound: CPUs under load vary
    for stage in ('setup', 'trainpy', 'throughput', 'training'):
        assert plan[stage]['used_s'] >= 0
    # the device tool brings back at most 8 files, each < 16 MiB, at most 2 folders down
    files = [p for p in out.rglob('*') if p.is_file()]
    assert len(files) <= 8, files
    for p in files:
        assert p.stat().st_size < 16 * 2 ** 20
        assert len(p.relative_to(out).parts) <= 3
    assert {p.relative_to(out).as_posix() for p in files} == {
        'summary.json', 'summary.md', 'oneshot.log', 'coded/model.safetensors', 'coded/history.json',
        'control/model.safetensors', 'control/history.json'}
    md = (out / 'summary.md').read_text()
    for heading in ('## 1. timm train.py', '## 2. Training throughput', '## 3. CIFAR-10 training', '## Time plan'):
        assert heading in md
    assert 'done: ok' in (out / 'oneshot.log').read_text()


def test_trainpy_stage_through_the_wrapper(toy_run):
    _, summary, _ = toy_run
    stage = summary['stages']['trainpy']
    assert stage['status'] == 'pass', json.dumps(stage, indent=1)
    assert stage['model'] == 'coded_resnext17_10x2d' and stage['compile_backend'] == 'eager'
    assert set(stage['runs']) == {'amp_fp16', 'torchcompile'}
    for name, run in stage['runs'].items():
        assert run['status'] == 'pass' and run['returncode'] == 0
        assert run['coded_task_installed'] is True  # the wrapper put the coding-loss task in place
        assert run['train_steps_logged'] == 2 and run['coding_loss_lines'] == 2
        assert run['coding_loss_line'].startswith('Coding loss: ')
        assert is_positive_number(run['coding_loss']) and is_positive_number(run['loss_without_coding'])
    assert stage['runs']['torchcompile']['compiled'] is True
    assert stage['runs']['torchcompile']['flags'] == ['--torchcompile', 'eager']
    assert 'mixed precision' in stage['runs']['amp_fp16']['amp_line']


def test_throughput_stage(toy_run):
    _, summary, _ = toy_run
    stage = summary['stages']['throughput']
    assert stage['status'] == 'ok' and stage['amp_dtype'] == 'bfloat16' and stage['channels_last'] is True
    assert stage['paper_tpu']['throughput_ratio'] == pytest.approx(447 / 439, abs=1e-4)
    (net,) = stage['nets']
    assert net['model'] == 'coded_resnext17_10x2d' and net['status'] == 'ok' and net['rounds'] >= 1
    for kind in ('coded', 'plain'):
        v = net['variants'][kind]
        assert v['params'] == 156_376
        assert is_positive_number(v['train_img_s']) and is_positive_number(v['infer_img_s'])
        assert is_positive_number(v['saved_for_backward_bytes'])
    assert net['variants']['coded']['coded_blocks'] > 0 and net['variants']['plain']['coded_blocks'] == 0
    for key in ('train_throughput', 'inference_throughput', 'train_step_time', 'saved_for_backward'):
        assert is_positive_number(net['ratios'][key]), key
    assert 'peak_memory' not in net['ratios']  # CUDA only


def test_training_stage_and_checkpoints(toy_run):
    import timm
    import timm_coded  # noqa: F401
    from safetensors import safe_open
    from safetensors.torch import load_file

    out, summary, _ = toy_run
    stage = summary['stages']['training']
    assert stage['status'] == 'ok' and stage['epochs'] == 1
    assert stage['train_images'] == 10 * (PER_CLASS - 1) and stage['val_images'] == 10
    listed = {f['path']: f for f in summary['files']}
    for kind, kwargs in (('coded', {}), ('control', {'coded': False})):
        run = stage['runs'][kind]
        assert run['status'] == 'ok' and run['epochs_done'] == 1 and run['model_kwargs'] == kwargs
        assert 0 <= run['final_val_accuracy'] <= 1 and 0 <= run['val_accuracy_reloaded_checkpoint'] <= 1
        # a net this small comes back in float32: the trained weights exactly
        assert set(run['checkpoint_dtypes']) == {'float32', 'int64'}
        path = out / run['checkpoint']
        assert path.is_file() and listed[run['checkpoint']]['bytes'] == path.stat().st_size
        with safe_open(str(path), 'pt') as f:
            assert f.metadata()['format'] == 'pt'
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {'F32', 'I64'}
        state = load_file(str(path))
        floats = [v for v in state.values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float32 for v in floats)
        assert all(v.dtype == torch.int64 for v in state.values() if not v.is_floating_point())
        model = timm.create_model('coded_resnext17_10x2d', **kwargs)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        history = json.loads((out / run['history']).read_text())
        assert HISTORY_KEYS <= set(history) and SHIP_ARGS <= set(history['args'])
        assert history['model'] == 'coded_resnext17_10x2d' and history['model_kwargs'] == kwargs
        assert history['params'] == sum(p.numel() for p in model.parameters())
        assert history['train_images'] == stage['train_images'] and history['val_images'] == 10
        assert history['args']['control'] is (kind == 'control')
        assert history['args']['recipe'] == 'paper' and history['checkpoint']['dtype'] == 'float32'
        assert len(history['history']) == 1 and EPOCH_KEYS <= set(history['history'][0])
        epoch = history['history'][0]
        assert epoch['epoch'] == 1 and math.isfinite(epoch['loss']) and epoch['seconds'] > 0
        assert (epoch['coding_loss'] > 0) is (kind == 'coded')
    # ship_weights.py's reader accepts the run (checkpoint sha256 as recorded)
    from timm_coded.training.runs import read_run, stage_epochs
    assert stage_epochs(read_run(out / 'coded')) == [1]


def test_large_checkpoints_come_back_in_bfloat16():
    # a file over the device tool's 16 MiB return limit would not come back at all
    oneshot = load_oneshot_module()
    small = {'w': torch.zeros(1000), 'n': torch.zeros((), dtype=torch.int64)}
    paper_net = {'w': torch.zeros(4_640_000)}  # coded_resnext29_10x11d: 18.5 MB in float32
    assert oneshot.checkpoint_dtype(small) == 'float32'
    assert oneshot.checkpoint_dtype(paper_net) == 'bfloat16'
    # the line: 90 % of the limit in float32 bytes; integer buffers (a few bytes each) do not count
    at_line = int(0.9 * oneshot.RETURN_FILE_LIMIT_BYTES) // 4
    assert oneshot.checkpoint_dtype({'w': torch.zeros(at_line), 'n': torch.zeros(10 ** 6, dtype=torch.int64)}) == 'float32'
    assert oneshot.checkpoint_dtype({'w': torch.zeros(at_line + 1)}) == 'bfloat16'


def test_a_bfloat16_checkpoint_loads_as_float32(tmp_path):
    # what scripts/ship_weights.py does with a paper-net run that came back in bfloat16
    import timm
    import timm_coded  # noqa: F401
    from safetensors.torch import load_file
    from timm_coded.models.binary import load_checkpoint
    oneshot = load_oneshot_module()
    trained = timm.create_model('coded_resnext17_10x2d')
    path = tmp_path / 'model.safetensors'
    oneshot.save_checkpoint(trained.state_dict(), path, {'format': 'pt'}, 'bfloat16')
    assert {v.dtype for v in load_file(str(path)).values()} == {torch.bfloat16, torch.int64}
    model = load_checkpoint('coded_resnext17_10x2d', path)
    weight = model.conv1.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, trained.conv1.weight.detach().bfloat16().float(), rtol=0, atol=0)


def test_recipes_set_what_the_flags_leave_unset(tmp_path):
    oneshot = load_oneshot_module()
    base = ['--data', str(tmp_path / 'x.tar.gz'), '--out', str(tmp_path / 'out')]
    paper = oneshot.parse_args(base)
    assert (paper.recipe, paper.batch_size, paper.lr, paper.warmup_epochs, paper.label_smoothing,
            paper.ema_decay) == ('paper', 512, 0.1, 0, 0., 0.)
    zoo = oneshot.parse_args(base + ['--recipe', 'zoo', '--train-model', 'coded_resnext17_10x8d'])
    assert (zoo.train_model, zoo.batch_size, zoo.lr, zoo.warmup_epochs, zoo.label_smoothing, zoo.ema_decay,
            zoo.weight_decay, zoo.min_lr) == ('coded_resnext17_10x8d', 128, 0.15, 1, 0.2, 0.999, 5e-4, 1e-4)
    # the zoo recipe is benchmarks/cifar10_zoo.py's defaults: the shipped CPU model's
    import ast
    from timm_coded.training.trainer import TrainConfig
    zoo_defaults = {call.args[0].value: kw.value.value
                    for call in ast.walk(ast.parse((REPO / 'benchmarks' / 'cifar10_zoo.py').read_text()))
                    if isinstance(call, ast.Call) and getattr(call.func, 'attr', '') == 'add_argument'
                    for kw in call.keywords if kw.arg == 'default' and isinstance(kw.value, ast.Constant)}
    for key, value in oneshot.RECIPES['zoo'].items():
        flag = '--' + key.replace('_', '-')
        assert (zoo_defaults[flag] if flag in zoo_defaults else getattr(TrainConfig(), key)) == value, key  # min_lr: TrainConfig's
    mixed = oneshot.parse_args(base + ['--recipe', 'zoo', '--lr', '0.3', '--batch-size', '256'])
    assert (mixed.lr, mixed.batch_size, mixed.label_smoothing) == (0.3, 256, 0.2)
    zeros = oneshot.parse_args(base + ['--recipe', 'zoo', '--ema-decay', '0', '--warmup-epochs', '0', '--lr', '0.15'])
    assert (zeros.ema_decay, zeros.warmup_epochs, zeros.lr, zeros.label_smoothing) == (0., 0, 0.15, 0.2)
    toy = oneshot.parse_args(base + ['--scale', 'toy', '--recipe', 'zoo'])
    assert toy.batch_size is None and toy.lr == 0.15  # the toy scale keeps its own tiny batch


def test_a_run_of_the_gpu_script_ships_with_scripts_ship_weights(toy_run, tmp_path, monkeypatch):
    # the artifacts the GPU run brings back are enough to ship: scripts/ship_weights.py on the coded
    # run, into a package folder of the test's own; the card says which script and machine trained it
    import tarfile
    import timm_coded.hub.manifest as manifest_module
    from timm_coded.hub.manifest import load_manifest
    out, summary, _ = toy_run
    with tarfile.open(out.parent / 'cifar10.tar.gz') as tf:
        tf.extractall(tmp_path / 'data', filter='data')
    package = tmp_path / 'pkg'
    monkeypatch.setattr(manifest_module, 'PACKAGE_DIR', package)
    monkeypatch.delenv('TIMM_CODED_MANIFEST', raising=False)
    ship = load_script(REPO / 'scripts' / 'ship_weights.py')
    monkeypatch.setattr(sys, 'argv', [
        'ship_weights.py', '--run', str(out / 'coded'), '--data-dir', str(tmp_path / 'data' / 'train'),
        '--tag', 'gputoy', '--holdout-per-class', '1', '--calibration-per-class', '3', '--specialization-draws', '1',
        '--report-dir', str(tmp_path / 'report'), '--subsets', 'pets=cat,dog'])
    ship.main()
    names = load_manifest(package / 'weights_manifest.json').names
    assert 'coded_resnext17_10x2d.gputoy' in names and 'coded_resnext17_10x2d_binary.gputoy_cat' in names
    config = json.loads((package / 'weights' / 'coded_resnext17_10x2d.gputoy' / 'config.json').read_text())
    card = (package / 'weights' / 'coded_resnext17_10x2d.gputoy' / 'README.md').read_text()
    assert 'benchmarks/gpu/oneshot.py --recipe paper' in card and 'cifar10_zoo' not in card
    assert 'checkpoint brought back in float32' in card and 'exported here' not in card
    history = json.loads((out / 'coded' / 'history.json').read_text())
    assert f"{history['device_name']} (cpu)" in card
    assert config['architecture'] == 'coded_resnext17_10x2d'


def test_trainpy_skipped_without_scripts(tmp_path):
    make_tar(tmp_path / 'cifar10.tar.gz', per_class=2)
    proc = run_oneshot(tmp_path, '--stages', 'trainpy')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    stage = summary['stages']['trainpy']
    assert stage['status'] == 'skipped' and '--timm-scripts' in stage['reason']
    assert 'skipped' in (tmp_path / 'out' / 'summary.md').read_text()


def test_device_loader_matches_tensor_batch_loader():
    """The GPU loader is TensorBatchLoader with every op on the images' device: on the CPU the
    batches are identical, draw for draw."""
    from timm_coded.data.tensor import TensorBatchLoader

    oneshot = load_oneshot_module()
    loader_cls = oneshot.make_device_loader_class()
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    targets = torch.arange(20) % 10
    common = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), seed=3)
    for train in (True, False):
        ref = TensorBatchLoader(images, targets, 6, train=train, **common)
        new = loader_cls(images, targets, 6, train=train, **common)
        for epoch in range(2):
            ref.set_epoch(epoch)
            new.set_epoch(epoch)
            pairs = list(zip(ref, new))
            assert len(pairs) == len(ref) == len(new) == (3 if train else 4)
            for (x0, y0), (x1, y1) in pairs:
                torch.testing.assert_close(x1, x0, rtol=0, atol=0)
                assert torch.equal(y0, y1)
    val = loader_cls(images, targets, 6, train=False, targets_device='cpu', channels_last=True, **common)
    x, y = next(iter(val))
    assert x.is_contiguous(memory_format=torch.channels_last) and y.device.type == 'cpu'


def test_budget_gives_leftovers_to_training():
    oneshot = load_oneshot_module()
    budget = oneshot.Budget(10, list(oneshot.STAGES))
    total = 600
    trainpy = budget.deadline('trainpy') - budget.t0
    assert trainpy == pytest.approx(oneshot.STAGE_SHARE['trainpy'] * total, abs=1)
    assert budget.deadline('training') - budget.t0 == pytest.approx(total * (1 - oneshot.RESERVE_SHARE))
    # a stage that cannot have its share without eating training's minimum gets less
    budget.t0 -= 0.55 * total
    left_for_throughput = budget.deadline('throughput') - budget.t0
    assert left_for_throughput <= total * (1 - oneshot.RESERVE_SHARE - oneshot.MIN_TRAINING_SHARE) + 1
    only_training = oneshot.Budget(10, ['training'])
    assert only_training.deadline('training') - only_training.t0 == pytest.approx(576)
    # run on its own, throughput is the last stage and takes what is left, not its 16 % share
    only_throughput = oneshot.Budget(10, ['throughput'])
    assert only_throughput.deadline('throughput') - only_throughput.t0 == pytest.approx(576, abs=1)


def test_throughput_profiled(tmp_path):
    """--bench-profile says per operator where the coded step's extra time goes."""
    make_tar(tmp_path / 'cifar10.tar.gz')
    proc = run_oneshot(tmp_path, '--stages', 'throughput', '--bench-profile')
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stage = json.loads((tmp_path / 'out' / 'summary.json').read_text())['stages']['throughput']
    assert stage['status'] == 'ok' and stage['compile_backend'] is None
    (net,) = stage['nets']
    profile = net['profile']
    rows = profile['top_extra']
    assert 0 < len(rows) <= 15
    assert [r['extra_ms'] for r in rows] == sorted((r['extra_ms'] for r in rows), reverse=True)
    for r in rows:
        assert r['extra_ms'] == pytest.approx(r['coded_ms'] - r['plain_ms'], abs=2e-3)
    # the coding's own work (the second moments' batched products, the multiplier) has no plain counterpart
    assert any(r['plain_ms'] == 0 and r['coded_ms'] > 0 for r in rows)
    assert is_positive_number(profile['coded_ms']) and is_positive_number(profile['plain_ms'])
    markdown = (tmp_path / 'out' / 'summary.md').read_text()
    assert ', eager.' in markdown and 'spends its extra time' in markdown
    oneshot = load_oneshot_module()
    compiled = oneshot.render_markdown({'stages': {'throughput': dict(stage, compile_backend='inductor')}})
    assert 'torch.compile (inductor)' in compiled


def test_unknown_bench_net_is_named(tmp_path):
    make_tar(tmp_path / 'cifar10.tar.gz', per_class=1)
    proc = run_oneshot(tmp_path, '--stages', 'throughput', '--bench-nets', 'cifar10-small,imagenet-huge')
    assert proc.returncode == 0, proc.stderr[-2000:]  # a failed stage is recorded; the run still ends normally
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['stages']['throughput']['status'] == 'error'
    assert "unknown ['imagenet-huge']" in summary['stages']['throughput']['error']


def local_timm_scripts():
    candidates = [os.environ.get('TIMM_CODED_TIMM_SCRIPTS'), str(REPO / '.gpu-carry' / 'timm-scripts')]
    return next((Path(c) for c in candidates if c and (Path(c) / 'train.py').is_file()), None)


@pytest.mark.skipif(local_timm_scripts() is None,
                    reason='no copy of timm\'s train.py (set TIMM_CODED_TIMM_SCRIPTS or run benchmarks/gpu/prepare_carry.py)')
def test_real_train_py_on_cpu(tmp_path):
    make_tar(tmp_path / 'cifar10.tar.gz', per_class=2)
    proc = run_oneshot(tmp_path, '--stages', 'trainpy', '--timm-scripts', str(local_timm_scripts()),
                       '--trainpy-runs', 'amp_bf16,torchcompile')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stage = json.loads((tmp_path / 'out' / 'summary.json').read_text())['stages']['trainpy']
    assert stage['status'] == 'pass', json.dumps(stage, indent=1)
    for run in stage['runs'].values():
        assert run['train_steps_logged'] >= 2 and run['coding_loss_lines'] >= 2 and run['coded_task_installed']


def training_inputs(tmp_path: Path, per_class: int, extra_args, batch: int, coded_speed, plain_speed):
    """What training_stage takes, at toy size: decoded data, parsed arguments, scale, and a fake stage-2
    measurement of this config's img/s (which the epoch count is derived from)."""
    oneshot = load_oneshot_module()
    make_tar(tmp_path / 'cifar10.tar.gz', per_class=per_class)
    root = oneshot.prepare_data(tmp_path / 'cifar10.tar.gz', tmp_path / 'work')
    data = oneshot.load_cifar(root, per_class=1, workers=1)
    args = oneshot.parse_args(['--data', 'x', '--out', str(tmp_path / 'out'), '--scale', 'toy', *extra_args])
    (tmp_path / 'out').mkdir()
    scale = dict(oneshot.SCALES['toy'], train_batch=batch, val_batch=5)
    bench = {'nets': [{'status': 'ok', 'model': 'coded_resnext17_10x2d', 'batch': batch, 'image_size': 32,
                       'label': 'fake', 'variants': {'coded': coded_speed, 'plain': plain_speed}}]}
    return oneshot, data, args, scale, bench


def test_training_stops_at_the_deadline_and_control_follows(tmp_path):
    """A run that would overrun its deadline stops after an epoch; the control then stops after as
    many epochs (same lr trajectory), and both still leave a loadable checkpoint and history."""
    oneshot, data, args, scale, bench = training_inputs(
        tmp_path, 3, ['--epochs', '3'], 4, {'train_img_s': 100., 'infer_img_s': 300.},
        {'train_img_s': 120., 'infer_img_s': 350.})
    result = oneshot.training_stage(args, scale, torch.device('cpu'), None, False, data, bench, tmp_path / 'out',
                                    deadline=time.monotonic() + 0.01)
    coded, control = result['runs']['coded'], result['runs']['control']
    assert result['epochs'] == 3 and result['status'] == 'partial'
    assert result['estimated_epoch_s']['coded'] > 0 and 'fake' not in result['epochs_reason']  # --epochs given
    assert coded['status'] == 'stopped_early' and coded['epochs_done'] == 1
    assert coded['stop_reason'].startswith('time budget')
    assert control['epochs_done'] == 1 and 'coded run stopped after epoch 1' in control['stop_reason']
    for kind in ('coded', 'control'):
        history = json.loads((tmp_path / 'out' / kind / 'history.json').read_text())
        assert history['stopped_early'] is True and history['planned_epochs'] == 3 and len(history['history']) == 1
        assert result['runs'][kind]['checkpoint_dtypes'] == ['float32', 'int64']


def test_training_epochs_derived_from_measured_speed(tmp_path):
    speed = {'train_img_s': 1000., 'infer_img_s': 3000.}
    oneshot, data, args, scale, bench = training_inputs(tmp_path, 2, ['--stages', 'training'], 5, speed, speed)
    result = oneshot.training_stage(args, scale, torch.device('cpu'), None, False, data, bench, tmp_path / 'out',
                                    deadline=time.monotonic() + 3600)  # far: a loaded CPU must not stop it
    assert result['fits_epochs'] > 2 and result['epochs'] == 2  # capped at the toy scale's max_epochs
    assert 'stage throughput (fake)' in result['epochs_reason']
    assert result['status'] == 'ok' and all(r['epochs_done'] == 2 for r in result['runs'].values())


def test_training_skipped_when_not_one_epoch_fits(tmp_path):
    slow = {'train_img_s': 0.01, 'infer_img_s': 0.01}  # 10 training images: ~1000 s per epoch
    oneshot, data, args, scale, bench = training_inputs(tmp_path, 2, ['--stages', 'training'], 5, slow, slow)
    result = oneshot.training_stage(args, scale, torch.device('cpu'), None, False, data, bench, tmp_path / 'out',
                                    deadline=time.monotonic() + 600)
    assert result['status'] == 'skipped' and result['fits_epochs'] == 0
    assert 'not one epoch of each variant fits' in result['reason']
    assert not (tmp_path / 'out' / 'coded').exists()  # nothing started, nothing half-written
    assert 'skipped: not one epoch' in oneshot.render_markdown({'stages': {'training': result}})


def test_bench_compile_wraps_the_task_as_train_py_does():
    import torch._dynamo

    oneshot = load_oneshot_module()
    torch._dynamo.reset()
    v = oneshot.Variant('coded_resnext17_10x2d', {}, 2, 32, torch.device('cpu'), None, False, compile_backend='eager')
    try:
        assert isinstance(v.forward_module, torch._dynamo.eval_frame.OptimizedModule)
        assert v.task.trainable_module is v.forward_module  # training steps go through the compiled module
        v.train_step()
        v.model.eval()
        v.infer_step()
    finally:
        v.release()
        torch._dynamo.reset()
    plain = oneshot.Variant('coded_resnext17_10x2d', {}, 2, 32, torch.device('cpu'), None, False)
    assert plain.forward_module is plain.model
    plain.release()


def test_profile_charges_kernels_to_their_operators_once():
    """On a GPU the profiler lists both the operator (with the device time of the kernels it launched)
    and each kernel: counting the kernel rows too would double the time."""
    from types import SimpleNamespace
    from torch.autograd import DeviceType

    oneshot = load_oneshot_module()
    events = [SimpleNamespace(key='aten::mul', device_type=DeviceType.CPU, self_device_time_total=3000.,
                              self_cpu_time_total=40.),
              SimpleNamespace(key='void elementwise_kernel', device_type=DeviceType.CUDA,
                              self_device_time_total=3000., self_cpu_time_total=0.),
              SimpleNamespace(key='aten::view', device_type=DeviceType.CPU, self_device_time_total=0.,
                              self_cpu_time_total=10.)]
    assert oneshot.operator_self_times(events, cuda=True, steps=2) == {'aten::mul': 1.5}
    assert oneshot.operator_self_times(events, cuda=False, steps=2) == {'aten::mul': 0.02, 'aten::view': 0.005}
    diff = oneshot.profile_difference({'coded': {'aten::mul': 2., 'aten::bmm': 1.}, 'plain': {'aten::mul': 1.5}})
    assert [(r['op'], r['extra_ms']) for r in diff['top_extra']] == [('aten::bmm', 1.), ('aten::mul', 0.5)]
    assert diff['coded_ms'] == 3. and diff['plain_ms'] == 1.5


def test_bench_nets_run_in_the_order_asked(tmp_path):
    oneshot = load_oneshot_module()
    scale = dict(oneshot.SCALES['toy'], bench=[('first', 'coded_resnext17_10x2d', 2, 32, 0.5),
                                                ('second', 'coded_resnext17_10x2d', 2, 32, 0.5)])
    args = oneshot.parse_args(['--data', 'x', '--out', str(tmp_path), '--bench-nets', 'second,first'])
    result = oneshot.throughput_stage(args, scale, torch.device('cpu'), None, False,
                                      time.monotonic() + 3600)  # far: a loaded CPU must not skip the second net
    assert [n['label'] for n in result['nets']] == ['second', 'first']
    assert all(n['status'] == 'ok' for n in result['nets'])


def test_profile_and_compile_together_are_refused():
    oneshot = load_oneshot_module()
    with pytest.raises(SystemExit):
        oneshot.parse_args(['--data', 'x', '--out', 'y', '--bench-compile', 'inductor', '--bench-profile'])


def test_training_stage_with_the_zoo_recipe_and_model(tmp_path):
    # the command the GPU README prescribes for the next lease, at toy data size on the CPU
    make_tar(tmp_path / 'cifar10.tar.gz')
    proc = run_oneshot(tmp_path, '--stages', 'training', '--train-model', 'coded_resnext17_10x8d', '--recipe', 'zoo')
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    stage = summary['stages']['training']
    assert stage['status'] == 'ok' and stage['model'] == 'coded_resnext17_10x8d'
    history = json.loads((tmp_path / 'out' / 'coded' / 'history.json').read_text())
    args = history['args']
    assert (args['recipe'], args['lr'], args['warmup_epochs'], args['label_smoothing'], args['ema_decay']) == \
        ('zoo', 0.15, 1, 0.2, 0.999)
    assert args['batch_size'] == 8  # the toy scale keeps its batch; at full scale the recipe's 128
    assert history['checkpoint'] == dict(history['checkpoint'], dtype='float32', weights='EMA')
    assert history['model'] == 'coded_resnext17_10x8d' and history['params'] == 656_768
