"""Early exit in wall-clock time: accuracy vs seconds of `early_exit_predict` against the plain forward.

The zoo's CIFAR-10 model on the 5,000 held-out images (the last 500 of each class of CIFAR-10's
train JPEGs, never trained on). For every exit threshold (quantiles of the decoding margins on
those images, then "never exit"), the batched early-exit predictor runs over all images; samples
that exit at a coded block are not computed in the later blocks. Times are medians of interleaved
rounds (plain forward, then each threshold), so machine load hits all alike.

`--block-times` first prints where the plain forward spends its time, block by block, next to
each block's share of the multiply-adds: an exit saves the time of the blocks after it, not their
MACs.

    python benchmarks/bench_early_exit.py --data-dir /tmp/cifar10/train [--rounds 3] [--threads 1] [--block-times]
"""
import argparse
import statistics
import time

import torch
import timm

import timm_coded  # noqa: F401
from timm_coded.analysis.decoding import (
    collect_outputs, count_macs, default_exit_thresholds, early_exit_predict, early_predictions, network_blocks,
)
from timm_coded.constants import CIFAR10_MEAN, CIFAR10_STD
from timm_coded.data import holdout_split
from timm_coded.data.tensor import TensorBatchLoader, decode_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', required=True)
    parser.add_argument('--model', default='coded_resnext17_10x8d')
    parser.add_argument('--batch-size', type=int, default=250)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--thresholds', type=int, default=6, help='margin quantiles tried (plus never exit)')
    parser.add_argument('--block-times', action='store_true', help='print the per-block time shares first')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = timm.create_model(args.model, pretrained=True).eval()
    _, held_out = holdout_split(args.data_dir, per_class=500, expected_classes=model.class_names)
    images, targets = decode_images(held_out, 32)
    loader = TensorBatchLoader(images, targets, args.batch_size, train=False, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    batches = list(loader)
    outputs = collect_outputs(model, batches)
    thresholds = default_exit_thresholds([m for _, m in early_predictions(model, outputs).values()],
                                         num=args.thresholds)
    macs = count_macs(model)

    if args.block_times:
        print_block_times(model, [x for x, _ in batches], macs, args.rounds)

    results = {}

    def plain() -> None:
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def exit_at(threshold: float):
        def run() -> None:
            results[threshold] = [early_exit_predict(model, x, threshold, macs=macs) for x, _ in batches]
        return run

    runs = {'plain forward': plain, **{threshold: exit_at(threshold) for threshold in thresholds}}
    with torch.no_grad():
        model(batches[0][0])  # warm-up
    times = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    base = statistics.median(times['plain forward'])
    base_accuracy = float((outputs.logits.argmax(1) == outputs.targets).float().mean())
    print(f'torch {torch.__version__}, {args.threads} thread(s), {len(targets)} held-out images, batch '
          f'{args.batch_size}, medians of {args.rounds} interleaved rounds; plain forward {base:.2f} s, '
          f'top-1 {100 * base_accuracy:.2f} %')
    print('| exit threshold (decoding margin) | top-1 % | change (points) | MACs share | wall-clock s | time share | exits per block |')
    print('|---|---|---|---|---|---|---|')
    for threshold in thresholds:
        outs = results[threshold]
        predictions = [o.predictions for o in outs]
        exits = [o.exit_index for o in outs]
        spent = [o.macs for o in outs]
        out = outs[-1]
        accuracy = float((torch.cat(predictions) == targets).float().mean())
        exit_index = torch.cat(exits)
        shares = ', '.join(f'{name} {100 * float((exit_index == i).float().mean()):.0f} %'
                           for i, name in enumerate(out.exit_names))
        seconds = statistics.median(times[threshold])
        print(f'| {threshold:.3f} | {100 * accuracy:.2f} | {100 * (accuracy - base_accuracy):+.2f} '
              f'| {float(torch.cat(spent).mean()) / macs.total:.3f} | {seconds:.2f} | {seconds / base:.3f} | {shares} |')


@torch.no_grad()
def print_block_times(model, batches, macs, rounds: int) -> None:
    """Per part of the network (stem, each block, head): share of the plain forward's time (sum over
    the batches, median of `rounds` passes) and share of its MACs."""
    parts = {name: [] for name in ['stem'] + [n for n, _ in network_blocks(model)] + ['head']}
    for _ in range(max(rounds, 1)):
        spent = dict.fromkeys(parts, 0.)
        for x in batches:
            start = time.perf_counter()
            x = model.forward_stem(x)
            spent['stem'] += time.perf_counter() - start
            for name, block in network_blocks(model):
                start = time.perf_counter()
                x, _ = block(x, None)
                spent[name] += time.perf_counter() - start
            start = time.perf_counter()
            model.forward_head(x)
            spent['head'] += time.perf_counter() - start
        for name, seconds in spent.items():
            parts[name].append(seconds)
    seconds = {name: statistics.median(v) for name, v in parts.items()}
    total = sum(seconds.values())
    part_macs = {'stem': macs.stem, **macs.blocks, 'head': macs.head}
    print(f'plain forward by part ({len(batches)} batches, medians of {max(rounds, 1)} passes, {total:.2f} s):')
    print('| part | time share | MACs share | time share if leaving after it | MACs share if leaving after it |')
    print('|---|---|---|---|---|')
    time_so_far = macs_so_far = 0.
    for name in parts:
        time_so_far += seconds[name] / total
        macs_so_far += part_macs[name] / macs.total
        print(f'| {name} | {seconds[name] / total:.3f} | {part_macs[name] / macs.total:.3f} '
              f'| {time_so_far:.3f} | {macs_so_far:.3f} |')


if __name__ == '__main__':
    main()
