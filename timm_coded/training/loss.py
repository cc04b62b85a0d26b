"""The coding loss in timm's training: L = L_class + mu * sum over coded blocks of L_code.

`model(x)` returns logits only (as timm expects), so the subNN energies reach the loss through
forward hooks on the blocks' energy taps (`layers.EnergyRecorder`), registered on the unwrapped
model before torch.compile / DDP wrap it. timm >= 1.0.23 computes the training loss inside
`timm.task.ClassificationTask.forward`; `CodedClassificationTask` (and the coded variants of
timm's other tasks) add the coding loss there, so train.py's AMP autocast, gradient
accumulation, loss scaling, DDP gradient sync and EMA all apply to it unchanged.

`install_timm_tasks()` points `timm.task.<Task>` at the coded subclasses; the start-up hook in
`timm_coded_autoload.py` calls it when `timm` is imported. For models without coded blocks every coded
task is exactly timm's task.

Custom training loops use the same pieces:

    coding = CodingLoss(model)             # before torch.compile / DDP
    with coding.recording():
        output = model(input)
    loss = criterion(output, target) + coding(target)
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm.task.classification import ClassificationTask, MultiLabelClassificationTask
from timm.task.distillation import FeatureDistillationTask, LogitDistillationTask
from timm.utils.model import unwrap_model

from ..energy import coding_loss, target_codewords
from ..errors import SchemeError
from ..models.layers import CodedBottleneck, EnergyRecord, EnergyRecorder

__all__ = [
    'coding_loss_from_records', 'coding_loss_from_recorder', 'CodingLoss', 'CodingLossMixin',
    'CodedClassificationTask', 'CodedMultiLabelClassificationTask', 'CodedLogitDistillationTask',
    'CodedFeatureDistillationTask', 'CODED_TASKS',
    'install_timm_tasks', 'uninstall_timm_tasks', 'timm_tasks_installed',
]

_logger = logging.getLogger(__name__)

# Steps between the coded tasks' "coding loss" log lines (0 = never). train.py logs only the total
# loss; this line shows the coding part. Default = train.py's default --log-interval.
LOG_INTERVAL_ENV = 'TIMM_CODED_LOG_INTERVAL'
_DEFAULT_LOG_INTERVAL = 50


def coding_loss_from_records(
        records: Sequence[EnergyRecord],
        target: torch.Tensor,
        weight: float,
        power: float = 4.,
        threshold: float = 0.,
) -> torch.Tensor:
    """mu * sum over the recorded coded blocks of L_code (a float32 scalar).

    Args:
        records: energies of one forward pass (`EnergyRecorder.records`), one per coded block.
        target: what the criterion gets: (B,) class indices, or (B, K) distributions (mixup /
            cutmix / smoothing give mixed codewords t @ W). A batch of energies that is a multiple
            of the targets (JSD augmentation splits) repeats them.
        weight: mu.
        power, threshold: the loss form max(|r E - w| - threshold, 0)^power.
    """
    if not records:
        raise ValueError('no energies were recorded: run the forward pass inside the recording')
    total: Optional[torch.Tensor] = None
    for record in records:
        block = record.block
        codewords = block.codewords
        if codewords.shape[0] == 0:
            raise SchemeError(
                f'coded block {record.name} has no coding scheme (a headless model?); give the model '
                f'a classifier or schemes= before training with the coding loss')
        if block.num_present != block.num_subnns:
            codewords = codewords[:, block.present_subnns]  # a sliced block keeps only its subNNs
        words = target_codewords(target.to(codewords.device), codewords, batch_size=record.energies.shape[0])
        loss = coding_loss(
            record.energies, words, block.num_active, block.num_subnns, power=power, threshold=threshold)
        total = loss if total is None else total + loss
    return total * weight


def coding_loss_from_recorder(
        recorder: EnergyRecorder,
        target: torch.Tensor,
        weight: float,
        power: float = 4.,
        threshold: float = 0.,
) -> torch.Tensor:
    """mu * sum of L_code over the coded blocks recorded by `recorder` since its last `clear()`."""
    return coding_loss_from_records(recorder.records, target, weight, power, threshold)


class _GatedEnergyRecorder(EnergyRecorder):
    """An EnergyRecorder that records only while `recording` is set.

    The hooks stay on the model for its whole life (and are copied into EMA copies by
    deepcopy), but only the training forward should feed the loss: not validation, not the
    EMA model, not the re-run of checkpointed blocks during backward.
    """

    def __init__(self, model: nn.Module) -> None:
        self.recording = False
        super().__init__(model, detach=False)

    def _make_hook(self, name: str, block: CodedBottleneck):
        record = super()._make_hook(name, block)

        def hook(module, inputs, output):
            if self.recording:
                record(module, inputs, output)
        return hook


def _looks_coded_but_opaque(model: nn.Module) -> bool:
    # A TorchScript-compiled coded model (train.py --torchscript) has no Python modules to hook.
    if not isinstance(model, torch.jit.ScriptModule):
        return False
    return any(getattr(m, 'original_name', '') == 'EnergyTap' for m in model.modules())


class CodingLoss:
    """The coding loss of one model: records its coded blocks' energies, then mu * sum L_code.

    mu, power and threshold are read from the model, or the first submodule that has them
    (`coding_loss_weight`, `coding_loss_power`, `coding_loss_threshold`; 1, 4, 0 when absent) at every call, so changing them mid-training
    takes effect. Create it on the plain model before torch.compile or DDP wrap it; the hooks
    keep working through the wrappers.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap_model(model)
        self.recorder = _GatedEnergyRecorder(self.model)
        self.opaque = self.recorder.num_blocks == 0 and _looks_coded_but_opaque(self.model)
        # The module that carries mu & co.: the model itself, or the coded model inside a task's
        # wrapper (feature distillation trains `student + projection`).
        self.settings_owner = next(
            (m for m in self.model.modules() if hasattr(m, 'coding_loss_weight')), self.model)

    @property
    def num_blocks(self) -> int:
        """Coded blocks hooked (0: the model is not coded and the loss is never added)."""
        return self.recorder.num_blocks

    @property
    def weight(self) -> float:
        return float(getattr(self.settings_owner, 'coding_loss_weight', 1.))

    @property
    def power(self) -> float:
        return float(getattr(self.settings_owner, 'coding_loss_power', 4.))

    @property
    def threshold(self) -> float:
        return float(getattr(self.settings_owner, 'coding_loss_threshold', 0.))

    @contextmanager
    def recording(self) -> Iterator['CodingLoss']:
        """Record the energies of the forward passes run inside this context (previous ones dropped)."""
        self.recorder.clear()
        self.recorder.recording = True
        try:
            yield self
        finally:
            self.recorder.recording = False

    @property
    def records(self) -> List[EnergyRecord]:
        return self.recorder.records

    def __call__(self, target: torch.Tensor) -> torch.Tensor:
        """mu * sum L_code of the recorded forward pass; the records are released afterwards."""
        try:
            return coding_loss_from_records(self.records, target, self.weight, self.power, self.threshold)
        finally:
            self.recorder.clear()

    def remove(self) -> None:
        """Take the hooks off the model."""
        self.recorder.remove()


def _log_interval() -> int:
    value = os.environ.get(LOG_INTERVAL_ENV, '')
    try:
        return max(int(value), 0) if value.strip() else _DEFAULT_LOG_INTERVAL
    except ValueError:
        _logger.warning('%s=%r is not an integer; using %d', LOG_INTERVAL_ENV, value, _DEFAULT_LOG_INTERVAL)
        return _DEFAULT_LOG_INTERVAL


class CodingLossMixin:
    """Adds mu * sum L_code to the 'loss' of a timm `TrainingTask` whose model has coded blocks.

    Put it first in the bases: `class X(CodingLossMixin, SomeTimmTask)`. Construction arguments
    pass through unchanged; the hooks go on the task's trainable module as the base class left it
    (the plain model, or e.g. feature distillation's student + projection wrapper; the teacher is
    never hooked). The result dict gains 'coding_loss' (the term added, detached) and
    'loss_without_coding' (the base task's loss, detached). A task whose model has no coded
    blocks is exactly the base task.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coding_loss = CodingLoss(self.get_trainable_module())
        self._coding_warned = False
        self._coding_log_interval = _log_interval()
        self._coding_log_steps = 0
        self._coding_log_sums: Optional[torch.Tensor] = None
        if self.coding_loss.opaque:
            self._warn_not_applied('the model is TorchScript-compiled (train.py --torchscript) and its coded '
                                   'blocks cannot be hooked; train without --torchscript')
        elif self.coding_loss.num_blocks and getattr(self, 'verbose', False):
            _logger.info(
                f'{type(self).__name__}: coding loss on {self.coding_loss.num_blocks} coded blocks, '
                f'mu={self.coding_loss.weight:g}, power={self.coding_loss.power:g}, '
                f'threshold={self.coding_loss.threshold:g}')

    def _warn_not_applied(self, why: str) -> None:
        if not self._coding_warned:
            self._coding_warned = True
            _logger.warning(f'{type(self).__name__}: the coding loss is NOT applied: {why}')

    def forward(self, input: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
        coding = self.coding_loss
        if not coding.num_blocks:
            return super().forward(input, target, *args, **kwargs)
        with coding.recording():
            result = super().forward(input, target, *args, **kwargs)
        if not coding.records:
            self._warn_not_applied('the forward pass recorded no energies (was the model replaced after the '
                                   'task was created?)')
            return result
        coding_term = coding(target)
        base_loss = result['loss']
        result = dict(result)
        result['loss'] = base_loss + coding_term  # float32 coding term: promotes, never rounds down
        result['coding_loss'] = coding_term.detach()
        result['loss_without_coding'] = base_loss.detach()
        self._log_coding_loss(result)
        return result

    def _log_coding_loss(self, result: Dict[str, torch.Tensor]) -> None:
        if not self._coding_log_interval or not getattr(self, 'verbose', False):
            return
        # Sum on the device and read back only when logging: no host sync per step.
        parts = torch.stack([result['coding_loss'].float(), result['loss_without_coding'].float()])
        self._coding_log_sums = parts if self._coding_log_sums is None else self._coding_log_sums + parts
        self._coding_log_steps += 1
        if self._coding_log_steps >= self._coding_log_interval:
            coding_mean, base_mean = (self._coding_log_sums / self._coding_log_steps).tolist()
            _logger.info(
                f'Coding loss: {coding_mean:#.4g} (mu * sum L_code)  loss without it: {base_mean:#.4g}  '
                f'(means of the last {self._coding_log_steps} steps)')
            self._coding_log_sums = None
            self._coding_log_steps = 0


class CodedClassificationTask(CodingLossMixin, ClassificationTask):
    """timm's `ClassificationTask` plus the coding loss of coded models."""


class CodedMultiLabelClassificationTask(CodingLossMixin, MultiLabelClassificationTask):
    """timm's `MultiLabelClassificationTask` plus the coding loss.

    Beyond the paper (one class per image): a sample's target codeword is the mean of its
    positive classes' codewords (its dense target row, normalised to sum to 1).
    """


class CodedLogitDistillationTask(CodingLossMixin, LogitDistillationTask):
    """timm's `LogitDistillationTask` plus the coding loss of a coded student."""


class CodedFeatureDistillationTask(CodingLossMixin, FeatureDistillationTask):
    """timm's `FeatureDistillationTask` plus the coding loss of a coded student."""


# timm.task attribute name -> coded subclass
CODED_TASKS: Dict[str, Type[nn.Module]] = {
    'ClassificationTask': CodedClassificationTask,
    'MultiLabelClassificationTask': CodedMultiLabelClassificationTask,
    'LogitDistillationTask': CodedLogitDistillationTask,
    'FeatureDistillationTask': CodedFeatureDistillationTask,
}
_ORIGINAL_TASKS: Dict[str, Type[nn.Module]] = {
    'ClassificationTask': ClassificationTask,
    'MultiLabelClassificationTask': MultiLabelClassificationTask,
    'LogitDistillationTask': LogitDistillationTask,
    'FeatureDistillationTask': FeatureDistillationTask,
}


def install_timm_tasks() -> List[str]:
    """Point `timm.task.<Task>` at the coded subclasses; returns the names replaced.

    Code that runs `from timm.task import ClassificationTask` afterwards (train.py does, near its
    top) gets the coded task. The classes in timm's submodules (`timm.task.classification`, ...)
    stay timm's own.
    """
    import timm.task
    replaced = []
    for name, coded in CODED_TASKS.items():
        if getattr(timm.task, name, None) is not None:
            setattr(timm.task, name, coded)
            replaced.append(name)
    return replaced


def uninstall_timm_tasks() -> None:
    """Restore timm's own task classes in `timm.task`."""
    import timm.task
    for name, original in _ORIGINAL_TASKS.items():
        if hasattr(timm.task, name):
            setattr(timm.task, name, original)


def timm_tasks_installed() -> bool:
    import timm.task
    return getattr(timm.task, 'ClassificationTask', None) is CodedClassificationTask
