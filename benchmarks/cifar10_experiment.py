"""CIFAR-10: Coded ResNeXt vs its uncoded control, same architecture, budget, seed and data order.

Stage 1 (train): both variants train side by side, one process each with one thread (fair on a
2-core machine), on the CIFAR-10 training images minus a held-out validation split (the last
500 images of each class). After every epoch each writes its checkpoint (safetensors) and its
history, so an interrupted run still leaves complete epochs behind.
Stage 2 (evaluate): `timm-coded evaluate` on both checkpoints against the held-out split
(accuracy; for the coded net also early decoding, binary P/R at 9:1, Fig. 2a, early exit).

    python benchmarks/cifar10_experiment.py train --data-dir /tmp/cifar10/train --out runs/c10 --epochs 6
    python benchmarks/cifar10_experiment.py evaluate --data-dir /tmp/cifar10/train --out runs/c10

The data folder is CIFAR-10's train/ ImageFolder (e.g. unpacked from ../shared/data/cifar10).
"""
import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {'coded': {}, 'control': {'coded': False}}


def train_one(args) -> None:
    import torch
    import timm
    from safetensors.torch import save_file

    import timm_coded  # noqa: F401
    from timm_coded.data import holdout_split, make_loader
    from timm_coded.training.trainer import TrainConfig, train_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out) / args.variant
    out.mkdir(parents=True, exist_ok=True)
    model = timm.create_model(args.model, drop_subnn_rate=args.drop_subnn_rate, **VARIANTS[args.variant])
    train_samples, val_samples = holdout_split(args.data_dir, per_class=500)
    if args.train_per_class:  # a CPU budget: the first N training images of each class
        kept, seen = [], {}
        for path, target in train_samples.samples:
            seen[target] = seen.get(target, 0) + 1
            if seen[target] <= args.train_per_class:
                kept.append((path, target))
        train_samples = dataclasses.replace(train_samples, samples=tuple(kept))
    train_loader = make_loader(train_samples, model_or_data_config=model, train=True, batch_size=args.batch_size,
                               augment=args.augment, seed=args.seed)
    val_loader = make_loader(val_samples, model_or_data_config=model, train=False, batch_size=500)
    history = []

    def on_epoch(stats, _weights):
        history.append(stats.__dict__)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / 'model.safetensors.tmp'))
        (out / 'model.safetensors.tmp').replace(out / 'model.safetensors')
        (out / 'history.json').write_text(json.dumps({
            'model': args.model, 'variant': args.variant, 'model_kwargs': VARIANTS[args.variant],
            'epochs_planned': args.epochs, 'batch_size': args.batch_size, 'lr': args.lr, 'seed': args.seed,
            'augment': args.augment, 'train_per_class': args.train_per_class, 'train_images': len(train_samples), 'val_images': len(val_samples),
            'split': 'CIFAR-10 train JPEGs; val = last 500 per class (sorted names)', 'history': history}, indent=1))
        print(f'[{args.variant}] {stats}', flush=True)

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=5e-4)
    train_model(model, train_loader, cfg, val_loader, progress=False, on_epoch=on_epoch)


def train(args) -> None:
    procs = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, '_train_one', '--variant', variant] + [
            f'--{k.replace("_", "-")}={v}' for k, v in vars(args).items() if k not in ('stage', 'variant') and v is not None]
        procs.append(subprocess.Popen(cmd))
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f'training failed: exit codes {codes}')


def evaluate(args) -> None:
    for variant in VARIANTS:
        ckpt = Path(args.out) / variant / 'model.safetensors'
        if not ckpt.exists():
            print(f'{variant}: no checkpoint yet', file=sys.stderr)
            continue
        cmd = [sys.executable, '-m', 'timm_coded.cli', 'evaluate', str(ckpt), '--model', args.model,
               '--data-dir', args.data_dir, '--out', str(Path(args.out) / variant / 'eval')]
        if variant == 'control':
            cmd += ['--model-kwargs', 'coded=False']
        if args.ood_dir:
            cmd += ['--ood-dir', args.ood_dir]
        print('+', ' '.join(cmd), flush=True)
        start = time.time()
        subprocess.run(cmd, check=True)
        print(f'{variant}: evaluated in {time.time() - start:.0f} s')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('stage', choices=['train', 'evaluate', '_train_one'])
    parser.add_argument('--data-dir', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('--model', default='coded_resnext17_10x2d')
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=0.1)
    parser.add_argument('--augment', default='rand-m4-n3')
    parser.add_argument('--drop-subnn-rate', type=float, default=0.1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--train-per-class', type=int, default=0, help='use only the first N train images per class')
    parser.add_argument('--variant', choices=list(VARIANTS))
    parser.add_argument('--ood-dir')
    args = parser.parse_args()
    {'train': train, 'evaluate': evaluate, '_train_one': train_one}[args.stage](args)


if __name__ == '__main__':
    main()
