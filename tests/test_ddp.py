"""DDP: two CPU processes (gloo) give the gradients of one process on the concatenated batch.

The task is created and wrapped as train.py does it (`ClassificationTask(...)`, then
`task.prepare_distributed()`), so the coding loss must reach the gradients through DDP's own
forward and gradient all-reduce. The model uses LayerNorm2d instead of BatchNorm (train-mode BN
statistics depend on the per-process batch) and dropSubNNs is off, so the comparison is exact
up to float round-off.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import timm

import timm_coded  # noqa: F401  (registers the models)
from timm_coded.training import CodedClassificationTask
from timm.task.classification import ClassificationTask as TimmClassificationTask

WORLD = 2
PER_RANK = 4
PARAMS = ('layer3.0.conv1.weight', 'layer2.0.conv3.weight', 'layer1.0.conv2.weight', 'fc.weight')


def make_model():
    torch.manual_seed(0)
    return timm.create_model(
        'coded_resnext17_10x2d', layers=(1, 1, 1), drop_subnn_rate=0., norm_layer='layernorm2d')


def full_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * PER_RANK, 3, 16, 16, generator=g), torch.randint(0, 10, (WORLD * PER_RANK,), generator=g)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_step(rank, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        model = make_model()
        task = CodedClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)
        task.prepare_distributed(device_ids=None)
        assert isinstance(task.get_trainable_module(), nn.parallel.DistributedDataParallel)
        x, y = full_batch()
        shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        result = task(x[shard], y[shard])
        result['loss'].backward()
        grads = {n: model.get_parameter(n).grad.clone() for n in PARAMS}
        torch.save({'grads': grads, 'coding_loss': result['coding_loss']}, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason='needs torch.distributed with gloo')
def test_ddp_gradients_equal_single_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_rank_step, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(WORLD)]

    x, y = full_batch()
    model = make_model()
    result = CodedClassificationTask(model=model, criterion=nn.CrossEntropyLoss(), verbose=False)(x, y)
    result['loss'].backward()
    # each rank's coding loss is the mean over its half; their mean is the full batch's
    torch.testing.assert_close(sum(r['coding_loss'] for r in ranks) / WORLD, result['coding_loss'], rtol=1e-5, atol=1e-7)

    plain = make_model()
    TimmClassificationTask(model=plain, criterion=nn.CrossEntropyLoss())(x, y)['loss'].backward()
    for name in PARAMS:
        single = model.get_parameter(name).grad
        for r in ranks:  # DDP averaged the two halves' gradients: every rank holds the same
            torch.testing.assert_close(r['grads'][name], single, rtol=1e-4, atol=1e-7)
    # and those gradients contain the coding loss's (they differ from the classification-only ones)
    coded_conv = 'layer3.0.conv1.weight'
    assert not torch.allclose(ranks[0]['grads'][coded_conv], plain.get_parameter(coded_conv).grad, rtol=1e-3, atol=1e-6)
