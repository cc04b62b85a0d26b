"""timm's own train.py / validate.py, unchanged, training a Coded ResNeXt on a CIFAR-10 subset.

Nothing here imports timm_coded: with timm-coded installed (`pip install .` or `-e .`), its
start-up hook registers the models and the coding-loss task as soon as train.py imports timm.
The coding part of the loss is read from the task's log line ("Coding loss: ...", every
TIMM_CODED_LOG_INTERVAL steps), since train.py itself prints only the total.

    python benchmarks/train_py_cifar.py --timm-scripts DIR_WITH_TRAIN_PY --cifar-tar train.tar.gz \
        --work /tmp/trainpy [--epochs 3] [--per-class 200 50]

DIR_WITH_TRAIN_PY: train.py and validate.py of the installed timm release (they are not in the
wheel or sdist; take them from the timm repository at the matching tag). The runs:
  plain     coded_resnext17_10x2d, label smoothing 0.1, --model-kwargs drop_subnn_rate=0.1 coding_loss_weight=6
  mixup     same + --mixup 0.8 --cutmix 1.0 + --model-ema
  bf16      1 epoch with --amp --amp-dtype bfloat16 (CPU autocast)
  resume    plain's last checkpoint, --resume, one more epoch
  control   (optional) --model-kwargs coded=False: the uncoded baseline, no coding loss
then validate.py on plain's best checkpoint, eager and --torchscript.
Writes WORK/summary.md (tables) and keeps every log.
"""
import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CODING_RE = re.compile(r'Coding loss: ([0-9.e+-]+) \(mu \* sum L_code\)\s+loss without it: ([0-9.e+-]+)')
TRAIN_RE = re.compile(r'Train: (\d+) \[\s*(\d+)/(\d+).*?Loss: ([0-9.e+-]+) \(([0-9.e+-]+)\)')
VALIDATE_RE = re.compile(r'\* Acc@1 ([0-9.]+) \(([0-9.]+)\) Acc@5 ([0-9.]+)')


def make_subset(tar_path: Path, root: Path, train_per_class: int, val_per_class: int) -> Path:
    """ImageFolder train/ and val/: the first N and the last M images (sorted names) of each class."""
    subset = root / f'cifar10_{train_per_class}_{val_per_class}'
    if (subset / 'val').is_dir():
        return subset
    full = root / 'cifar10_full'
    if not (full / 'train').is_dir():
        full.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as tf:
            tf.extractall(full, filter='data')
    tmp = subset.with_suffix('.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    for class_dir in sorted((full / 'train').iterdir()):
        files = sorted(class_dir.iterdir())
        if len(files) < train_per_class + val_per_class:
            raise SystemExit(f'{class_dir} has {len(files)} images, fewer than {train_per_class}+{val_per_class}')
        for split, chosen in (('train', files[:train_per_class]), ('val', files[-val_per_class:])):
            (tmp / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, tmp / split / class_dir.name / f.name)
    tmp.rename(subset)
    return subset


def run(cmd, log: Path, cwd: Path, env) -> float:
    print('$', ' '.join(cmd), flush=True)
    start = time.time()
    with open(log, 'w') as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    elapsed = time.time() - start
    if proc.returncode:
        raise SystemExit(f'failed ({proc.returncode}), see {log}')
    return elapsed


def epoch_table(log: Path, summary_csv: Path):
    """Per epoch: mean total train loss (train.py), mean coding part (task log), eval top-1 (summary.csv)."""
    epoch, coding_by_epoch = None, {}
    for line in log.read_text().splitlines():
        m = TRAIN_RE.search(line)
        if m:
            epoch = int(m.group(1))
        m = CODING_RE.search(line)
        if m and epoch is not None:
            coding_by_epoch.setdefault(epoch, []).append((float(m.group(1)), float(m.group(2))))
    rows = []
    with open(summary_csv) as f:
        for r in csv.DictReader(f):
            e = int(r['epoch'])
            parts = coding_by_epoch.get(e, [])
            coding = sum(p[0] for p in parts) / len(parts) if parts else float('nan')
            without = sum(p[1] for p in parts) / len(parts) if parts else float('nan')
            rows.append((e, float(r['train_loss']), coding, without, float(r['eval_loss']), float(r['eval_top1'])))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--timm-scripts', type=Path, required=True, help='folder with train.py and validate.py')
    parser.add_argument('--cifar-tar', type=Path, required=True, help='CIFAR-10 train.tar.gz (train/<class>/*.jpg)')
    parser.add_argument('--work', type=Path, default=Path('/tmp/trainpy'))
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--per-class', type=int, nargs=2, default=(200, 50), metavar=('TRAIN', 'VAL'))
    parser.add_argument('--python', default=sys.executable)
    parser.add_argument('--runs', nargs='+', default=['plain', 'mixup', 'bf16', 'resume', 'validate'])
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    data = make_subset(args.cifar_tar, args.work, *args.per_class)
    out = args.work / 'output'
    env = dict(os.environ, TIMM_CODED_LOG_INTERVAL='8', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    train = [args.python, 'train.py', str(data), '--train-split', 'train', '--val-split', 'val',
             '--model', 'coded_resnext17_10x2d', '-b', '64', '--lr', '0.1', '--warmup-epochs', '0', '--weight-decay', '5e-4', '--scale', '0.5', '1',
             '--color-jitter', '0', '--workers', '1', '--device', 'cpu', '--log-interval', '8', '--seed', '0',
             '--checkpoint-hist', '1', '--output', str(out)]
    control = train + ['--model-kwargs', 'coded=False', '--epochs', str(args.epochs), '--experiment', 'control']
    train = train + ['--model-kwargs', 'drop_subnn_rate=0.1', 'coding_loss_weight=6']
    runs = {
        'plain': train + ['--epochs', str(args.epochs), '--experiment', 'plain'],
        'mixup': train + ['--epochs', str(args.epochs), '--mixup', '0.8', '--cutmix', '1.0', '--model-ema',
                          '--model-ema-decay', '0.99', '--experiment', 'mixup'],
        'bf16': train + ['--epochs', '1', '--amp', '--amp-dtype', 'bfloat16', '--experiment', 'bf16'],
        'resume': train + ['--epochs', str(args.epochs + 1), '--resume', str(out / 'plain' / 'last.pth.tar'),
                           '--experiment', 'resume'],
        'control': control,  # the same network with every block uncoded: timm's task, no coding loss
    }
    report = [f'data: {data} ({args.per_class[0]} train + {args.per_class[1]} val images per class)', '']
    for name in [r for r in args.runs if r in runs]:
        log = args.work / f'train_{name}.log'
        seconds = run(runs[name], log, args.timm_scripts, env)
        report += [f'### {name} ({seconds / 60:.1f} min)', '', '`' + ' '.join(runs[name][1:]) + '`', '',
                   '| epoch | train loss (total) | coding loss mu*sum L_code | loss without it | eval loss | eval top-1 % |',
                   '|---|---|---|---|---|---|']
        for row in epoch_table(log, out / name / 'summary.csv'):
            report.append('| {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.1f} |'.format(*row))
        report.append('')
    if 'validate' in args.runs:
        checkpoint = out / 'plain' / 'model_best.pth.tar'
        for extra in ([], ['--torchscript']):
            cmd = [args.python, 'validate.py', str(data), '--split', 'val', '--model', 'coded_resnext17_10x2d',
                   '--checkpoint', str(checkpoint), '-b', '100', '--workers', '1', '--device', 'cpu'] + extra
            log = args.work / f'validate{"_torchscript" if extra else ""}.log'
            seconds = run(cmd, log, args.timm_scripts, env)
            m = VALIDATE_RE.search(log.read_text())
            report += [f'### validate.py {" ".join(extra)} ({seconds:.0f} s)', '', '`' + ' '.join(cmd[1:]) + '`', '',
                       f'top-1 {m.group(1)} %, top-5 {m.group(3)} %' if m else 'no result line found', '']
    (args.work / 'summary.md').write_text('\n'.join(report) + '\n')
    print('\n'.join(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
