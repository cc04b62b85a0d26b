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
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from .loss import CodedClassificationTask

__all__ = ['TrainConfig', 'EpochStats', 'train_model', 'evaluate_accuracy', 'predict_logits', 'resolve_amp_dtype']


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
    # The fast path: bf16 autocast with channels_last. Energies, the normalisation and the
    # coding loss run in float32 regardless (energy.py), so only the convolutions change
    # precision. 'auto' turns both on where the device runs bf16 natively (any CUDA GPU with
    # bf16, a CPU with AVX-512 bf16 / AMX); None/False turn them off.
    amp_dtype: Optional[str] = 'auto'
    channels_last: Optional[bool] = None  # None: on whenever autocast is on
    ema_decay: float = 0.  # > 0 keeps an exponential moving average of the weights (timm ModelEmaV3)
    flip_tta: bool = False  # evaluate on the image and its mirror (mean of the logits)


def cpu_has_native_bf16() -> bool:
    """True when the CPU runs bf16 matmuls natively (AVX-512 bf16 or AMX), so autocast pays."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp_dtype(amp_dtype: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype `amp_dtype` asks for on `device` ('auto' -> bf16 where native)."""
    if amp_dtype in (None, False, '', 'none', 'float32'):
        return None
    if amp_dtype == 'auto':
        if device.type == 'cuda':
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == 'cpu' and cpu_has_native_bf16() else None
    if amp_dtype not in ('bfloat16', 'float16'):
        raise ValueError(f"amp_dtype must be 'auto', 'bfloat16', 'float16' or None, not {amp_dtype!r}")
    return getattr(torch, amp_dtype)


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
def predict_logits(model: nn.Module, images: torch.Tensor, flip_tta: bool = False,
                   amp_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """float32 logits of `images`; with `flip_tta` the mean over the image and its mirror."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(images).float()
        if flip_tta:
            logits = (logits + model(images.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader, device: str = 'cpu', flip_tta: bool = False,
                      amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False) -> float:
    model.eval()
    correct = total = 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets in loader:
        images = images.to(device).contiguous(memory_format=memory_format)
        logits = predict_logits(model, images, flip_tta, amp_dtype)
        correct += (logits.argmax(1).cpu() == targets).sum().item()
        total += targets.numel()
    return correct / max(total, 1)


def train_model(
        model: nn.Module,
        train_loader: DataLoader,
        cfg: TrainConfig,
        val_loader: Optional[DataLoader] = None,
        progress: bool = True,
        on_epoch: Optional[Callable[[EpochStats, nn.Module], Optional[bool]]] = None,
) -> List[EpochStats]:
    """Train in place; returns per-epoch statistics. Progress bars via tqdm when `progress`.

    `on_epoch(stats, weights)` runs after every epoch with the weights that were evaluated (the
    EMA when `cfg.ema_decay` > 0); a truthy return ends training after that epoch.
    """
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
    autocast_dtype = resolve_amp_dtype(cfg.amp_dtype, device)
    channels_last = autocast_dtype is not None if cfg.channels_last is None else cfg.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # warm-up: early in a short run the average must not be dominated by the random init
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay > 0 else None
    history: List[EpochStats] = []
    for epoch in range(cfg.epochs):
        model.train()
        if hasattr(train_loader, 'set_epoch'):
            train_loader.set_epoch(epoch)
        start = time.perf_counter()
        loss_sum = coding_sum = 0.
        correct = seen = 0
        bar = tqdm(train_loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=not progress, leave=False)
        for step, (images, targets) in enumerate(bar):
            images = images.to(device).contiguous(memory_format=memory_format)
            targets = targets.to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                result = task(images, targets)
            loss = result['loss']
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f'loss is {loss.item()} at epoch {epoch + 1} step {step}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            if ema is not None:
                ema.update(model, step=epoch * steps_per_epoch + step)
            loss_sum += loss.item()
            coding_sum += float(result.get('coding_loss', torch.zeros(())).item())
            if targets.dim() == 1:
                correct += (result['output'].argmax(1) == targets).sum().item()
                seen += targets.numel()
            bar.set_postfix(loss=f'{loss_sum / (step + 1):.3f}', code=f'{coding_sum / (step + 1):.3f}')
        eval_model = ema.module if ema is not None else model
        val_acc = evaluate_accuracy(eval_model, val_loader, cfg.device, cfg.flip_tta, autocast_dtype,
                                    channels_last) if val_loader is not None else None
        stats = EpochStats(
            epoch=epoch + 1, loss=loss_sum / steps_per_epoch, coding_loss=coding_sum / steps_per_epoch,
            train_accuracy=correct / seen if seen else None, val_accuracy=val_acc,
            lr=optimizer.param_groups[0]['lr'], seconds=time.perf_counter() - start)
        history.append(stats)
        # the callback sees the evaluated weights (the EMA when on) and may stop the run early
        if on_epoch is not None and on_epoch(stats, eval_model):
            break
    task.coding_loss.remove()
    if ema is not None:  # the averaged weights are the result (buffers included)
        model.load_state_dict(ema.module.state_dict())
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def history_as_dicts(history: List[EpochStats]) -> List[Dict]:
    return [asdict(h) for h in history]
