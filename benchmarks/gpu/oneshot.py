#!/usr/bin/env python3
"""One-shot GPU run of timm-coded: everything that needs a GPU, in one command inside a time budget.

    python3 benchmarks/gpu/oneshot.py --data .gpu-carry/train.tar.gz --out $OUT --budget-minutes 9 \\
        --device cuda --scale full --timm-scripts .gpu-carry/timm-scripts --site .gpu-carry/site

Stages (each one's failure is recorded and the next one still runs; $OUT/summary.json is rewritten
after every stage, so a run that is killed still leaves what it finished):

1. trainpy     timm's own train.py, a few steps of a coded model on a CIFAR-10 subset, once per
               GPU-only feature: --amp (fp16 + loss scaling), --amp --amp-dtype bfloat16,
               --channels-last, --torchcompile, and all of them together. Runs in parallel (they
               are pass/fail checks, not timings) while the main process decodes the data.
               Records pass/fail, the last "Coding loss:" line, the loss scale (fp16).
2. throughput  training (and inference) img/s and peak memory of coded vs plain (coded=False) for the
               paper's nets under bf16 autocast + channels_last, interleaved rounds, ratios.
3. training    a coded net (--train-model, default coded_resnext29_10x11d) and its control on
               CIFAR-10 (45,000 train / 5,000 held out = the last 500 per class), pad-and-crop +
               flip on the GPU, no RandAugment, for as many epochs as the budget allows (or
               --epochs). --recipe paper (default): the paper's recipe (SGD Nesterov, lr 0.1 cosine
               to 1e-4, wd 5e-4, batch 512); --recipe zoo: the shipped CPU zoo model's
               (benchmarks/cifar10_zoo.py: batch 128, lr 0.15, 1 warm-up epoch, label smoothing
               0.2, EMA 0.999); explicit flags override either. safetensors checkpoints (float32
               when that file stays under 90 % of the 16 MiB return limit, else bfloat16) + history.json in
               the format scripts/ship_weights.py reads.

Output ($OUT, at most 8 files, each < 16 MiB): summary.json, summary.md, oneshot.log,
coded/{model.safetensors,history.json}, control/{model.safetensors,history.json}.

`--device cpu --scale toy` runs every stage at toy size (coded_resnext17_10x2d, 1-2 steps per stage)
in seconds; tests/test_gpu_script.py runs exactly that. See benchmarks/gpu/README.md.
"""
import argparse
import dataclasses
import gc
import hashlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCHEMA = 'timm_coded.gpu_oneshot/1'
STAGES = ('trainpy', 'throughput', 'training')

# Share of the whole budget each stage may take at most; training takes what is left, at least
# MIN_TRAINING_SHARE, and RESERVE_SHARE stays for the last evaluations and writes.
STAGE_SHARE = {'trainpy': 0.26, 'throughput': 0.16}
MIN_TRAINING_SHARE = 0.40
RESERVE_SHARE = 0.04

PAPER_TPU = {
    'source': 'arXiv 2202.05343 Table 4: ImageNet ResNeXt-50 32x4d at 160x160 on TPU (../shared/PAPER_NOTES.md)',
    'coded_samples_per_s': 447, 'plain_samples_per_s': 439, 'coded_memory_gb': 15.7, 'plain_memory_gb': 15.0,
    'throughput_ratio': round(447 / 439, 4), 'memory_ratio': round(15.7 / 15.0, 4),
}

# (label, timm name, batch, image size, share of the stage's time)
SCALES: Dict[str, Dict[str, Any]] = {
    'full': dict(
        trainpy_model='coded_resnext29_10x11d', trainpy_per_class=64, trainpy_batch=64, trainpy_workers=2,
        bench=[('cifar10', 'coded_resnext29_10x11d', 512, 32, 0.3),
               ('cifar100', 'coded_resnext29_20x6d', 512, 32, 0.3),
               ('imagenet', 'coded_resnext50_32x4d', 256, 160, 0.4)],
        bench_warmup=3, bench_steps=10, bench_max_rounds=10,
        train_model='coded_resnext29_10x11d', train_batch=512, val_batch=1000, holdout_per_class=500,
        max_epochs=200),
    'toy': dict(
        trainpy_model='coded_resnext17_10x2d', trainpy_per_class=2, trainpy_batch=8, trainpy_workers=0,
        bench=[('cifar10-small', 'coded_resnext17_10x2d', 8, 32, 1.0)],
        bench_warmup=1, bench_steps=1, bench_max_rounds=2,
        train_model='coded_resnext17_10x2d', train_batch=8, val_batch=16, holdout_per_class=1,
        max_epochs=2),
}

# Training recipes of stage 3 (the coding, mu = 6 and p_drop = 0.1, is the model's own in both).
# zoo: benchmarks/cifar10_zoo.py's defaults, the recipe of the shipped CPU model coded_resnext17_10x8d.cifar10
# (whose later warm restarts lowered the peak lr to 0.08); flags such as --batch-size and --lr override it.
RECIPES: Dict[str, Dict[str, Any]] = {
    'paper': dict(batch_size=512, lr=0.1, min_lr=1e-4, weight_decay=5e-4, warmup_epochs=0, label_smoothing=0.,
                  ema_decay=0.),
    'zoo': dict(batch_size=128, lr=0.15, min_lr=1e-4, weight_decay=5e-4, warmup_epochs=1, label_smoothing=0.2,
                ema_decay=0.999),
}

# train.py runs of stage 1: name -> extra flags ({backend} is --compile-backend)
TRAINPY_RUNS = {
    'amp_fp16': ['--amp'],  # float16 autocast; on CUDA train.py adds NativeScaler (loss scaling)
    'amp_bf16': ['--amp', '--amp-dtype', 'bfloat16'],
    'channels_last': ['--channels-last'],
    'torchcompile': ['--torchcompile', '{backend}'],
    'combined': ['--amp', '--amp-dtype', 'bfloat16', '--channels-last', '--torchcompile', '{backend}'],
}
CODING_RE = re.compile(r'Coding loss: (\S+) \(mu \* sum L_code\)\s+loss without it: (\S+)')
TRAIN_RE = re.compile(r'Train: (\d+) \[\s*(\d+)/(\d+).*?Loss: (\S+) \((\S+)\)')
SCALE_RE = re.compile(r'timm-coded wrapper: loss scale (\S+) after (\d+) steps')
WRAPPER_RE = re.compile(r'timm-coded wrapper: timm (\S+) .*coded ClassificationTask installed: (\w+)')


def log(message: str) -> None:
    print(f'[oneshot {time.strftime("%H:%M:%S")}] {message}', flush=True)


class Tee:
    """Copies what is written to a stream into a log file too."""

    def __init__(self, stream, file) -> None:
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.stream.write(text)
        try:
            self.file.write(text)
            self.file.flush()
        except ValueError:  # closed
            pass
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


# --- time budget --------------------------------------------------------------------------------
class Budget:
    def __init__(self, minutes: float, enabled: List[str]) -> None:
        self.t0 = time.monotonic()
        self.total = minutes * 60.
        self.enabled = enabled
        self.plan: Dict[str, Dict[str, float]] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.total - self.elapsed()

    @property
    def end(self) -> float:
        """When the last stage must be done (the reserve stays for the final writes)."""
        return self.t0 + self.total * (1 - RESERVE_SHARE)

    def deadline(self, stage: str) -> float:
        """Absolute (monotonic) time by which `stage` must be done; what earlier stages left over
        goes to training."""
        now = time.monotonic()
        later = [s for s in STAGES[STAGES.index(stage) + 1:] if s in self.enabled]
        if not later:  # the last stage asked for (training, or throughput run on its own) takes what is left
            return self.end
        later_need = sum(STAGE_SHARE.get(s, 0.) for s in later) * self.total
        if 'training' in self.enabled:
            later_need += MIN_TRAINING_SHARE * self.total
        return max(now, min(now + STAGE_SHARE[stage] * self.total, self.end - later_need))

    def begin(self, stage: str, deadline: float) -> None:
        self.plan[stage] = {'start_s': round(self.elapsed(), 1),
                            'allowed_s': round(deadline - time.monotonic(), 1)}

    def finish(self, stage: str) -> None:
        entry = self.plan.setdefault(stage, {'start_s': round(self.elapsed(), 1)})
        entry['used_s'] = round(self.elapsed() - entry['start_s'], 1)


# --- the report ---------------------------------------------------------------------------------
class Report:
    def __init__(self, out: Path, budget: Budget) -> None:
        self.out, self.budget = out, budget
        self.data: Dict[str, Any] = {'schema': SCHEMA, 'status': 'running', 'stages': {}}

    def save(self) -> None:
        self.data['elapsed_s'] = round(self.budget.elapsed(), 1)
        self.data['time_plan'] = dict(self.budget.plan, budget_s=self.budget.total,
                                      reserve_s=round(RESERVE_SHARE * self.budget.total, 1))
        self.data['files'] = self._files()
        write_atomic(self.out / 'summary.json', json.dumps(self.data, indent=1, default=str) + '\n')
        write_atomic(self.out / 'summary.md', render_markdown(self.data))

    def _files(self) -> List[Dict[str, Any]]:
        files = []
        for path in sorted(self.out.rglob('*')):
            rel = path.relative_to(self.out).as_posix()
            if not path.is_file() or path.name.startswith('.') or rel in ('summary.json', 'summary.md', 'oneshot.log'):
                continue
            files.append({'path': rel, 'bytes': path.stat().st_size, 'sha256': sha256(path)})
        return files


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def run_stage(name: str, report: Report, budget: Budget, fn: Callable[[float], Dict[str, Any]]) -> Dict[str, Any]:
    """Run one stage with its deadline; record its result or its error; save the report."""
    deadline = budget.deadline(name)
    budget.begin(name, deadline)
    log(f'stage {name}: {deadline - time.monotonic():.0f} s allowed ({budget.left():.0f} s of the budget left)')
    try:
        result = fn(deadline)
    except Exception as exc:  # a stage's failure must not cost the others
        traceback.print_exc()
        result = {'status': 'error', 'error': f'{type(exc).__name__}: {exc}',
                  'traceback': traceback.format_exc()[-3000:]}
    budget.finish(name)
    result['seconds'] = budget.plan[name]['used_s']
    report.data['stages'][name] = result
    report.save()
    log(f'stage {name}: {result.get("status")} in {result["seconds"]:.0f} s')
    return result


# --- data ---------------------------------------------------------------------------------------
def prepare_data(data: Path, work: Path) -> Path:
    """The root of an ImageFolder holding train/<class>/*.jpg (the tar.gz is extracted into work)."""
    if data.is_dir():
        return data
    if not data.is_file():
        raise FileNotFoundError(f'no data at {data} (a tar.gz of train/<class>/<NNNN>.jpg, or its extracted folder)')
    root = work / 'cifar10'
    if (root / 'train').is_dir():
        return root
    tmp = work / 'cifar10.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if shutil.which('tar'):
        subprocess.run(['tar', 'xzf', str(data), '-C', str(tmp)], check=True)
    else:
        import tarfile
        with tarfile.open(data) as tf:
            tf.extractall(tmp, filter='data')
    os.replace(tmp, root)
    if not (root / 'train').is_dir():
        raise FileNotFoundError(f'{data} has no train/ folder (expected train/<class>/<NNNN>.jpg)')
    return root


def _decode_chunk(job):
    import torch
    from timm_coded.data.tensor import decode_images
    torch.set_num_threads(1)
    samples, size = job
    images, targets = decode_images(samples, size)
    return images.numpy(), targets.numpy()


def decode_parallel(samples, size: int, workers: int):
    """`timm_coded.data.tensor.decode_images`, split over `workers` processes (fork)."""
    import numpy as np
    import torch
    from timm_coded.data.tensor import decode_images

    if workers <= 1 or len(samples) < 4000:
        return decode_images(samples, size)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    per = -(-len(samples) // (workers * 4))
    jobs = [(dataclasses.replace(samples, samples=samples.samples[i:i + per]), size)
            for i in range(0, len(samples), per)]
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('fork')) as pool:
            parts = list(pool.map(_decode_chunk, jobs))
    except Exception as exc:  # fall back to one process
        log(f'parallel decoding failed ({exc!r}); decoding in one process')
        return decode_images(samples, size)
    return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])))


def load_cifar(root: Path, per_class: int, workers: int) -> Dict[str, Any]:
    from timm_coded.codes import CIFAR10_CLASSES
    from timm_coded.data import holdout_split

    start = time.perf_counter()
    train, val = holdout_split(root, per_class=per_class, expected_classes=CIFAR10_CLASSES)
    train_x, train_y = decode_parallel(train, 32, workers)
    val_x, val_y = decode_parallel(val, 32, workers)
    seconds = time.perf_counter() - start
    log(f'decoded {len(train_y)} train + {len(val_y)} held-out images in {seconds:.1f} s')
    return dict(train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, class_names=list(train.class_names),
                decode_seconds=round(seconds, 2), per_class=per_class, root=str(root))


def make_device_loader_class():
    """The loader for uint8 images on a device (the GPU): `TensorBatchLoader` runs every draw and op
    on its images' device, so it augments on the GPU as it does on the CPU."""
    from timm_coded.data.tensor import TensorBatchLoader

    return TensorBatchLoader


# --- stage 1: timm's train.py -------------------------------------------------------------------
class TrainPyStage:
    """timm's train.py (through benchmarks/gpu/timm_script.py), one short run per feature, in parallel."""

    def __init__(self, args, scale: Dict[str, Any], device: str, work: Path, env: Dict[str, str]) -> None:
        self.args, self.scale, self.device, self.work, self.env = args, scale, device, work, env
        self.procs: Dict[str, Dict[str, Any]] = {}
        self.result: Dict[str, Any] = {}
        self.data_dir: Optional[Path] = None
        self.backend = args.compile_backend or ('inductor' if device == 'cuda' else 'eager')
        names = args.trainpy_runs.split(',') if args.trainpy_runs else list(TRAINPY_RUNS)
        unknown = [n for n in names if n not in TRAINPY_RUNS]
        if unknown:
            raise SystemExit(f'unknown --trainpy-runs {unknown}; known: {", ".join(TRAINPY_RUNS)}')
        self.names = names

    def skip_reason(self) -> Optional[str]:
        scripts = self.args.timm_scripts
        if scripts is None:
            return ('no --timm-scripts given: timm\'s train.py is not in the timm wheel; carry it (see '
                    'benchmarks/gpu/README.md) and pass --timm-scripts DIR')
        if not (Path(scripts) / 'train.py').is_file():
            return f'no train.py in --timm-scripts {scripts}'
        return None

    def make_subset(self, root: Path) -> Path:
        """ImageFolder <work>/trainpy_data/train/<class>/: links to the first K images of each class."""
        subset = self.work / 'trainpy_data'
        shutil.rmtree(subset, ignore_errors=True)
        per_class = self.args.trainpy_per_class or self.scale['trainpy_per_class']
        for class_dir in sorted(p for p in (root / 'train').iterdir() if p.is_dir()):
            files = sorted(class_dir.iterdir())[:per_class]
            (subset / 'train' / class_dir.name).mkdir(parents=True)
            for f in files:
                os.symlink(f.resolve(), subset / 'train' / class_dir.name / f.name)
        return subset

    def command(self, name: str) -> List[str]:
        s, a = self.scale, self.args
        flags = [f.format(backend=self.backend) for f in TRAINPY_RUNS[name]]
        return [sys.executable, str(HERE / 'timm_script.py'), str(Path(a.timm_scripts).resolve() / 'train.py'),
                '--data-dir', str(self.data_dir), '--train-split', 'train', '--val-split', '',
                '--model', a.trainpy_model or s['trainpy_model'], '--num-classes', '10',
                '--model-kwargs', 'coding_loss_weight=6', 'drop_subnn_rate=0.1',
                '-b', str(s['trainpy_batch']), '--epochs', '1', '--lr', '0.05', '--sched', 'cosine',
                '--warmup-epochs', '0', '--weight-decay', '5e-4', '--opt', 'sgd', '--momentum', '0.9',
                '--workers', str(s['trainpy_workers']), '--log-interval', '1', '--device', self.device,
                '--seed', '0', '--checkpoint-hist', '1', '--output', str(self.work / 'trainpy_output'),
                '--experiment', name] + flags

    def start(self, root: Path) -> None:
        reason = self.skip_reason()
        if reason:
            log(f'stage trainpy: skipped: {reason}')
            self.result = {'status': 'skipped', 'reason': reason}
            return
        self.data_dir = self.make_subset(root)
        shutil.rmtree(self.work / 'trainpy_output', ignore_errors=True)
        env = dict(self.env, TIMM_CODED_LOG_INTERVAL='1', PYTHONUNBUFFERED='1')
        self.pending = list(self.names)
        self._launch_more(env)
        self.env_for_runs = env

    def _launch_more(self, env) -> None:
        limit = self.args.trainpy_parallel or (len(self.names) if self.device == 'cuda' else 2)
        while self.pending and sum(p['proc'].poll() is None for p in self.procs.values()) < limit:
            name = self.pending.pop(0)
            cmd = self.command(name)
            log_path = self.work / f'trainpy_{name}.log'
            f = open(log_path, 'w')
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(self.work),
                                    start_new_session=True)
            self.procs[name] = {'proc': proc, 'log': log_path, 'file': f, 'start': time.monotonic(), 'cmd': cmd}
            log(f'train.py {name}: started ({" ".join(cmd[cmd.index("--experiment") + 2:])})')

    def wait(self, deadline: float) -> Dict[str, Any]:
        if self.result.get('status') == 'skipped':
            return self.result
        timed_out = set()
        while True:
            self._launch_more(self.env_for_runs)
            running = []
            for n, p in self.procs.items():
                if p['proc'].poll() is None:
                    running.append(n)
                else:
                    p.setdefault('end', time.monotonic())
            if not running and not self.pending:
                break
            if time.monotonic() >= deadline:
                for name in running:
                    kill_group(self.procs[name]['proc'])
                    timed_out.add(name)
                for name in self.pending:
                    self.procs[name] = None
                    timed_out.add(name)
                self.pending = []
                break
            time.sleep(0.2)
        runs = {}
        for name in self.names:
            p = self.procs.get(name)
            if p is None:
                runs[name] = {'status': 'timeout', 'flags': TRAINPY_RUNS[name],
                              'reason': 'not started before the stage deadline'}
                continue
            p['file'].close()
            runs[name] = self.parse(name, p, name in timed_out)
            log(f'train.py {name}: {runs[name]["status"]}'
                + (f' - {runs[name]["coding_loss_line"]}' if runs[name].get('coding_loss_line') else '')
                + (f' ({runs[name]["reason"]})' if runs[name].get('reason') else ''))
        statuses = [r['status'] for r in runs.values()]
        self.result = {
            'status': 'pass' if all(s == 'pass' for s in statuses) else 'fail',
            'model': self.args.trainpy_model or self.scale['trainpy_model'], 'device': self.device, 'compile_backend': self.backend,
            'train_py': str(Path(self.args.timm_scripts) / 'train.py'),
            'train_py_sha256': sha256(Path(self.args.timm_scripts) / 'train.py'),
            'images_per_class': self.args.trainpy_per_class or self.scale['trainpy_per_class'],
            'batch_size': self.scale['trainpy_batch'], 'command_example': ' '.join(
                str(c) for c in self.procs[self.names[0]]['cmd'][1:]) if self.procs.get(self.names[0]) else None,
            'runs': runs,
        }
        return self.result

    def parse(self, name: str, p: Dict[str, Any], timed_out: bool) -> Dict[str, Any]:
        text = p['log'].read_text(errors='replace')
        lines = text.splitlines()
        rc = p['proc'].returncode
        coding = [(m.group(0), m.group(1), m.group(2)) for m in map(CODING_RE.search, lines) if m]
        train = [m for m in map(TRAIN_RE.search, lines) if m]
        scales = [m for m in map(SCALE_RE.search, lines) if m]
        wrapper = next((m for m in map(WRAPPER_RE.search, lines) if m), None)
        amp_line = next((ln.split(' - ')[-1].strip() for ln in lines
                         if 'Using native Torch AMP' in ln or 'AMP not enabled' in ln), None)
        r: Dict[str, Any] = {
            'flags': [f.format(backend=self.backend) for f in TRAINPY_RUNS[name]], 'returncode': rc,
            'seconds': round(p.get('end', time.monotonic()) - p['start'], 1), 'train_steps_logged': len(train),
            'last_loss': _float(train[-1].group(4)) if train else None,
            'coding_loss_lines': len(coding), 'coding_loss_line': coding[-1][0] if coding else None,
            'coding_loss': _float(coding[-1][1]) if coding else None,
            'loss_without_coding': _float(coding[-1][2]) if coding else None,
            'amp_line': amp_line, 'compiled': any('Compiling task components' in ln or 'Compiling model' in ln
                                                  for ln in lines),
            'loss_scaler': bool(scales) or any('NativeScaler created' in ln for ln in lines),
            'loss_scale_last': _float(scales[-1].group(1)) if scales else None,
            'wrapper_timm': wrapper.group(1) if wrapper else None,
            'coded_task_installed': (wrapper.group(2) == 'True') if wrapper else None,
            'log_tail': lines[-8:],
        }
        problems = []
        if timed_out:
            problems.append('killed at the stage deadline')
        elif rc != 0:
            problems.append(f'exit code {rc}')
        if not train:
            problems.append('no "Train:" line')
        if not coding:
            problems.append('no "Coding loss:" line')
        values = [r['last_loss'], r['coding_loss'], r['loss_without_coding']]
        if any(v is not None and not math.isfinite(v) for v in values):
            problems.append('a loss is not finite')
        if r['coded_task_installed'] is False:
            problems.append('the coded ClassificationTask was not installed')
        if '--torchcompile' in TRAINPY_RUNS[name] and not r['compiled']:
            problems.append('no "Compiling ..." line from train.py')
        if name == 'amp_fp16' and self.device == 'cuda' and not r['loss_scaler']:
            problems.append('fp16 on CUDA but no NativeScaler (loss scaling) seen')
        if problems:
            r['reason'] = '; '.join(problems)
            r['log_tail'] = lines[-30:]
        r['status'] = 'timeout' if timed_out else ('pass' if not problems else 'fail')
        return r

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p and p['proc'].poll() is None:
                kill_group(p['proc'])


def _float(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def kill_group(proc: subprocess.Popen) -> None:
    """End a process we started with start_new_session=True, with its data-loader workers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


# --- stage 2: throughput and memory -------------------------------------------------------------
def sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Variant:
    """One model (coded or plain) with its optimizer, task and a fixed synthetic batch."""

    def __init__(self, name: str, kwargs: Dict[str, Any], batch: int, size: int, device, amp_dtype,
                 channels_last: bool, compile_backend: Optional[str] = None) -> None:
        import torch
        import timm
        from timm_coded.training import CodedClassificationTask

        self.device, self.amp_dtype, self.batch = device, amp_dtype, batch
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = timm.create_model(name, **kwargs).to(device=device, memory_format=memory_format).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.task = CodedClassificationTask(model=self.model, criterion=torch.nn.CrossEntropyLoss(), device=device)
        self.coded_blocks = self.task.coding_loss.num_blocks
        # as train.py --torchcompile does: the task compiles its model after the coding-loss hooks went on
        self.forward_module = self.task.compile(backend=compile_backend) if compile_backend else self.model
        self.x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
        self.y = torch.randint(0, self.model.num_classes, (batch,), device=device)

    def train_step(self) -> None:
        import torch
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            result = self.task(self.x, self.y)
        self.optimizer.zero_grad(set_to_none=True)
        result['loss'].backward()
        self.optimizer.step()

    def infer_step(self) -> None:
        import torch
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                             enabled=self.amp_dtype is not None):
            self.forward_module(self.x)

    def saved_for_backward_bytes(self) -> int:
        """Bytes of the tensors autograd saves in one training forward (deduplicated by storage)."""
        import torch
        seen: Dict[int, int] = {}

        def pack(t):
            try:
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
            except (RuntimeError, NotImplementedError):
                pass
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = self.task(self.x, self.y)['loss']
        del loss
        self.optimizer.zero_grad(set_to_none=True)
        return sum(seen.values())

    def release(self) -> None:
        self.task.coding_loss.remove()
        del self.model, self.forward_module, self.optimizer, self.task, self.x, self.y


def timed(fn: Callable[[], None], steps: int, device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - start


def bench_net(label: str, name: str, batch: int, size: int, device, amp_dtype, channels_last: bool,
              scale: Dict[str, Any], deadline: float, compile_backend: Optional[str] = None,
              profile: bool = False) -> Dict[str, Any]:
    import torch

    if compile_backend:  # coded and plain share CodedResNeXt.forward's code object: start each net with a clean
        torch._dynamo.reset()  # cache, so dynamo's recompile limit cannot leave a later variant eager

    kinds = {'coded': {}, 'plain': {'coded': False}}
    tried = []
    while True:
        variants: Dict[str, Variant] = {}
        try:
            result = _bench_variants(label, name, batch, size, device, amp_dtype, channels_last, scale, deadline,
                                     kinds, variants, compile_backend, profile)
            if tried:
                result['batch_reduced_from'] = tried[0]
                result['out_of_memory_at'] = tried
            return result
        except torch.cuda.OutOfMemoryError:
            tried.append(batch)
            log(f'{label}: out of memory at batch {batch}; halving')
            for v in variants.values():
                v.release()
            variants.clear()
            gc.collect()
            torch.cuda.empty_cache()
            batch //= 2
            if batch < 8:
                raise
        finally:
            for v in variants.values():
                v.release()
            variants.clear()
            gc.collect()
            if device.type == 'cuda':
                torch.cuda.empty_cache()


def _bench_variants(label, name, batch, size, device, amp_dtype, channels_last, scale, deadline, kinds,
                    variants, compile_backend=None, profile=False) -> Dict[str, Any]:
    import torch

    cuda = device.type == 'cuda'
    res: Dict[str, Any] = {'label': label, 'model': name, 'batch': batch, 'image_size': size, 'variants': {}}
    # memory, one variant at a time: peak allocated during a training step above what was allocated before
    # the variant was built (weights, gradients, momentum, activations, its batch)
    for kind, kwargs in kinds.items():
        sync(device)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device) if cuda else 0
        start = time.perf_counter()
        v = variants[kind] = Variant(name, kwargs, batch, size, device, amp_dtype, channels_last, compile_backend)
        first = timed(v.train_step, 1, device)
        timed(v.train_step, max(scale['bench_warmup'] - 1, 0), device)
        v.model.eval()  # as in the timed rounds: a compiled model compiles its eval graph here, untimed
        timed(v.infer_step, 1, device)
        v.model.train()
        entry = {'params': v.params, 'coded_blocks': v.coded_blocks, 'first_step_s': round(first, 3),
                 'build_and_warmup_s': round(time.perf_counter() - start, 2)}
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            timed(v.train_step, 1, device)
            entry['peak_bytes'] = torch.cuda.max_memory_allocated(device) - base
            entry['peak_gib'] = round(entry['peak_bytes'] / 2 ** 30, 3)
        v.optimizer.zero_grad(set_to_none=True)
        entry['saved_for_backward_bytes'] = v.saved_for_backward_bytes()
        res['variants'][kind] = entry
        log(f'{label} {kind}: {v.params:,} params, first step {first:.2f} s'
            + (f', peak {entry["peak_gib"]:.2f} GiB' if cuda else ''))
    # speed: interleaved rounds (coded, plain, plain, coded, ...), the median of per-round ratios
    steps = scale['bench_steps']
    rounds: List[Dict[str, float]] = []
    round_s = 0.
    while len(rounds) < scale['bench_max_rounds']:  # at least one round; more while the net's time lasts
        # the profile (a round's training steps per variant, profiled) needs about two rounds' time at the end
        if rounds and time.monotonic() + round_s * (3 if profile else 1) > deadline:
            break
        start = time.perf_counter()
        row: Dict[str, float] = {}
        order = list(kinds) if len(rounds) % 2 == 0 else list(kinds)[::-1]
        for kind in order:
            v = variants[kind]
            row[f'{kind}_train'] = batch * steps / timed(v.train_step, steps, device)
        for kind in order:
            v = variants[kind]
            v.model.eval()
            row[f'{kind}_infer'] = batch * steps / timed(v.infer_step, steps, device)
            v.model.train()
        rounds.append(row)
        round_s = time.perf_counter() - start
    for kind in kinds:
        entry = res['variants'][kind]
        entry['train_img_s'] = round(statistics.median(r[f'{kind}_train'] for r in rounds), 1)
        entry['infer_img_s'] = round(statistics.median(r[f'{kind}_infer'] for r in rounds), 1)
    ratios = {
        'train_throughput': statistics.median(r['coded_train'] / r['plain_train'] for r in rounds),
        'inference_throughput': statistics.median(r['coded_infer'] / r['plain_infer'] for r in rounds),
        'train_step_time': statistics.median(r['plain_train'] / r['coded_train'] for r in rounds),
        'saved_for_backward': res['variants']['coded']['saved_for_backward_bytes']
        / max(res['variants']['plain']['saved_for_backward_bytes'], 1),
    }
    if cuda:
        ratios['peak_memory'] = res['variants']['coded']['peak_bytes'] / max(res['variants']['plain']['peak_bytes'], 1)
    res['ratios'] = {k: round(v, 4) for k, v in ratios.items()}
    if profile:
        res['profile'] = profile_difference({kind: profile_train_steps(v, scale['bench_steps'], device)
                                             for kind, v in variants.items()})
    res['rounds'] = len(rounds)
    res['steps_per_round'] = steps
    res['per_round'] = [{k: round(v, 1) for k, v in r.items()} for r in rounds]
    log(f'{label}: coded/plain train img/s {res["ratios"]["train_throughput"]:.3f}, inference '
        f'{res["ratios"]["inference_throughput"]:.3f}' + (f', peak memory {res["ratios"]["peak_memory"]:.3f}'
                                                           if cuda else '') + f' ({len(rounds)} rounds)')
    return res


PROFILE_TOP = 15


def profile_train_steps(v: Variant, steps: int, device) -> Dict[str, float]:
    """Self time per training step of each operator, in ms (eager models: under torch.compile the kernels
    belong to compiled graphs, not to operators)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == 'cuda'
    timed(v.train_step, 1, device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        timed(v.train_step, steps, device)
    return operator_self_times(prof.key_averages(), cuda, steps)


def operator_self_times(events, cuda: bool, steps: int) -> Dict[str, float]:
    """ms per step of each operator (profiler key averages): on a GPU the device time of the kernels it
    launched itself (the rows add up to the kernel time, not to the wall time of the step), on a CPU its
    own CPU time. Kernel rows are skipped: their time is already charged to the launching operator."""
    from torch.autograd import DeviceType

    times: Dict[str, float] = {}
    for e in events:
        if e.device_type != DeviceType.CPU:
            continue
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0:
            times[e.key] = times.get(e.key, 0.) + us / 1e3 / steps
    return times


def profile_difference(times: Dict[str, Dict[str, float]]) -> Dict[str, Any]:
    """Where the coded step's extra time goes: per operator, coded minus plain self time per step."""
    coded, plain = times['coded'], times['plain']
    rows = [{'op': op, 'coded_ms': round(coded.get(op, 0.), 3), 'plain_ms': round(plain.get(op, 0.), 3),
             'extra_ms': round(coded.get(op, 0.) - plain.get(op, 0.), 3)} for op in set(coded) | set(plain)]
    rows.sort(key=lambda r: r['extra_ms'], reverse=True)
    return {'metric': 'self time per training step (kernel time on a GPU, CPU time on a CPU), ms',
            'coded_ms': round(sum(coded.values()), 3), 'plain_ms': round(sum(plain.values()), 3),
            'top_extra': rows[:PROFILE_TOP]}


def throughput_stage(args, scale, device, amp_dtype, channels_last, deadline) -> Dict[str, Any]:
    nets = scale['bench']
    if args.bench_nets:
        by_label = {n[0]: n for n in nets}
        wanted = args.bench_nets.split(',')
        unknown = [w for w in wanted if w not in by_label]
        if unknown:
            raise ValueError(f'--bench-nets: unknown {unknown}; known: {", ".join(by_label)}')
        nets = [by_label[w] for w in wanted]  # in the order asked: the first one surely runs
    results = []
    shares_left = sum(n[4] for n in nets)
    for label, name, batch, size, share in nets:
        now = time.monotonic()
        net_deadline = now + max(deadline - now, 0) * share / shares_left
        shares_left -= share
        if time.monotonic() >= deadline:
            results.append({'label': label, 'model': name, 'status': 'skipped', 'reason': 'no time left'})
            continue
        try:
            r = bench_net(label, name, batch, size, device, amp_dtype, channels_last, scale, net_deadline,
                          args.bench_compile, args.bench_profile)
            r['status'] = 'ok'
        except Exception as exc:
            traceback.print_exc()
            r = {'label': label, 'model': name, 'batch': batch, 'image_size': size, 'status': 'error',
                 'error': f'{type(exc).__name__}: {exc}'}
        results.append(r)
    ok = [r for r in results if r['status'] == 'ok']
    return {
        'status': 'ok' if ok and len(ok) == len(results) else ('partial' if ok else 'fail'),
        'amp_dtype': str(amp_dtype).replace('torch.', '') if amp_dtype else None, 'channels_last': channels_last,
        'compile_backend': args.bench_compile,
        'memory_metric': ('torch.cuda.max_memory_allocated during one training step, minus what was allocated '
                          'before the variant was built' if device.type == 'cuda' else
                          'no allocator peak on the CPU: ratios use saved_for_backward (bytes autograd saves)'),
        'timing': 'median over interleaved rounds (coded/plain order alternating); a training step = forward '
                  '+ coding loss + backward + SGD step, synthetic batch already on the device',
        'nets': results, 'paper_tpu': PAPER_TPU,
    }


# --- stage 3: training --------------------------------------------------------------------------
def quick_measure(name, kwargs, batch, device, amp_dtype, channels_last, steps: int = 4) -> Dict[str, float]:
    v = Variant(name, kwargs, batch, 32, device, amp_dtype, channels_last)
    try:
        timed(v.train_step, 2, device)
        train = batch * steps / timed(v.train_step, steps, device)
        v.model.eval()
        timed(v.infer_step, 1, device)
        infer = batch * steps / timed(v.infer_step, steps, device)
        return {'train_img_s': train, 'infer_img_s': infer}
    finally:
        v.release()


def estimate_epoch_seconds(speed: Dict[str, float], n_train: int, n_val: int) -> float:
    # the trainer reads the loss back every step and evaluates with flip TTA (two forwards). On the H200
    # (2026-11-30) epochs took 1.03x (coded; 1.00x after the first two) and 0.97x (control) of the bare
    # estimate; the 1.25 used then left 74 of training's 340 s unused. 5 % stays as margin; a run that
    # still would overrun stops after an epoch (stopped_early).
    return 1.05 * (n_train / speed['train_img_s'] + 2 * n_val / speed['infer_img_s']) + 0.5


# Files come back from the device machine only under 16 MiB each (the device tool's limit).
RETURN_FILE_LIMIT_BYTES = 16 * 2 ** 20


def checkpoint_dtype(state: Dict[str, Any]) -> str:
    """'float32' (the trained weights exactly) when that checkpoint comes back under the return
    limit with room to spare, else 'bfloat16' (half the size: a 4.6 M-parameter net is 18.5 MB in
    float32)."""
    floats = sum(v.numel() * 4 for v in state.values() if v.is_floating_point())
    return 'float32' if floats <= 0.9 * RETURN_FILE_LIMIT_BYTES else 'bfloat16'


def save_checkpoint(state: Dict[str, Any], path: Path, metadata: Dict[str, str], dtype: str) -> int:
    """Floating tensors in `dtype` (integers, e.g. BN's num_batches_tracked, unchanged), atomically."""
    import torch
    from safetensors.torch import save_file

    cast = getattr(torch, dtype)
    tensors = {k: (v.detach().to(cast) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in state.items()}
    tmp = path.with_name(f'.{path.name}.tmp')
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path.stat().st_size


def training_stage(args, scale, device, amp_dtype, channels_last, data, bench, out: Path, deadline) -> Dict[str, Any]:
    import torch
    import timm
    from safetensors.torch import load_file
    from timm_coded.data import CIFAR10_MEAN, CIFAR10_STD
    from timm_coded.training.trainer import evaluate_accuracy

    name = args.train_model or scale['train_model']
    batch = args.batch_size or scale['train_batch']
    loader_cls = make_device_loader_class()
    train_x, train_y = data['train_x'].to(device), data['train_y'].to(device)
    val_x = data['val_x'].to(device)
    n_train, n_val = len(train_y), len(data['val_y'])
    train_loader = loader_cls(train_x, train_y, batch, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                              seed=args.seed, channels_last=channels_last)
    val_loader = loader_cls(val_x, data['val_y'], scale['val_batch'], train=False, mean=CIFAR10_MEAN,
                            std=CIFAR10_STD, channels_last=channels_last, targets_device='cpu')
    variants = {'coded': {}, 'control': {'coded': False}}

    # epochs: as given, or what fits in the time left, from the measured speed of this very config
    speeds, speed_source = {}, None
    for net in (bench or {}).get('nets', []):
        if net.get('status') == 'ok' and net['model'] == name and net['batch'] == batch and net['image_size'] == 32:
            speeds = {'coded': net['variants']['coded'], 'control': net['variants']['plain']}
            speed_source = f'stage throughput ({net["label"]})'
    if not speeds:
        speeds = {k: quick_measure(name, kw, batch, device, amp_dtype, channels_last) for k, kw in variants.items()}
        speed_source = 'a quick measurement (stage throughput did not measure this config)'
    est = {k: estimate_epoch_seconds(speeds[k], n_train, n_val) for k in variants}
    time_left = deadline - time.monotonic()
    fixed_cost = 4. if device.type == 'cuda' else 1.  # model build, first-epoch warm-ups, checkpoint re-check
    fit = int((time_left - 2 * fixed_cost) // (est['coded'] + est['control']))
    if args.epochs:
        epochs, epochs_reason = args.epochs, '--epochs'
    elif fit < 1:  # a run that cannot finish one epoch of each variant would only overrun the budget
        reason = (f'not one epoch of each variant fits: {time_left:.0f} s left, ({est["coded"]:.1f} + '
                  f'{est["control"]:.1f}) s per epoch pair estimated from {speed_source}')
        log(f'training: skipped ({reason})')
        return {'status': 'skipped', 'reason': reason, 'model': name, 'fits_epochs': fit,
                'estimated_epoch_s': {k: round(v, 2) for k, v in est.items()}, 'train_images': n_train}
    else:
        epochs = min(fit, args.max_epochs or scale['max_epochs'])
        epochs_reason = (f'derived: {time_left:.0f} s left / ({est["coded"]:.1f} + {est["control"]:.1f}) s per '
                         f'epoch pair, estimated from {speed_source}; capped at {args.max_epochs or scale["max_epochs"]}')
    log(f'training: {epochs} epochs ({epochs_reason})')
    result: Dict[str, Any] = {
        'model': name, 'epochs': epochs, 'epochs_reason': epochs_reason, 'fits_epochs': fit,
        'estimated_epoch_s': {k: round(v, 2) for k, v in est.items()}, 'train_images': n_train,
        'val_images': n_val, 'decode_seconds': data['decode_seconds'], 'runs': {},
    }
    total_est = est['coded'] + est['control']
    for kind, kwargs in variants.items():
        now = time.monotonic()
        if kind == 'coded':
            run_deadline = now + (deadline - now) * est['coded'] / total_est
        else:
            run_deadline = deadline
        # if the coded run had to stop early, the control stops after as many epochs (same lr trajectory)
        stop_after = result['runs']['coded']['epochs_done'] if result['runs'].get('coded', {}).get('stopped_early') \
            else None
        result['runs'][kind] = train_one(kind, name, kwargs, epochs, batch, args, device, amp_dtype, channels_last,
                                         train_loader, val_loader, data, out, run_deadline, stop_after)
    # the checkpoints as they come back must load strictly into a fresh model and keep their accuracy
    for kind, kwargs in variants.items():
        run = result['runs'][kind]
        path = out / kind / 'model.safetensors'
        if not path.is_file():
            continue
        state = load_file(str(path))
        run['checkpoint_dtypes'] = sorted({str(v.dtype).replace('torch.', '') for v in state.values()})
        model = timm.create_model(name, **kwargs)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        run['val_accuracy_reloaded_checkpoint'] = evaluate_accuracy(model, val_loader, str(device), flip_tta=True,
                                                                amp_dtype=amp_dtype, channels_last=channels_last)
        del model
    coded, control = result['runs'].get('coded', {}), result['runs'].get('control', {})
    if coded.get('final_val_accuracy') is not None and control.get('final_val_accuracy') is not None:
        result['coded_minus_control_val_accuracy'] = round(coded['final_val_accuracy'] - control['final_val_accuracy'], 4)
    complete = all(r.get('status') == 'ok' for r in result['runs'].values())
    result['status'] = 'ok' if complete else 'partial'
    del train_x, train_y, val_x
    return result


def train_one(kind, name, kwargs, epochs, batch, args, device, amp_dtype, channels_last, train_loader, val_loader,
              data, out: Path, run_deadline: float, stop_after: Optional[int] = None) -> Dict[str, Any]:
    import torch
    import timm
    from timm_coded.training.trainer import TrainConfig, train_model

    run_dir = out / kind
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = timm.create_model(name, **kwargs)
    cfg = TrainConfig(epochs=epochs, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
                      warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, device=str(device),
                      amp_dtype=str(amp_dtype).replace('torch.', '') if amp_dtype else None,
                      channels_last=channels_last, ema_decay=args.ema_decay, flip_tta=True)
    history: List[Dict[str, Any]] = []
    per = data['per_class']
    run_args = {
        'batch_size': batch, 'lr': args.lr, 'min_lr': args.min_lr, 'weight_decay': args.weight_decay,
        'warmup_epochs': args.warmup_epochs, 'label_smoothing': args.label_smoothing, 'ema_decay': args.ema_decay,
        'recipe': args.recipe,
        'seed': args.seed, 'epochs': epochs, 'holdout_per_class': per, 'control': kind == 'control', 'amp_dtype': cfg.amp_dtype,
        'channels_last': channels_last, 'augmentation': 'pad 4 + random crop, horizontal flip (on the device)',
        'randaugment': None, 'script': 'benchmarks/gpu/oneshot.py', 'device': str(device),
    }
    record: Dict[str, Any] = {
        'model': name, 'model_kwargs': kwargs, 'args': run_args, 'train_config': dataclasses.asdict(cfg),
        'params': sum(p.numel() for p in model.parameters()), 'train_images': len(data['train_y']),
        'val_images': len(data['val_y']), 'decode_seconds': data['decode_seconds'], 'torch': torch.__version__,
        'timm': timm.__version__, 'device_name': device_name(device),
        'split': f'CIFAR-10 train JPEGs; held out = last {per} per class (sorted names), '
                 f'val_accuracy = flip TTA on the held-out {len(data["val_y"])}',
        'checkpoint': {'file': 'model.safetensors', 'dtype': checkpoint_dtype(model.state_dict()),
                       'weights': 'EMA' if args.ema_decay > 0 else 'final'},
        'planned_epochs': epochs, 'stopped_early': False, 'history': history,
    }
    state = {'stopped': False}
    began = time.monotonic()

    def on_epoch(stats, weights) -> bool:
        history.append(dataclasses.asdict(stats))
        size = save_checkpoint(weights.state_dict(), run_dir / 'model.safetensors',
                               {'format': 'pt', 'model': name, 'epoch': str(stats.epoch), 'variant': kind},
                               record['checkpoint']['dtype'])
        record['checkpoint']['bytes'] = size
        record['checkpoint_sha256'] = sha256(run_dir / 'model.safetensors')  # what ship_weights.py checks
        write_atomic(run_dir / 'history.json', json.dumps(record, indent=1) + '\n')
        ips = len(train_loader) * batch / max(stats.seconds, 1e-9)
        log(f'{kind} epoch {stats.epoch}/{epochs}: loss {stats.loss:.3f} code {stats.coding_loss:.3f} '
            f'train {stats.train_accuracy or 0:.3f} val {stats.val_accuracy:.4f} {stats.seconds:.1f} s ({ips:.0f} img/s '
            f'incl. eval)')
        longest = max(h['seconds'] for h in history)
        reason = None
        if stats.epoch < epochs and stop_after is not None and stats.epoch >= stop_after:
            reason = f'the coded run stopped after epoch {stop_after} of {epochs}: the same here'
        elif stats.epoch < epochs and time.monotonic() + longest > run_deadline:
            reason = f'time budget: epoch {stats.epoch} of {epochs}'
        if reason:
            state['stopped'] = True
            record['stopped_early'] = True
            record['stop_reason'] = reason
            write_atomic(run_dir / 'history.json', json.dumps(record, indent=1) + '\n')
            log(f'{kind}: stopping after epoch {stats.epoch} of {epochs} ({reason})')
            return True
        return False

    try:
        train_model(model, train_loader, cfg, val_loader, progress=False, on_epoch=on_epoch)
        status, error = 'ok' if not state['stopped'] else 'stopped_early', None
    except Exception as exc:
        traceback.print_exc()
        status, error = 'error', f'{type(exc).__name__}: {exc}'
    run = {
        'status': status, 'model_kwargs': kwargs, 'epochs_done': len(history), 'planned_epochs': epochs,
        'stopped_early': state['stopped'], 'stop_reason': record.get('stop_reason'), 'seconds': round(time.monotonic() - began, 1),
        'final_val_accuracy': history[-1]['val_accuracy'] if history else None,
        'best_val_accuracy': max(h['val_accuracy'] for h in history) if history else None,
        'final_loss': history[-1]['loss'] if history else None,
        'final_coding_loss': history[-1]['coding_loss'] if history else None,
        'train_img_s_incl_eval': round(len(train_loader) * batch * len(history) /
                                       max(sum(h['seconds'] for h in history), 1e-9), 1) if history else None,
        'checkpoint': f'{kind}/model.safetensors' if history else None,
        'history': f'{kind}/history.json' if history else None,
    }
    if error:
        run['error'] = error
    del model
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return run


# --- environment --------------------------------------------------------------------------------
def device_name(device) -> str:
    import torch
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    import platform
    return platform.processor() or platform.machine()


def environment(device) -> Dict[str, Any]:
    import platform
    import torch
    import timm
    import timm_coded

    env: Dict[str, Any] = {
        'python': sys.version.split()[0], 'executable': sys.executable, 'platform': platform.platform(),
        'cpu_count': os.cpu_count(), 'torch': torch.__version__, 'timm': timm.__version__,
        'timm_path': str(Path(timm.__file__).parent), 'timm_coded': timm_coded.__version__,
        'timm_coded_path': str(Path(timm_coded.__file__).parent), 'device': str(device),
        'cuda_available': torch.cuda.is_available(),
    }
    try:
        env['git_commit'] = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                                           timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env['git_commit'] = None
    # the device machine's copy of .git can lag the working tree it was sent: these say what ran
    env['oneshot_sha256'] = sha256(Path(__file__))
    try:
        env['git_status'] = subprocess.run(['git', 'status', '--short'], cwd=REPO, capture_output=True, text=True,
                                           timeout=10).stdout.splitlines()[:50]
    except (OSError, subprocess.SubprocessError):
        env['git_status'] = None
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
        try:
            env['nvidia_smi'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=name,driver_version,memory.total,clocks.max.sm', '--format=csv,noheader'],
                capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env['nvidia_smi'] = None
    return env


# --- markdown -----------------------------------------------------------------------------------
def _pct(v) -> str:
    return '-' if v is None else f'{100 * v:.2f} %'


def _num(v) -> str:
    return '-' if v is None else f'{v:.4g}'


def render_markdown(d: Dict[str, Any]) -> str:
    env = d.get('environment', {})
    lines = [f'# timm-coded one-shot GPU run ({d.get("scale")} scale, {env.get("device", "?")})', '',
             f'Status: **{d.get("status")}**; {d.get("elapsed_s")} s of a {d.get("budget_minutes")} min budget. '
             f'{env.get("gpu") or env.get("platform", "")}; torch {env.get("torch")}, timm {env.get("timm")}, '
             f'timm-coded {env.get("timm_coded")} (commit {env.get("git_commit") or "unknown"}).', '',
             f'Command: `{d.get("command")}`', '']
    stages = d.get('stages', {})
    tp = stages.get('trainpy')
    if tp:
        lines += ['## 1. timm train.py on the device', '']
        if tp.get('status') in ('skipped', 'error'):
            lines += [f'{tp["status"]}: {tp.get("reason") or tp.get("error")}', '']
        else:
            lines += [f'Model `{tp["model"]}`, {tp["images_per_class"]} images per class, batch {tp["batch_size"]}, '
                      f'compile backend {tp["compile_backend"]}; overall **{tp["status"]}**.', '',
                      '| run | flags | status | steps | last loss | coding loss (mu sum L_code) | loss scale | s |',
                      '|---|---|---|---|---|---|---|---|']
            for name, r in tp.get('runs', {}).items():
                lines.append(f'| {name} | `{" ".join(r.get("flags", []))}` | {r["status"]}'
                             f'{" (" + r["reason"] + ")" if r.get("reason") else ""} | {r.get("train_steps_logged", "-")} '
                             f'| {_num(r.get("last_loss"))} | {_num(r.get("coding_loss"))} | {_num(r.get("loss_scale_last"))} '
                             f'| {r.get("seconds", "-")} |')
            lines.append('')
    th = stages.get('throughput')
    if th:
        lines += ['## 2. Training throughput and memory, coded vs plain (coded=False)', '']
        if th.get('status') == 'error':
            lines += [f'error: {th.get("error")}', '']
        else:
            compiled = f', torch.compile ({th["compile_backend"]})' if th.get('compile_backend') else ', eager'
            lines += [f'autocast {th.get("amp_dtype")}, channels_last {th.get("channels_last")}{compiled}. '
                      f'Memory: {th.get("memory_metric")}. Timing: {th.get("timing")}.', '',
                      '| net | batch | px | coded train img/s | plain train img/s | ratio | coded infer img/s | '
                      'plain infer img/s | ratio | coded peak GiB | plain peak GiB | memory ratio |',
                      '|---|---|---|---|---|---|---|---|---|---|---|---|']
            for n in th.get('nets', []):
                if n.get('status') != 'ok':
                    lines.append(f'| {n["model"]} | | | {n.get("status")}: {n.get("error") or n.get("reason")} |')
                    continue
                c, p, r = n['variants']['coded'], n['variants']['plain'], n['ratios']
                mem = r.get('peak_memory', r['saved_for_backward'])
                lines.append(f'| {n["model"]} | {n["batch"]} | {n["image_size"]} | {c["train_img_s"]} | '
                             f'{p["train_img_s"]} | {r["train_throughput"]:.3f} | {c["infer_img_s"]} | '
                             f'{p["infer_img_s"]} | {r["inference_throughput"]:.3f} | {c.get("peak_gib", "-")} | '
                             f'{p.get("peak_gib", "-")} | {mem:.3f} |')
            for n in th.get('nets', []):
                pr = n.get('profile')
                if pr:
                    lines += ['', f'Where `{n["model"]}`\'s coded step spends its extra time ({pr["metric"]}; '
                                  f'coded {pr["coded_ms"]:.2f}, plain {pr["plain_ms"]:.2f}):', '',
                              '| operator | coded ms | plain ms | extra ms |', '|---|---|---|---|']
                    lines += [f'| `{r["op"]}` | {r["coded_ms"]:.3f} | {r["plain_ms"]:.3f} | {r["extra_ms"]:.3f} |'
                              for r in pr['top_extra']]
            pt = th.get('paper_tpu', PAPER_TPU)
            lines += ['', f'Paper (TPU, ImageNet 160 px): coded {pt["coded_samples_per_s"]} vs plain '
                          f'{pt["plain_samples_per_s"]} samples/s (ratio {pt["throughput_ratio"]}), memory '
                          f'{pt["coded_memory_gb"]} vs {pt["plain_memory_gb"]} GB (ratio {pt["memory_ratio"]}).', '']
    tr = stages.get('training')
    if tr:
        lines += ['## 3. CIFAR-10 training, coded vs control', '']
        if tr.get('status') in ('error', 'skipped'):
            lines += [f'{tr["status"]}: {tr.get("error") or tr.get("reason")}', '']
        else:
            lines += [f'`{tr["model"]}`, {tr["train_images"]} train / {tr["val_images"]} held-out images, '
                      f'{tr["epochs"]} epochs ({tr["epochs_reason"]}).', '',
                      '| variant | status | epochs | final val (flip TTA) | best val | reloaded checkpoint val | '
                      'coding loss | img/s incl. eval | s |', '|---|---|---|---|---|---|---|---|---|']
            for kind, r in tr.get('runs', {}).items():
                lines.append(f'| {kind} | {r["status"]} | {r["epochs_done"]}/{r["planned_epochs"]} | '
                             f'{_pct(r.get("final_val_accuracy"))} | {_pct(r.get("best_val_accuracy"))} | '
                             f'{_pct(r.get("val_accuracy_reloaded_checkpoint"))} | {_num(r.get("final_coding_loss"))} | '
                             f'{r.get("train_img_s_incl_eval")} | {r.get("seconds")} |')
            if 'coded_minus_control_val_accuracy' in tr:
                lines += ['', f'coded - control: {100 * tr["coded_minus_control_val_accuracy"]:+.2f} points.']
            lines.append('')
    plan = d.get('time_plan', {})
    lines += ['## Time plan', '', '| stage | started at s | allowed s | used s |', '|---|---|---|---|']
    for stage in ('setup',) + STAGES:
        if stage in plan:
            p = plan[stage]
            lines.append(f'| {stage} | {p.get("start_s")} | {p.get("allowed_s", "-")} | {p.get("used_s", "-")} |')
    lines += ['', 'Files: ' + ', '.join(f'`{f["path"]}` ({f["bytes"]:,} B)' for f in d.get('files', [])), '']
    return '\n'.join(lines)


# --- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, required=True,
                   help='CIFAR-10 train.tar.gz (train/<class>/<NNNN>.jpg) or the folder it extracts to')
    p.add_argument('--out', type=Path, required=True, help='where the results go ($OUT on the device machine)')
    p.add_argument('--budget-minutes', type=float, default=9., help='every stage ends inside it (default 9)')
    p.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    p.add_argument('--scale', choices=sorted(SCALES), default='full')
    p.add_argument('--stages', default=','.join(STAGES), help=f'comma list of {", ".join(STAGES)}')
    p.add_argument('--timm-scripts', type=Path, default=None, help='folder with timm\'s train.py (stage trainpy)')
    p.add_argument('--site', type=Path, action='append', default=[],
                   help='extra import path put first (e.g. a carried timm); repeatable')
    p.add_argument('--work', type=Path, default=None, help='scratch folder (default: a new temporary one)')
    p.add_argument('--trainpy-runs', default=None, help=f'comma list of {", ".join(TRAINPY_RUNS)} (default all)')
    p.add_argument('--trainpy-parallel', type=int, default=None, help='train.py runs at once (default all on cuda)')
    p.add_argument('--trainpy-per-class', type=int, default=None, help='train.py images per class')
    p.add_argument('--trainpy-model', default=None, help='model for train.py (default coded_resnext29_10x11d; toy '
                                                         'coded_resnext17_10x2d)')
    p.add_argument('--compile-backend', default=None, help='--torchcompile backend (default inductor; eager on cpu)')
    p.add_argument('--bench-nets', default=None, help='comma list of labels (cifar10,cifar100,imagenet)')
    p.add_argument('--bench-compile', default=None, metavar='BACKEND',
                   help='stage throughput: torch.compile both variants (as train.py --torchcompile) with BACKEND')
    p.add_argument('--bench-profile', action='store_true',
                   help='stage throughput: profile one round of training steps; per operator, coded minus plain')
    p.add_argument('--epochs', type=int, default=None, help='training epochs (default: what the budget allows)')
    p.add_argument('--max-epochs', type=int, default=None)
    p.add_argument('--train-model', default=None, help='the coded net the training stage trains (default '
                   'coded_resnext29_10x11d; toy coded_resnext17_10x2d); its control is the same net with coded=False')
    p.add_argument('--recipe', choices=sorted(RECIPES), default='paper',
                   help='training hyper-parameters: paper (the paper\'s CIFAR recipe) or zoo (the shipped CPU zoo '
                        'model\'s, benchmarks/cifar10_zoo.py); the flags below override single values')
    p.add_argument('--batch-size', type=int, default=None, help='training batch (default: the recipe\'s; toy 8)')
    p.add_argument('--holdout-per-class', type=int, default=None, help='held-out images per class (default 500)')
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--min-lr', type=float, default=None)
    p.add_argument('--weight-decay', type=float, default=None)
    p.add_argument('--warmup-epochs', type=int, default=None)
    p.add_argument('--label-smoothing', type=float, default=None)
    p.add_argument('--ema-decay', type=float, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--decode-workers', type=int, default=None)
    args = p.parse_args(argv)
    for key, value in RECIPES[args.recipe].items():  # flags given explicitly win
        if getattr(args, key) is None and not (key == 'batch_size' and args.scale != 'full'):
            setattr(args, key, value)
    if args.bench_profile and args.bench_compile:
        p.error('--bench-profile charges kernel time to eager operators; compiled graphs have none: '
                'profile without --bench-compile')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(',') if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f'unknown stages {bad}; known: {", ".join(STAGES)}')
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / 'oneshot.log', 'a')
    sys.stdout, sys.stderr = Tee(sys.stdout, log_file), Tee(sys.stderr, log_file)
    budget = Budget(args.budget_minutes, stages)
    budget.plan['setup'] = {'start_s': 0.}

    # the checkout (and carried packages) first on the path, here and in every subprocess
    paths = [str(p.resolve()) for p in args.site] + [str(REPO)]
    for p in reversed(paths):
        if p not in sys.path[:len(paths)]:
            sys.path.insert(0, p)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [x for x in [os.environ.get('PYTHONPATH')] if x]))
    import torch
    import timm
    import timm_coded
    timm_coded.register_models()

    scale = SCALES[args.scale]
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    report = Report(out, budget)
    report.data.update(command=' '.join([Path(sys.executable).name] + [os.path.relpath(__file__, Path.cwd())]
                                        + (argv if argv is not None else sys.argv[1:])),
                       scale=args.scale, budget_minutes=args.budget_minutes, stages_requested=stages,
                       started=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        report.data.update(status='error', error='--device cuda but torch.cuda.is_available() is False')
        report.save()
        log(report.data['error'])
        return 2
    work = (args.work or Path(tempfile.mkdtemp(prefix='timm-coded-oneshot-'))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f'{args.scale} scale on {device}; budget {args.budget_minutes} min; stages {",".join(stages)}; '
        f'timm {timm.__version__} from {Path(timm.__file__).parent}; work {work}')
    trainpy: Optional[TrainPyStage] = None
    try:
        root = prepare_data(args.data, work)
        log(f'data: {root}')
        # stage 1 runs in the background while the main process decodes the training data (CPU)
        if 'trainpy' in stages:
            trainpy = TrainPyStage(args, scale, device.type, work, env)
            deadline = budget.deadline('trainpy')
            budget.begin('trainpy', deadline)
            trainpy.start(root)
        data = None
        if 'training' in stages:
            workers = args.decode_workers or min(8, max(1, (os.cpu_count() or 2) // 2))
            data = load_cifar(root, args.holdout_per_class or scale['holdout_per_class'], workers)
        budget.plan['setup']['used_s'] = round(budget.elapsed(), 1)
        report.data['environment'] = environment(device)  # initialises CUDA: after the fork of the decoders
        manifest = args.data.resolve().parent / 'MANIFEST.json'  # written by prepare_carry.py next to the tar
        if manifest.is_file():
            try:
                report.data['environment']['carry_manifest'] = json.loads(manifest.read_text())
            except ValueError:
                pass
        report.save()
        if device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        amp_dtype = torch.bfloat16  # bf16 autocast + channels_last: the fast path, on the GPU and the CPU alike
        channels_last = True

        if trainpy is not None:
            result = None
            try:
                result = trainpy.wait(deadline)
            except Exception as exc:
                traceback.print_exc()
                result = {'status': 'error', 'error': f'{type(exc).__name__}: {exc}'}
            budget.finish('trainpy')
            result['seconds'] = budget.plan['trainpy']['used_s']
            report.data['stages']['trainpy'] = result
            report.save()
            log(f'stage trainpy: {result["status"]} in {result["seconds"]:.0f} s')
        bench = None
        if 'throughput' in stages:
            bench = run_stage('throughput', report, budget,
                              lambda dl: throughput_stage(args, scale, device, amp_dtype, channels_last, dl))
        if 'training' in stages:
            run_stage('training', report, budget,
                      lambda dl: training_stage(args, scale, device, amp_dtype, channels_last, data, bench, out, dl))
        statuses = [r.get('status') for r in report.data['stages'].values()]
        report.data['status'] = 'ok' if all(s in ('ok', 'pass', 'skipped') for s in statuses) else 'partial'
    except Exception as exc:
        traceback.print_exc()
        report.data.update(status='error', error=f'{type(exc).__name__}: {exc}', traceback=traceback.format_exc()[-3000:])
    finally:
        if trainpy is not None:
            trainpy.kill_all()
        report.data['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
        report.save()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    log(f'done: {report.data["status"]} in {budget.elapsed():.0f} s; {out / "summary.json"}')
    sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream
    log_file.close()
    return 0 if report.data['status'] in ('ok', 'partial') else 1


if __name__ == '__main__':
    sys.exit(main())
