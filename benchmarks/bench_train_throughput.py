"""End-to-end training throughput on the CPU (data pipeline included): fp32 + timm's per-image
pipeline vs the fast path (uint8 tensors augmented in torch, channels_last + bf16 autocast).

    python benchmarks/bench_train_throughput.py --data-dir /tmp/cifar10/train --model coded_resnext11_10x4d

Each configuration trains `--steps` steps of `--batch-size` images (after `--warmup` steps) with
the real trainer step (CodedClassificationTask: cross-entropy + coding loss, SGD), images read
from the CIFAR-10 JPEGs; prints img/s per configuration and the speed-up.
"""
import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', required=True)
    p.add_argument('--model', default='coded_resnext11_10x4d')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--steps', type=int, default=30)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--images', type=int, default=6000, help='training images used (first N of the split)')
    args = p.parse_args()

    import dataclasses

    import timm
    import torch

    import timm_coded  # noqa: F401
    from timm_coded.data import CIFAR10_MEAN, CIFAR10_STD, holdout_split, make_loader
    from timm_coded.data.tensor import TensorBatchLoader, decode_images
    from timm_coded.training import CodedClassificationTask

    torch.set_num_threads(args.threads)
    train, _ = holdout_split(args.data_dir, per_class=500)
    train = dataclasses.replace(train, samples=train.samples[:args.images])

    def run(name, loader, amp, channels_last):
        torch.manual_seed(0)
        model = timm.create_model(args.model).train()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=memory_format)
        task = CodedClassificationTask(model=model, criterion=torch.nn.CrossEntropyLoss(), device=torch.device('cpu'))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        batches = iter(_forever(loader))
        start = None
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                start = time.perf_counter()
            images, targets = next(batches)
            images = images.contiguous(memory_format=memory_format)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
                loss = task(images, targets)['loss']
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
        rate = args.steps * args.batch_size / seconds
        print(f'{name:<48} {rate:7.0f} img/s', flush=True)
        return rate

    pil = make_loader(train, model_or_data_config=args.model, train=True, batch_size=args.batch_size, seed=0)
    started = time.perf_counter()
    x, y = decode_images(train, 32)
    decode = time.perf_counter() - started
    tensors = TensorBatchLoader(x, y, args.batch_size, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=0)
    print(f'{args.model}, batch {args.batch_size}, {args.threads} threads, {args.steps} steps; decoding '
          f'{len(y)} JPEGs once took {decode:.1f} s')
    base = run('fp32, NCHW, timm per-image pipeline (PIL)', pil, False, False)
    run('fp32, NCHW, decoded-once tensors', tensors, False, False)
    run('bf16 + channels_last, timm per-image pipeline', pil, True, True)
    fast = run('bf16 + channels_last, decoded-once tensors (fast path)', tensors, True, True)
    print(f'fast path / fp32 baseline: {fast / base:.2f}x')


def _forever(loader):
    while True:
        yield from loader


if __name__ == '__main__':
    main()
