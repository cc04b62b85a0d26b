"""Inference time of each class's binary classifier against its parent Coded ResNeXt.

    python benchmarks/bench_binary.py [--model coded_resnext29_10x11d] [--batch-size 64] [--reps 7]

Eval mode, no autograd, random weights (time does not depend on them). Parent and binary are
timed back to back, in alternating order, once per repetition and class, so that load from
other processes on a shared machine hits both alike; each class's ratio is the median over
repetitions of binary_time / parent_time measured in the same round. Also prints the
multiply-add ratio (convs + fc, `timm_coded.analysis.decoding.count_macs`), the parameter share, and
the time of each stage (parent vs the first class's binary) to show where the time goes.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import timm
from timm_coded.models.binary import count_parameters, slice_binary
from timm_coded.analysis.decoding import count_macs


def timed(model, x) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='coded_resnext29_10x11d')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--reps', type=int, default=7, help='timed rounds per class')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    parser.add_argument('--classes', type=int, default=None, help='only the first N classes')
    parser.add_argument('--channels-last', action='store_true', help='both models and input in channels_last')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    parent = timm.create_model(args.model).eval()
    size = parent.pretrained_cfg['input_size']
    x = torch.randn(args.batch_size, *size)
    classes = range(parent.num_classes if args.classes is None else args.classes)
    binaries = {k: slice_binary(parent, k).eval() for k in classes}
    parent_macs = count_macs(parent, size).total
    if args.channels_last:
        parent = parent.to(memory_format=torch.channels_last)
        binaries = {k: b.to(memory_format=torch.channels_last) for k, b in binaries.items()}
        x = x.contiguous(memory_format=torch.channels_last)

    print(f'{args.model}, batch {args.batch_size}, input {tuple(size)}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, {"channels_last" if args.channels_last else "NCHW"}, '
          f'{platform.processor() or platform.machine()}')
    ratios, parent_times = {}, []
    with torch.inference_mode():
        for _ in range(args.warmup):
            timed(parent, x)
            for b in binaries.values():
                timed(b, x)
        per_class = {k: [] for k in classes}
        for rep in range(args.reps):
            for k, binary in binaries.items():
                if (rep + k) % 2:  # alternate which of the pair runs first
                    tb, tp = timed(binary, x), timed(parent, x)
                else:
                    tp, tb = timed(parent, x), timed(binary, x)
                per_class[k].append(tb / tp)
                parent_times.append(tp)
        for k in classes:
            ratios[k] = statistics.median(per_class[k])
    names = parent.class_names or [str(k) for k in classes]
    print(f'parent: median {1000 * statistics.median(parent_times):.1f} ms per batch, '
          f'{count_parameters(parent):,} parameters, {parent_macs / 1e6:.1f} M MACs per image')
    print('class        time ratio  MAC ratio  param share')
    for k in classes:
        b = binaries[k]
        print(f'{names[k]:<12} {ratios[k]:>9.3f}  {count_macs(b, size).total / parent_macs:>9.3f}  '
              f'{count_parameters(b) / count_parameters(parent):>10.3f}')
    overall = statistics.median(ratios.values())
    print(f'median time ratio over classes: {overall:.3f} (min {min(ratios.values()):.3f}, '
          f'max {max(ratios.values()):.3f})')
    print_stage_times(parent, binaries[next(iter(binaries))], x, args.reps)


def print_stage_times(parent, binary, x, reps: int) -> None:
    """Where the time goes: each stage of the parent and of one binary, interleaved, median."""
    with torch.inference_mode():
        h = parent.forward_stem(x)
        print('stage     parent ms  binary ms  ratio  share of parent time')
        times = {}
        for stage_name in parent.stage_names:
            full, sliced = getattr(parent, stage_name), getattr(binary, stage_name)
            tp, tb = [], []
            for _ in range(reps):
                tp.append(timed(full, h))
                tb.append(timed(sliced, h))
            times[stage_name] = (statistics.median(tp), statistics.median(tb))
            h = full(h)
        total = sum(tp for tp, _ in times.values())
        for stage_name, (tp, tb) in times.items():
            print(f'{stage_name:<8} {1000 * tp:>10.1f} {1000 * tb:>10.1f}  {tb / tp:.3f}  {100 * tp / total:.1f} %')


if __name__ == '__main__':
    main()
