"""What the coding costs on each execution path: coded / uncoded time of the same network.

For each network and each path (fp32 NCHW, fp32 channels_last, channels_last + bf16 autocast)
the coded model and the same model built with `coded=False` are timed in one process,
interleaved (coded, uncoded, coded, ...), and the median of the per-round ratios is printed, so
load from other processes hits both alike. The training step is the one the trainer runs:
forward under the path's autocast, cross-entropy + coding loss (float32), backward, SGD step.
Inference is a forward under `torch.inference_mode()` in eval mode.

`--with-float32-energies` adds a third variant, interleaved in the same rounds: the coded model
computing its second moments in float32 on every path (what timm-coded 0.1 did under autocast),
for a before/after comparison free of run-to-run drift. `--compile` runs every model's forward
through `torch.compile` (inductor; the backward is compiled with it), coded and uncoded alike.

    python benchmarks/bench_coding_cost.py [--rounds 7] [--threads 1] [--nets NAME ...] [--paths 'channels_last + bf16' ...] [--compile]
"""
import argparse
import statistics
import time
from contextlib import nullcontext
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
    """Per variant: (median seconds, median of per-round variant / uncoded ratios)."""
    if compile:  # every model shares CodedResNeXt.forward's code object: without a reset, dynamo's
        torch._dynamo.reset()  # recompile limit would leave later models running eagerly
    fns = {v: make_step(name, v, batch, path, train, compile) for v in ['uncoded'] + variants}
    for fn in fns.values():  # warm-up (compilation, oneDNN primitive creation, allocator)
        for _ in range(3 if compile else 2):
            fn()
    times: Dict[str, List[float]] = {v: [] for v in fns}
    for _ in range(rounds):
        for v, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[v].append(time.perf_counter() - t)
    return {v: (statistics.median(times[v]), statistics.median([a / b for a, b in zip(times[v], times['uncoded'])]))
            for v in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--nets', nargs='*', default=[n for n, _, _ in NETS])
    parser.add_argument('--paths', nargs='*', choices=list(PATHS), default=list(PATHS))
    parser.add_argument('--with-float32-energies', action='store_true')
    parser.add_argument('--compile', action='store_true', help='torch.compile every model (inductor)')
    args = parser.parse_args()
    if args.compile and args.with_float32_energies:
        parser.error('--with-float32-energies swaps a function at every call: it cannot be compiled')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = ['coded'] + (['coded, float32 energies'] if args.with_float32_energies else [])
    print(f'torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s), '
          f'medians of {args.rounds} interleaved rounds{", torch.compile" if args.compile else ""}')
    print('| network | path | variant | train step s (uncoded) | train ratio | inference s (uncoded) | infer ratio |')
    print('|---|---|---|---|---|---|---|')
    for name, train_batch, infer_batch in NETS:
        if name not in args.nets:
            continue
        for path in args.paths:
            train = ratios(name, train_batch, path, True, args.rounds, variants, args.compile)
            infer = ratios(name, infer_batch, path, False, args.rounds, variants, args.compile)
            for v in variants:
                print(f'| {name} (B={train_batch} / {infer_batch}) | {path} | {v} '
                      f'| {train[v][0]:.3f} ({train["uncoded"][0]:.3f}) | {train[v][1]:.3f}x '
                      f'| {infer[v][0]:.3f} ({infer["uncoded"][0]:.3f}) | {infer[v][1]:.3f}x |', flush=True)


if __name__ == '__main__':
    main()
