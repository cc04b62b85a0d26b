"""Cost of coding: coded vs the same network uncoded (and vs timm's resnext50_32x4d), as ratios.

For every pair the variants are measured in one process, interleaved (A, B, A, B, ...), and
the median of per-round ratios is reported, so load from other processes hits both alike.
Also measured: a *naive* coded block that materialises every subNN output (what the authors'
code does), to show what the Gram-matrix energies save.

Memory: bytes of tensors saved for backward in one training step (exact, via
saved_tensors_hooks, deduplicated by storage): the activation memory that dominates training
memory. (CPU PyTorch has no allocator peak counter; on a GPU use torch.cuda.max_memory_allocated.)

    python benchmarks/bench_models.py [--rounds 5] [--only cifar10 imagenet small]
"""
import argparse
import json
import statistics
import time
from typing import Callable, Dict

import torch
import torch.nn.functional as F
import timm

import timm_coded  # noqa: F401
from timm_coded.energy import NORM_EPS
from timm_coded.models.layers import CodedBottleneck

# (label, model name, kwargs, batch, image size)
CASES = {
    'cifar10': [
        ('coded', 'coded_resnext29_10x11d', {}, 32, 32),
        ('uncoded', 'coded_resnext29_10x11d', {'coded': False}, 32, 32),
        ('naive-coded', 'coded_resnext29_10x11d', {'naive': True}, 32, 32),
    ],
    'imagenet': [
        ('coded', 'coded_resnext50_32x4d', {}, 4, 128),
        ('uncoded', 'coded_resnext50_32x4d', {'coded': False}, 4, 128),
        ('timm resnext50_32x4d', 'resnext50_32x4d', {}, 4, 128),
        ('naive-coded', 'coded_resnext50_32x4d', {'naive': True}, 4, 128),
    ],
    'small': [
        ('coded', 'coded_resnext17_10x2d', {}, 64, 32),
        ('uncoded', 'coded_resnext17_10x2d', {'coded': False}, 64, 32),
    ],
}


def naive_coded_forward(self: CodedBottleneck, x, mask=None):
    """The authors' approach: conv3 as a grouped conv with N * C outputs, i.e. N full-size
    subNN outputs, each squared and averaged for its energy."""
    shortcut = x
    h = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
    if not self.coded:
        out = self.bn3(self.conv3(h))
    else:
        n, d = self.num_present, self.subnn_width
        c = self.conv3.weight.shape[0]
        # weight (C, N d) -> grouped (N C, d): group n maps h_n to t_n
        w = self.conv3.weight.view(c, n, d).permute(1, 0, 2).reshape(n * c, d, 1, 1)
        t = F.conv2d(h, w, groups=n).unflatten(1, (n, c))  # (B, N, C, H, W)
        energies = t.float().pow(2).mean(dim=(2, 3, 4))
        energies = self.energy_tap(energies)
        scale = torch.rsqrt(energies.sum(1) / self.num_subnns + NORM_EPS)
        multiplier = scale[:, None]
        if self.training and self.drop_subnn_rate > 0:
            if mask is None or self.new_mask:
                mask = timm_coded.models.layers.draw_subnn_mask(x.shape[0], n, self.drop_subnn_rate, x.device)
            multiplier = multiplier * mask
        out = self.bn3((t * multiplier[:, :, None, None, None].to(t.dtype)).sum(1))
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    return self.act3(out + shortcut), mask


def build(name: str, kwargs: Dict) -> torch.nn.Module:
    kwargs = dict(kwargs)
    naive = kwargs.pop('naive', False)
    model = timm.create_model(name, **kwargs)
    if naive:
        for m in model.modules():
            if isinstance(m, CodedBottleneck):
                m.forward = naive_coded_forward.__get__(m)
    return model


def train_step_fn(model, batch: int, size: int) -> Callable[[], None]:
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, model.num_classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    recorder = timm_coded.models.layers.EnergyRecorder(model)
    model.train()

    def step():
        recorder.clear()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if recorder.records:
            from timm_coded.energy import coding_loss, target_codewords
            loss = loss + sum(coding_loss(r.energies, target_codewords(y, r.block.codewords), r.block.num_active)
                              for r in recorder.records)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def infer_fn(model, batch: int, size: int) -> Callable[[], None]:
    x = torch.randn(batch, 3, size, size)
    model.eval()

    def step():
        with torch.inference_mode():
            model(x)
    return step


def saved_activation_bytes(model, batch: int, size: int) -> int:
    """Bytes of distinct storages autograd keeps for backward during one training forward."""
    x = torch.randn(batch, 3, size, size)
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(v for k, v in storages.items() if k not in params)


def compare(cases, rounds: int, what: str) -> Dict[str, Dict]:
    models = {label: build(name, kw) for label, name, kw, _, _ in cases}
    fns = {}
    for label, name, kw, batch, size in cases:
        maker = train_step_fn if what == 'train' else infer_fn
        fns[label] = maker(models[label], batch if what == 'train' else batch * 2, size)
        fns[label]()  # warm-up
    times = {label: [] for label in fns}
    for _ in range(rounds):
        for label, fn in fns.items():  # interleaved rounds
            t = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--only', choices=list(CASES), nargs='*')
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f'torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}')
    results = {}
    for group, cases in CASES.items():
        if args.only and group not in args.only:
            continue
        base = 'uncoded'
        res = {}
        for what in ('train', 'infer'):
            times = compare(cases, args.rounds, what)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = {k: statistics.median([a / b for a, b in zip(times[k], times[base])]) for k in times}
            res[what] = {'median_s': med, 'ratio_vs_uncoded': ratio}
        mem = {}
        for label, name, kw, batch, size in cases:
            mem[label] = {'saved_activations_mib': saved_activation_bytes(build(name, kw), batch, size) / 2 ** 20}
        res['memory'] = mem
        results[group] = res
        print(f'\n### {group} (train batch {cases[0][3]}, infer batch {2 * cases[0][3]}, {cases[0][4]}x{cases[0][4]})')
        print('| variant | train step s | train ratio | inference s | infer ratio | saved activations MiB | act. ratio |')
        print('|---|---|---|---|---|---|---|')
        base_act = mem[base]['saved_activations_mib']
        for label, *_ in cases:
            print(f"| {label} | {res['train']['median_s'][label]:.3f} | {res['train']['ratio_vs_uncoded'][label]:.3f}x "
                  f"| {res['infer']['median_s'][label]:.3f} | {res['infer']['ratio_vs_uncoded'][label]:.3f}x "
                  f"| {mem[label]['saved_activations_mib']:.1f} | {mem[label]['saved_activations_mib'] / base_act:.3f}x |",
                  flush=True)
    with open('benchmarks/bench_models.json', 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
