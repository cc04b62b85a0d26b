"""onnxruntime CPU latency of a binary classifier vs its parent, both exported by `timm-coded export-onnx`.

The zoo's CIFAR-10 model and its per-class binary classifiers (shipped in the package) are
exported to ONNX (dynamic batch) in a temporary folder and run with onnxruntime's CPU provider on
random 32x32 inputs (latency does not depend on the values). Times are medians of interleaved
rounds (parent, binary, parent, ...), per batch size; the MAC share (convs + fc, torch's flop
counter) is what slicing removes.

`--keep DIR` keeps the exported files; `--baseline DIR` times files kept that way by another
commit in the same interleaved rounds (a before/after free of run-to-run drift) and prints their
rows and the ratio of the two parents' times.

    python benchmarks/bench_onnx_latency.py [--classes cat ship] [--threads 1] [--rounds 30]
        [--keep DIR] [--baseline DIR]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm

import timm_coded
from timm_coded.analysis.decoding import count_macs
from timm_coded.onnx_export import export_onnx


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='coded_resnext17_10x8d')
    parser.add_argument('--classes', nargs='*', default=['cat', 'ship'])
    parser.add_argument('--batch-sizes', type=int, nargs='*', default=[1, 64])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--keep', type=Path, help='write the exported .onnx files here (a new folder)')
    parser.add_argument('--baseline', type=Path, help='a --keep folder of another commit, timed alongside')
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists():
        raise SystemExit(f'bench_onnx_latency: --keep {args.keep} already exists')
    names = ['parent'] + list(args.classes)
    if args.baseline is not None:
        missing = [n for n in names if not (args.baseline / f'{n}.onnx').is_file()]
        if missing:
            raise SystemExit(f'bench_onnx_latency: --baseline {args.baseline} has no {", ".join(missing)}.onnx')

    parent = timm.create_model(args.model, pretrained=True).eval()
    parent_macs = count_macs(parent).total
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.keep is not None:
            folder = args.keep
            folder.mkdir(parents=True)  # refused above if it exists: only a folder this run made
        sessions = {'parent': session(export_onnx(parent, folder / 'parent.onnx'), args.threads)}
        mac_share = {'parent': 1.0}
        for name in args.classes:
            binary = timm_coded.load_binary_classifier(args.model, name).eval()
            sessions[name] = session(export_onnx(binary, folder / f'{name}.onnx', input_size=(3, 32, 32)),
                                     args.threads)
            mac_share[name] = count_macs(binary, (3, 32, 32)).total / parent_macs
        groups = {'': sessions}
        if args.baseline is not None:
            groups['baseline '] = {n: session(args.baseline / f'{n}.onnx', args.threads) for n in names}
        print(f'onnxruntime {ort.__version__}, {args.threads} thread(s), medians of {args.rounds} interleaved rounds')
        print('| model | batch | latency ms | time share of parent | MAC share | time share / MAC share |')
        print('|---|---|---|---|---|---|')
        rng = np.random.default_rng(0)
        for batch in args.batch_sizes:
            x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
            times = {(g, n): [] for g, group in groups.items() for n in group}
            for g, group in groups.items():
                for s in group.values():
                    for _ in range(3):
                        s.run(None, {'input': x})
            for r in range(args.rounds):
                order = list(groups) if r % 2 == 0 else list(groups)[::-1]  # no position bias between groups
                for g in order:
                    for n, s in groups[g].items():
                        start = time.perf_counter()
                        s.run(None, {'input': x})
                        times[(g, n)].append(time.perf_counter() - start)
            for g in groups:
                base = times[(g, 'parent')]
                for n in names:
                    share = statistics.median([a / b for a, b in zip(times[(g, n)], base)])
                    print(f'| {g}{n} | {batch} | {1000 * statistics.median(times[(g, n)]):.2f} | {share:.3f} '
                          f'| {mac_share[n]:.3f} | {share / mac_share[n]:.2f} |')
            if args.baseline is not None:
                ratio = statistics.median([a / b for a, b in zip(times[('', 'parent')], times[('baseline ', 'parent')])])
                print(f'| parent time / baseline parent time: {ratio:.3f} | {batch} | | | | |')

if __name__ == '__main__':
    main()
