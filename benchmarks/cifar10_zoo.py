"""Train a zoo model on CIFAR-10 on the CPU fast path: one variant (coded or its uncoded control).

45,000 training images (CIFAR-10's train JPEGs minus the last 500 of each class, which are the
held-out split every number is measured on). The recipe (see benchmarks/RESULTS.md for why):
images decoded once into a uint8 tensor and augmented in torch (pad 4 + crop, flip), channels_last
+ bf16 autocast (energies and coding loss stay float32), SGD Nesterov with a short linear warm-up
and cosine decay, label smoothing, an EMA of the weights, and flip test-time augmentation. After
every epoch the checkpoint (safetensors) and history.json are rewritten atomically, so an
interrupted run leaves its completed epochs behind.

    python benchmarks/cifar10_zoo.py --data-dir /tmp/cifar10/train --out runs/zoo/coded --epochs 15
    python benchmarks/cifar10_zoo.py --data-dir /tmp/cifar10/train --out runs/zoo/control --epochs 15 --control

`--arch-kwargs` overrides architecture arguments (the size sweep); `--max-minutes` stops after that
much training time (the sweep's equal-time comparison; the schedule still spans `--epochs`).

`--init-from RUN` continues a run with a second warm-up + cosine schedule (a warm restart): it starts
from RUN's checkpoint (the EMA weights it was evaluated with; sha256-checked against RUN's record),
requires the same model and variant, and writes one history with both stages (epochs numbered on;
`stages` lists each stage's arguments and the epochs it ran), so the curves and the shipped card show
the whole training. Shuffles, crops and dropSubNNs masks are drawn anew (seeded by the epoch number,
not replayed from epoch 1). The optimizer state is not carried over (the checkpoint holds weights
only); momentum restarts from zero. --out must be a new folder: the run continued from stays intact.

    python benchmarks/cifar10_zoo.py ... --out runs/zoo/coded2 --init-from runs/zoo/coded --epochs 11 --lr 0.08
"""
import argparse
import json
import os
import time
from pathlib import Path

from timm_coded.errors import TimmCodedError
from timm_coded.hub.export import sha256_file
from timm_coded.training.runs import CHECKPOINT_NAME, HISTORY_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('--model', default='coded_resnext17_10x8d')
    parser.add_argument('--arch-kwargs', default='{}', help='JSON dict of architecture overrides')
    parser.add_argument('--control', action='store_true', help='the uncoded control (coded=False)')
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=0.15)
    parser.add_argument('--weight-decay', type=float, default=5e-4)
    parser.add_argument('--warmup-epochs', type=int, default=1)
    parser.add_argument('--label-smoothing', type=float, default=0.2)
    parser.add_argument('--ema-decay', type=float, default=0.999)
    parser.add_argument('--amp-dtype', default='auto')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--max-minutes', type=float, default=0.)
    parser.add_argument('--init-from', type=Path, default=None,
                        help='a run folder to continue from (warm restart, see above)')
    parser.add_argument('--holdout-per-class', type=int, default=500,
                        help='held out (never trained on): the last N images of each class')
    args = parser.parse_args()
    try:
        run(args)
    except TimmCodedError as e:  # bad input: one line, nothing written
        raise SystemExit(f'error: {e}') from None


def run(args: argparse.Namespace) -> None:
    import torch
    import timm
    from safetensors.torch import save_file

    import timm_coded  # noqa: F401
    from timm_coded.data import CIFAR10_MEAN, CIFAR10_STD, holdout_split
    from timm_coded.data.tensor import TensorBatchLoader, decode_images
    from timm_coded.training.trainer import TrainConfig, train_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if (out / HISTORY_NAME).exists():
        raise TimmCodedError(f'--out {out} already holds a run ({HISTORY_NAME}): choose a new folder')
    model_kwargs = dict(json.loads(args.arch_kwargs), **({'coded': False} if args.control else {}))
    model = timm.create_model(args.model, **model_kwargs)
    history, stages = [], []
    if args.init_from is not None:
        history, stages = _continue_from(args.init_from, model, args.model, model_kwargs)
        held_out = stages[-1].get('holdout_per_class', 500)  # runs before the option held out 500
        if held_out != args.holdout_per_class:  # else this stage would train on its held-out images
            raise TimmCodedError(f'--init-from {args.init_from} held out {held_out} images per class, '
                                 f'not --holdout-per-class {args.holdout_per_class}')
    stage = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    stages.append(dict(stage, epochs_run=0))
    first_epoch = len(history)
    if first_epoch:  # a warm restart draws new dropSubNNs masks and shuffles, not stage 1's again
        torch.manual_seed(args.seed * 100_003 + first_epoch)

    start = time.perf_counter()
    train_samples, val_samples = holdout_split(args.data_dir, per_class=args.holdout_per_class)
    train_x, train_y = decode_images(train_samples, 32)
    val_x, val_y = decode_images(val_samples, 32)
    decode_s = time.perf_counter() - start
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                      amp_dtype=args.amp_dtype, ema_decay=args.ema_decay, flip_tta=True)
    from timm_coded.training.trainer import resolve_amp_dtype
    channels_last = resolve_amp_dtype(args.amp_dtype, torch.device('cpu')) is not None
    train_loader = TensorBatchLoader(train_x, train_y, args.batch_size, train=True, mean=CIFAR10_MEAN,
                                     std=CIFAR10_STD, seed=args.seed, channels_last=channels_last,
                                     first_epoch=first_epoch)
    val_loader = TensorBatchLoader(val_x, val_y, 500, train=False, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    began = time.perf_counter()

    def on_epoch(stats, weights) -> bool:
        history.append(dict(stats.__dict__, epoch=first_epoch + stats.epoch))
        stages[-1]['epochs_run'] = stats.epoch
        state = {k: v.detach().contiguous() for k, v in weights.state_dict().items()}
        staged = out / f'.{CHECKPOINT_NAME}.tmp'
        save_file(state, str(staged), metadata={'format': 'pt'})
        checksum = sha256_file(staged)
        os.replace(staged, out / CHECKPOINT_NAME)
        # written after the weights: a run killed in between leaves a record that names other weights
        record = {
            'model': args.model, 'model_kwargs': model_kwargs, 'checkpoint_sha256': checksum,
            'args': stages[-1], 'stages': stages,
            'train_config': cfg.__dict__,
            'params': sum(p.numel() for p in model.parameters()), 'train_images': len(train_y),
            'val_images': len(val_y), 'decode_seconds': round(decode_s, 1), 'torch': torch.__version__,
            'split': f'CIFAR-10 train JPEGs; held out = last {args.holdout_per_class} per class (sorted '
                     f'names), val_accuracy = EMA weights, flip TTA, on the held-out {len(val_y):,}',
            'history': history}
        (out / f'.{HISTORY_NAME}.tmp').write_text(json.dumps(record, indent=1))
        os.replace(out / f'.{HISTORY_NAME}.tmp', out / HISTORY_NAME)
        images_per_s = len(train_y) // args.batch_size * args.batch_size / stats.seconds
        print(f'epoch {first_epoch + stats.epoch}: loss {stats.loss:.3f} code {stats.coding_loss:.3f} '
              f'train {stats.train_accuracy:.3f} val {stats.val_accuracy:.4f} {stats.seconds:.0f}s '
              f'({images_per_s:.0f} img/s)', flush=True)
        return bool(args.max_minutes) and time.perf_counter() - began > args.max_minutes * 60

    out.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves nothing behind
    train_model(model, train_loader, cfg, val_loader, progress=False, on_epoch=on_epoch)


def _continue_from(run: Path, model, model_name: str, model_kwargs: dict) -> tuple[list, list]:
    """Load a run's weights into `model` (checked: every tensor, same shapes, finite) and return its
    history and stages, after checking it trained the same model and variant."""
    from timm_coded.models.binary import check_state_dict, check_weight_values, read_state_dict
    from timm_coded.training.runs import read_run, run_stages, stage_epochs

    record = read_run(run)
    if (record['model'], record['model_kwargs']) != (model_name, model_kwargs):
        raise TimmCodedError(f"--init-from {run}: it trained {record['model']} {record['model_kwargs']}, "
                             f"not {model_name} {model_kwargs}")
    checkpoint = run / CHECKPOINT_NAME
    state = read_state_dict(checkpoint)
    check_state_dict(model, state, what=f'checkpoint {checkpoint}', model_name=model_name)
    check_weight_values(model, state, what=f'checkpoint {checkpoint}')
    model.load_state_dict(state, strict=True)
    stages = [dict(stage, epochs_run=ran) for stage, ran in
              zip(run_stages(record), stage_epochs(record))]
    return list(record['history']), stages


if __name__ == '__main__':
    main()
