"""What the coding costs on each execution path: coded / uncoded time of the same network.

For each network and each path (fp32 NCHW, fp32 channels_last, channels_last + bf16 autocast)
the coded model and the same model built with `coded=False` are timed in one process,
interleaved (one of each per round, the order alternating from round to round; an odd --rounds is
rounded up), and the median over pairs of rounds of the ratio (the geometric mean of a pair's two
per-round ratios, one of each order) is printed, so load from other processes hits both alike.
`--processes K` repeats the whole measurement in K fresh processes and prints the median and the
range of their ratios: on this machine separate processes differ by more than rounds do. The training step is the one the trainer runs:
forward under the path's autocast, cross-entropy + coding loss (float32), backward, SGD step.
Inference is a forward under `torch.inference_mode()` in eval mode.

`--with-float32-energies` adds a third variant, interleaved in the same rounds: the coded model
computing its second moments in float32 on every path (what timm-coded 0.1 did under autocast),
for a before/after comparison free of run-to-run drift. `--compile` runs every model's forward
through `torch.compile` (inductor; the backward is compiled with it), coded and uncoded alike.

    python benchmarks/bench_coding_cost.py [--rounds 7] [--threads 1] [--nets NAME ...] [--paths 'channels_last + bf16' ...] [--compile] [--processes K]
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
import timm

import timm_coded  # noqa: F401
from timm_coded import energy
from timm_coded.energy import coding_loss, target_codewords
from timm_coded.models.layers import EnergyRecorder

# (model name, train batch, inference batch): the paper's CIFAR-10 net, the zoo's CPU model and
# the previous zoo model (measured before; kept for comparison)
NETS: List[Tuple[str, int, int]] = [
    ('coded_resnext29_10x11d', 16, 64),
    ('coded_resnext17_10x8d', 128, 256),
    ('coded_resnext11_10x4d', 128, 256),
]
PATHS = {
    'fp32 NCHW': (False, None),
    'fp32 channels_last': (True, None),
    'channels_last + bf16': (True, torch.bfloat16),
}


def with_float32_energies(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` with the second moments upcast to float32 on every path (timm-coded 0.1)."""
    def step() -> None:
        current = energy._second_moments
        energy._second_moments = lambda h, num_subnns: current(h.float(), num_subnns)
        try:
            fn()
        finally:
            energy._second_moments = current
    return step


def make_step(name: str, variant: str, batch: int, path: str, train: bool, compile: bool = False) -> Callable[[], None]:
    if variant == 'coded, float32 energies':
        return with_float32_energies(make_step(name, 'coded', batch, path, train, compile))
    channels_last, amp_dtype = PATHS[path]
    model = timm.create_model(name, coded=variant != 'uncoded')
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, model.num_classes, (batch,))
    autocast = (lambda: torch.autocast('cpu', dtype=amp_dtype)) if amp_dtype else nullcontext
    forward = torch.compile(model) if compile else model  # hooks stay on the modules: energies still arrive
    if not train:
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                forward(x)
        return infer

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    recorder = EnergyRecorder(model)
    model.train()

    def step() -> None:
        recorder.clear()
        with autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        for r in recorder.records:
            loss = loss + coding_loss(r.energies, target_codewords(y, r.block.codewords), r.block.num_active)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def ratios(name: str, batch: int, path: str, train: bool, rounds: int, variants: List[str],
           compile: bool = False) -> Dict[str, Tuple[float, float]]:
    """Per variant: (median seconds, median over pairs of rounds of the variant / uncoded ratio)."""
    if compile:  # every model shares CodedResNeXt.forward's code object: without a reset, dynamo's
        torch._dynamo.reset()  # recompile limit would leave later models running eagerly
    fns = {v: make_step(name, v, batch, path, train, compile) for v in ['uncoded'] + variants}
    for fn in fns.values():  # warm-up (compilation, oneDNN primitive creation, allocator)
        for _ in range(3 if compile else 2):
            fn()
    times: Dict[str, List[float]] = {v: [] for v in fns}
    order = list(fns)
    for r in range(rounds + rounds % 2):  # an even number: each order equally often
        # The order alternates, and each ratio is the geometric mean over a pair of rounds (one
        # of each order): whichever variant runs second in a round finds the caches and the
        # allocator as the first left them, and a median over single rounds would side with
        # whichever order had more rounds.
        for v in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fns[v]()
            times[v].append(time.perf_counter() - t)
    return {v: (statistics.median(times[v]), statistics.median(paired_ratios(times[v], times['uncoded'])))
            for v in fns}


def paired_ratios(times: List[float], reference: List[float]) -> List[float]:
    """sqrt(r_2k * r_2k+1) of the per-round ratios r = times / reference, one per pair of rounds."""
    per_round = [a / b for a, b in zip(times, reference)]
    return [math.sqrt(per_round[i] * per_round[i + 1]) for i in range(0, len(per_round) - 1, 2)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--nets', nargs='*', default=[n for n, _, _ in NETS])
    parser.add_argument('--paths', nargs='*', choices=list(PATHS), default=list(PATHS))
    parser.add_argument('--with-float32-energies', action='store_true')
    parser.add_argument('--compile', action='store_true', help='torch.compile every model (inductor)')
    parser.add_argument('--processes', type=int, default=1,
                        help='repeat the whole measurement in K fresh processes, one after the other, and '
                             'print the median and the range of their ratios')
    parser.add_argument('--json', type=Path, default=None, help=argparse.SUPPRESS)  # one process's rows
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.compile and args.with_float32_energies:
        parser.error('--with-float32-energies swaps a function at every call: it cannot be compiled')
    if args.processes < 1:
        parser.error('--processes must be at least 1')
    if args.processes > 1:
        return across_processes(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = ['coded'] + (['coded, float32 energies'] if args.with_float32_energies else [])
    print(f'torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s), '
          f'medians of {args.rounds + args.rounds % 2} interleaved rounds{", torch.compile" if args.compile else ""}')
    print(HEADER)
    rows = []
    for name, train_batch, infer_batch in NETS:
        if name not in args.nets:
            continue
        for path in args.paths:
            train = ratios(name, train_batch, path, True, args.rounds, variants, args.compile)
            infer = ratios(name, infer_batch, path, False, args.rounds, variants, args.compile)
            for v in variants:
                row = {'net': f'{name} (B={train_batch} / {infer_batch})', 'path': path, 'variant': v,
                       'train_s': train[v][0], 'train_uncoded_s': train['uncoded'][0], 'train_ratio': train[v][1],
                       'infer_s': infer[v][0], 'infer_uncoded_s': infer['uncoded'][0], 'infer_ratio': infer[v][1]}
                rows.append(row)
                print(f"| {row['net']} | {path} | {v} | {row['train_s']:.3f} ({row['train_uncoded_s']:.3f}) "
                      f"| {row['train_ratio']:.3f}x | {row['infer_s']:.3f} ({row['infer_uncoded_s']:.3f}) "
                      f"| {row['infer_ratio']:.3f}x |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows))


HEADER = ('| network | path | variant | train step s (uncoded) | train ratio | inference s (uncoded) | infer ratio |\n'
          '|---|---|---|---|---|---|---|')


def across_processes(args: argparse.Namespace) -> None:
    """The measurement repeated in fresh processes: on this machine the lowest and highest of 7
    processes' ratios for the same code lie 0.02-0.09 apart (benchmarks/RESULTS.md), as much as the
    margin a 1.05x goal leaves, so one process is one draw (the cause was not established)."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.processes):
            out = Path(tmp) / f'{k}.json'
            subprocess.run([sys.executable, __file__, *child_argv(sys.argv[1:], out)], check=True,
                           stdout=subprocess.DEVNULL)
            runs.append(json.loads(out.read_text()))
            print(f'process {k + 1}/{args.processes} done', file=sys.stderr, flush=True)
    print(f'torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s), {args.processes} '
          f'processes x {args.rounds + args.rounds % 2} interleaved rounds{", torch.compile" if args.compile else ""}: '
          'the median over processes of each process\'s median, [lowest, highest process]')
    print(HEADER)
    for rows in zip(*runs):
        first = rows[0]

        def cell(key: str) -> str:
            values = [r[key] for r in rows]
            return f'{statistics.median(values):.3f}x [{min(values):.3f}, {max(values):.3f}]'
        train_s = statistics.median(r['train_s'] for r in rows)
        infer_s = statistics.median(r['infer_s'] for r in rows)
        print(f"| {first['net']} | {first['path']} | {first['variant']} "
              f"| {train_s:.3f} ({statistics.median(r['train_uncoded_s'] for r in rows):.3f}) | {cell('train_ratio')} "
              f"| {infer_s:.3f} ({statistics.median(r['infer_uncoded_s'] for r in rows):.3f}) | {cell('infer_ratio')} |")


def child_argv(argv: List[str], json_out: Path) -> List[str]:
    """The command line of one measuring process: the given one, whatever form --processes took
    (argparse keeps the last value of a repeated option), as a single process writing `json_out`."""
    return [*argv, '--processes', '1', '--json', str(json_out)]


if __name__ == '__main__':
    main()
