"""A compact training loop for the demo and benchmarks, built from timm's own parts.

timm's optimizer and scheduler factories, its loss classes and `CodedClassificationTask` (the
same task train.py uses once timm-coded is installed). For real runs use timm's train.py; this
loop exists so that `timm-coded demo` and the benchmarks need no timm checkout.
"""
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

from .training import CodedClassificationTask

__all__ = ['TrainConfig', 'EpochStats', 'train_model', 'evaluate_accuracy']


@dataclass
class TrainConfig:
    """Defaults follow the paper's CIFAR recipe (SGD Nesterov, cosine lr 0.1 -> 1e-4, wd 5e-4)."""
    epochs: int = 10
    lr: float = 0.1
    min_lr: float = 1e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 0
    label_smoothing: float = 0.
    soft_targets: bool = False  # True when the loader gives mixup/cutmix (B, K) targets
    device: str = 'cpu'
    amp_dtype: Optional[str] = None  # 'bfloat16' to train under autocast


@dataclass
class EpochStats:
    epoch: int
    loss: float
    coding_loss: float  # mu * sum of per-block coding losses, mean over steps
    train_accuracy: Optional[float]
    val_accuracy: Optional[float]
    lr: float
    seconds: float


def _criterion(cfg: TrainConfig) -> nn.Module:
    if cfg.soft_targets:
        return SoftTargetCrossEntropy()
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader, device: str = 'cpu') -> float:
    model.eval()
    correct = total = 0
    for images, targets in loader:
        logits = model(images.to(device))
        correct += (logits.argmax(1).cpu() == targets).sum().item()
        total += targets.numel()
    return correct / max(total, 1)


def train_model(
        model: nn.Module,
        train_loader: DataLoader,
        cfg: TrainConfig,
        val_loader: Optional[DataLoader] = None,
        progress: bool = True,
        on_epoch: Optional[Callable[[EpochStats], None]] = None,
) -> List[EpochStats]:
    """Train in place; returns per-epoch statistics. Progress bars via tqdm when `progress`."""
    from tqdm.auto import tqdm

    device = torch.device(cfg.device)
    model.to(device)
    optimizer = create_optimizer_v2(
        model, opt='sgd', lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = len(train_loader)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=cfg.epochs, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    task = CodedClassificationTask(model=model, criterion=_criterion(cfg), device=device)
    autocast_dtype = getattr(torch, cfg.amp_dtype) if cfg.amp_dtype else None
    history: List[EpochStats] = []
    for epoch in range(cfg.epochs):
        model.train()
        start = time.perf_counter()
        loss_sum = coding_sum = 0.
        correct = seen = 0
        bar = tqdm(train_loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=not progress, leave=False)
        for step, (images, targets) in enumerate(bar):
            images, targets = images.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                result = task(images, targets)
            loss = result['loss']
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f'loss is {loss.item()} at epoch {epoch + 1} step {step}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            loss_sum += loss.item()
            coding_sum += float(result.get('coding_loss', torch.zeros(())).item())
            if targets.dim() == 1:
                correct += (result['output'].argmax(1) == targets).sum().item()
                seen += targets.numel()
            bar.set_postfix(loss=f'{loss_sum / (step + 1):.3f}', code=f'{coding_sum / (step + 1):.3f}')
        val_acc = evaluate_accuracy(model, val_loader, cfg.device) if val_loader is not None else None
        stats = EpochStats(
            epoch=epoch + 1, loss=loss_sum / steps_per_epoch, coding_loss=coding_sum / steps_per_epoch,
            train_accuracy=correct / seen if seen else None, val_accuracy=val_acc,
            lr=optimizer.param_groups[0]['lr'], seconds=time.perf_counter() - start)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    task.coding_loss.remove()
    model.eval()
    return history


def history_as_dicts(history: List[EpochStats]) -> List[Dict]:
    return [asdict(h) for h in history]
