"""onnxruntime CPU latency of a binary classifier vs its parent, both exported by `timm-coded export-onnx`.

The zoo's CIFAR-10 model and its per-class binary classifiers (shipped in the package) are
exported to ONNX (dynamic batch) in a temporary folder and run with onnxruntime's CPU provider on
random 32x32 inputs (latency does not depend on the values). Times are medians of interleaved
rounds (parent, binary, parent, ...), per batch size; the MAC share (convs + fc, torch's flop
counter) is what slicing removes.

    python benchmarks/bench_onnx_latency.py [--classes cat ship] [--threads 1] [--rounds 30]
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
    args = parser.parse_args()

    parent = timm.create_model(args.model, pretrained=True).eval()
    parent_macs = count_macs(parent).total
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {'parent': session(export_onnx(parent, Path(tmp) / 'parent.onnx'), args.threads)}
        mac_share = {'parent': 1.0}
        for name in args.classes:
            binary = timm_coded.load_binary_classifier(args.model, name).eval()
            sessions[name] = session(export_onnx(binary, Path(tmp) / f'{name}.onnx', input_size=(3, 32, 32)),
                                     args.threads)
            mac_share[name] = count_macs(binary, (3, 32, 32)).total / parent_macs
        print(f'onnxruntime {ort.__version__}, {args.threads} thread(s), medians of {args.rounds} interleaved rounds')
        print('| model | batch | latency ms | time share of parent | MAC share | time share / MAC share |')
        print('|---|---|---|---|---|---|')
        rng = np.random.default_rng(0)
        for batch in args.batch_sizes:
            x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
            times = {key: [] for key in sessions}
            for s in sessions.values():
                for _ in range(3):
                    s.run(None, {'input': x})
            for _ in range(args.rounds):
                for key, s in sessions.items():
                    start = time.perf_counter()
                    s.run(None, {'input': x})
                    times[key].append(time.perf_counter() - start)
            base = times['parent']
            for key in sessions:
                share = statistics.median([a / b for a, b in zip(times[key], base)])
                print(f'| {key} | {batch} | {1000 * statistics.median(times[key]):.2f} | {share:.3f} '
                      f'| {mac_share[key]:.3f} | {share / mac_share[key]:.2f} |')


if __name__ == '__main__':
    main()
