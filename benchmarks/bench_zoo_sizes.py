"""Training-step throughput of candidate CPU-scale coded ResNeXts (the zoo model's size sweep).

    python benchmarks/bench_zoo_sizes.py

bf16 autocast + channels_last (the CPU fast path), batch 256, 2 threads, the real training step
(cross-entropy + coding loss, backward, SGD); prints parameters, multiply-adds per image
(torch.utils.flop_counter) and img/s (median of 4 steps after one warm-up).
"""
import time

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import timm_coded  # noqa: F401
from timm_coded.training import CodedClassificationTask

CANDIDATES = {
    'coded_resnext17_10x2d': {},
    'B = coded_resnext11_10x4d': dict(layers=(1, 1, 1), stage_channels=(128, 256, 512), subnn_width=(4, 8, 16),
                                      stem_width=64),
    'C': dict(layers=(2, 2, 2), stage_channels=(96, 192, 384), subnn_width=(3, 6, 12), stem_width=48),
    'D': dict(layers=(3, 3, 3), stage_channels=(96, 192, 384), subnn_width=(3, 6, 12), stem_width=48),
    'A': dict(layers=(2, 2, 2), stage_channels=(128, 256, 512), subnn_width=(4, 8, 16), stem_width=64),
    # second sweep: wider subNNs (the grouped 3x3 convs) and narrower outputs (the 1x1 projections)
    'E': dict(layers=(2, 2, 2), stage_channels=(64, 128, 256), subnn_width=(8, 16, 32), stem_width=64),
    'F': dict(layers=(1, 1, 1), stage_channels=(96, 192, 384), subnn_width=(8, 16, 32), stem_width=64),
    'G': dict(layers=(2, 2, 2), stage_channels=(96, 192, 384), subnn_width=(6, 12, 24), stem_width=48),
    'H = coded_resnext17_10x8d': dict(layers=(1, 2, 2), stage_channels=(64, 128, 256), subnn_width=(8, 16, 32),
                                      stem_width=64),
    'J': dict(layers=(2, 2, 2), stage_channels=(64, 128, 256), subnn_width=(6, 12, 24), stem_width=64),
}


def main() -> None:
    torch.set_num_threads(2)
    x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    for name, kwargs in CANDIDATES.items():
        model = timm.create_model('coded_resnext17_10x2d', **kwargs)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(x[:1])
        model.train().to(memory_format=torch.channels_last)
        task = CodedClassificationTask(model=model, criterion=torch.nn.CrossEntropyLoss(), device=torch.device('cpu'))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        xc = x.contiguous(memory_format=torch.channels_last)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            with torch.autocast('cpu', dtype=torch.bfloat16):
                loss = task(xc, y)['loss']
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        step = sorted(times[1:])[len(times[1:]) // 2]
        params = sum(p.numel() for p in model.parameters())
        print(f'{name:<28} {params / 1e6:.2f} M params  {counter.get_total_flops() / 2e6:.0f} M MACs  '
              f'{256 / step:.0f} img/s  {45000 * step / 256:.0f} s per 45k epoch', flush=True)


if __name__ == '__main__':
    main()
