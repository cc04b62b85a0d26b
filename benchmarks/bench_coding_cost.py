"""What the coding costs on each execution path: coded / uncoded time of the same network.

For each network and each path (fp32 NCHW, fp32 channels_last, channels_last + bf16 autocast)
the coded model and the same model built with `coded=False` are timed in one process,
interleaved (coded, uncoded, coded, ...), and the median of the per-round ratios is printed, so
load from other processes hits both alike. The training step is the one the trainer runs:
forward under the path's autocast, cross-entropy + coding loss (float32), backward, SGD step.
Inference is a forward under `torch.inference_mode()` in eval mode.

`--before VARIANT ...` adds earlier implementations of the coded block as further variants,
interleaved in the same rounds, for before/after comparisons free of run-to-run drift:
'coded, float32 energies' computes the second moments in float32 on every path (timm-coded 0.1
under autocast; also `--with-float32-energies`).

    python benchmarks/bench_coding_cost.py [--rounds 7] [--threads 1] [--nets NAME ...] [--paths 'channels_last + bf16' ...] [--before VARIANT ...]
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


def _patched(module, attribute: str, replacement: Callable) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run a step with `module.attribute` replaced: an earlier implementation, timed in the same rounds."""
    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def step() -> None:
            current = getattr(module, attribute)
            setattr(module, attribute, replacement(current))
            try:
                fn()
            finally:
                setattr(module, attribute, current)
        return step
    return wrap


# earlier implementations of the coded block, for before/after comparisons free of run-to-run drift
BEFORE = {
    # second moments upcast to float32 on every path (timm-coded 0.1)
    'coded, float32 energies': _patched(energy, '_second_moments',
                                        lambda current: lambda h, num_subnns: current(h.float(), num_subnns)),
}


def make_step(name: str, variant: str, batch: int, path: str, train: bool) -> Callable[[], None]:
    if variant in BEFORE:
        return BEFORE[variant](make_step(name, 'coded', batch, path, train))
    channels_last, amp_dtype = PATHS[path]
    model = timm.create_model(name, coded=variant != 'uncoded')
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, model.num_classes, (batch,))
    autocast = (lambda: torch.autocast('cpu', dtype=amp_dtype)) if amp_dtype else nullcontext
    if not train:
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                model(x)
        return infer

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    recorder = EnergyRecorder(model)
    model.train()

    def step() -> None:
        recorder.clear()
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        for r in recorder.records:
            loss = loss + coding_loss(r.energies, target_codewords(y, r.block.codewords), r.block.num_active)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def ratios(name: str, batch: int, path: str, train: bool, rounds: int, variants: List[str]) -> Dict[str, Tuple[float, float]]:
    """Per variant: (median seconds, median of per-round variant / uncoded ratios)."""
    fns = {v: make_step(name, v, batch, path, train) for v in ['uncoded'] + variants}
    for fn in fns.values():  # warm-up (oneDNN primitive creation, allocator)
        fn()
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
    parser.add_argument('--before', nargs='*', choices=list(BEFORE), default=[],
                        help='earlier implementations to time in the same rounds')
    parser.add_argument('--with-float32-energies', action='store_true', help="same as --before 'coded, float32 energies'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    before = list(args.before) + (['coded, float32 energies'] if args.with_float32_energies else [])
    variants = ['coded'] + list(dict.fromkeys(before))
    print(f'torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s), '
          f'medians of {args.rounds} interleaved rounds')
    print('| network | path | variant | train step s (uncoded) | train ratio | inference s (uncoded) | infer ratio |')
    print('|---|---|---|---|---|---|---|')
    for name, train_batch, infer_batch in NETS:
        if name not in args.nets:
            continue
        for path in args.paths:
            train = ratios(name, train_batch, path, True, args.rounds, variants)
            infer = ratios(name, infer_batch, path, False, args.rounds, variants)
            for v in variants:
                print(f'| {name} (B={train_batch} / {infer_batch}) | {path} | {v} '
                      f'| {train[v][0]:.3f} ({train["uncoded"][0]:.3f}) | {train[v][1]:.3f}x '
                      f'| {infer[v][0]:.3f} ({infer["uncoded"][0]:.3f}) | {infer[v][1]:.3f}x |', flush=True)


if __name__ == '__main__':
    main()
