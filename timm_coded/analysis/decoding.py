"""Early decoding, early exit and the specialization analysis of a Coded ResNeXt.

Early decoding (paper Fig. 4): every coded block's subNN energies, rescaled to sum to N_act,
are decoded to the class with the nearest codeword. Early exit (beyond the paper): a sample
leaves the network at the first coded block whose decoder is confident (decoding margin >=
threshold) and the remaining blocks run only on the samples still inside; the classifier
answers for the rest. Specialization (paper Fig. 2a): removing active subNNs of a block hurts
accuracy, removing inactive ones does not.

Everything runs the model in eval mode and reads energies through `layers.EnergyRecorder`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..models.coded_resnext import CodedResNeXt
from ..energy import decode
from ..errors import NotCodedError, TimmCodedError
from ..models.layers import CodedBottleneck, EnergyRecorder

__all__ = [
    'ModelOutputs', 'collect_outputs', 'network_blocks', 'decoder_blocks', 'early_decoding_accuracy',
    'early_predictions', 'top1', 'MacsProfile', 'count_macs', 'EarlyExitOutput', 'early_exit_predict',
    'EarlyExitPoint', 'simulate_early_exit', 'default_exit_thresholds',
    'SpecializationCurve', 'default_specialization_block', 'specialization_curve',
]


# --- walking the network block by block ---------------------------------------------------------
def network_blocks(model: CodedResNeXt) -> List[Tuple[str, CodedBottleneck]]:
    """(name, block) of every block in forward order; names as in the state_dict ('layer2.0')."""
    return [(f'{stage_name}.{j}', block)
            for stage_name in model.stage_names for j, block in enumerate(getattr(model, stage_name))]


def decoder_blocks(model: CodedResNeXt) -> List[Tuple[str, CodedBottleneck]]:
    """The coded blocks that have a codeword table, i.e. an early decoder, in forward order."""
    _check_coded(model)
    return [(name, b) for name, b in network_blocks(model)
            if b.coded and b.codewords.numel() and b.num_present == b.num_subnns]


def _check_coded(model: nn.Module) -> None:
    if not isinstance(model, CodedResNeXt):
        raise NotCodedError(f'{type(model).__name__} is not a Coded ResNeXt')
    if not any(b.coded for _, b in network_blocks(model)):
        raise NotCodedError('the model has no coded block (an uncoded/control model): there is nothing to decode')


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- one pass over a dataset --------------------------------------------------------------------
@dataclass
class ModelOutputs:
    """Everything one eval pass gives: logits, targets and every coded block's energies."""
    logits: torch.Tensor                  # (n, K) float32
    targets: torch.Tensor                 # (n,) int64
    energies: Dict[str, torch.Tensor]     # block name -> (n, N) float32, forward order

    @property
    def num_samples(self) -> int:
        return int(self.targets.numel())


@torch.no_grad()
def collect_outputs(
        model: CodedResNeXt,
        loader: Iterable,
        progress: bool = False,
        max_samples: Optional[int] = None,
        desc: str = 'evaluating',
) -> ModelOutputs:
    """Run `model` (eval mode) over `loader` and keep logits, targets and coded-block energies."""
    _check_coded(model)
    model.eval()
    device = _model_device(model)
    logits, targets = [], []
    energies: Dict[str, List[torch.Tensor]] = {}
    seen = 0
    with EnergyRecorder(model, detach=True) as recorder:
        for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
            recorder.clear()
            logits.append(model(images.to(device)).float().cpu())
            targets.append(labels.cpu())
            for name, value in recorder.energies().items():
                energies.setdefault(name, []).append(value.float().cpu())
            seen += labels.shape[0]
            if max_samples is not None and seen >= max_samples:
                break
    if not logits:
        raise TimmCodedError('the data loader yielded no images')
    out = ModelOutputs(torch.cat(logits), torch.cat(targets), {k: torch.cat(v) for k, v in energies.items()})
    if max_samples is not None:
        out = ModelOutputs(out.logits[:max_samples], out.targets[:max_samples],
                           {k: v[:max_samples] for k, v in out.energies.items()})
    return out


def early_predictions(model: CodedResNeXt, outputs: ModelOutputs) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Per decoder block: (predicted class (n,), decoding margin (n,)) of the nearest-codeword decoder."""
    result = {}
    for name, block in decoder_blocks(model):
        result[name] = decode(outputs.energies[name], block.codewords.cpu(), block.num_active)
    return result


def top1(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of predicted classes (or of logits' argmax, for (n, K) logits) equal to the targets."""
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=1)
    return float((predictions == targets).float().mean()) if targets.numel() else float('nan')


def early_decoding_accuracy(model: CodedResNeXt, outputs: ModelOutputs) -> Dict[str, float]:
    """Accuracy of every coded block's early decoder (paper Fig. 4), plus 'classifier' (the fc)."""
    acc = {name: top1(pred, outputs.targets) for name, (pred, _) in early_predictions(model, outputs).items()}
    acc['classifier'] = top1(outputs.logits, outputs.targets)
    return acc


# --- compute accounting ---------------------------------------------------------------------------
@dataclass
class MacsProfile:
    """Multiply-adds per sample of each part of the network (convs and the fc)."""
    stem: int
    blocks: Dict[str, int]   # forward order
    head: int

    @property
    def total(self) -> int:
        return self.stem + sum(self.blocks.values()) + self.head

    def up_to(self, block_name: str) -> int:
        """MACs of a sample that leaves right after `block_name` (its decoder is free by comparison)."""
        total = self.stem
        for name, macs in self.blocks.items():
            total += macs
            if name == block_name:
                return total
        raise KeyError(block_name)


# ops whose multiply-adds are counted: the convs and the classifier (flop counter flops = 2 x MACs)
_COUNTED_OPS = ('aten.convolution', 'aten.mm', 'aten.addmm')


@torch.no_grad()
def count_macs(model: CodedResNeXt, input_size: Optional[Sequence[int]] = None) -> MacsProfile:
    """MACs per sample of the stem, every block and the head, from torch's flop counter.

    Convs and the fc only: the energy quadratic forms (bmm/einsum) and elementwise ops are left
    out (a few % of a block), so a sliced model's count is the physical share of its convs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if input_size is None:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        if 'input_size' not in cfg:
            raise ValueError('the model has no pretrained_cfg input_size (not built by timm.create_model): '
                             'pass input_size=(C, H, W)')
        input_size = cfg['input_size']
    input_size = tuple(input_size)[-3:]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros((1,) + input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()  # 'Global' and '<ModelClass>.<module path>' -> {op: flops}

    def macs(key: str) -> int:
        return sum(int(v) for op, v in counts.get(key, {}).items() if str(op) in _COUNTED_OPS) // 2

    root = type(model).__name__
    blocks = {name: macs(f'{root}.{name}') for name, _ in network_blocks(model)}
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'fc')
    head = macs(f'{root}.{classifier}')
    return MacsProfile(macs('Global') - sum(blocks.values()) - head, blocks, head)


# --- early exit ---------------------------------------------------------------------------------
@dataclass
class EarlyExitOutput:
    predictions: torch.Tensor   # (B,) class
    exit_index: torch.Tensor    # (B,) index into exit_names
    macs: torch.Tensor          # (B,) multiply-adds spent on the sample
    exit_names: List[str]       # decoder block names, then 'classifier'


@torch.no_grad()
def early_exit_predict(
        model: CodedResNeXt,
        images: torch.Tensor,
        threshold: float,
        exit_blocks: Optional[Sequence[str]] = None,
        macs: Optional[MacsProfile] = None,
) -> EarlyExitOutput:
    """Predict with early exit: each sample stops at the first decoder block (in `exit_blocks`,
    default all) whose decoding margin is >= `threshold`; the others go on, and only they are
    computed in the following blocks. The classifier answers for samples that never exit."""
    _check_coded(model)
    model.eval()
    decoders = dict(decoder_blocks(model))
    exit_blocks = list(decoders) if exit_blocks is None else list(exit_blocks)
    unknown = [b for b in exit_blocks if b not in decoders]
    if unknown:
        raise TimmCodedError(f'no early decoder at {", ".join(unknown)}; decoder blocks: {", ".join(decoders)}')
    exit_names = [name for name in decoders if name in exit_blocks] + ['classifier']
    macs = macs if macs is not None else count_macs(model, images.shape[1:])

    batch = images.shape[0]
    device = images.device
    predictions = torch.empty(batch, dtype=torch.long, device=device)
    exit_index = torch.full((batch,), len(exit_names) - 1, dtype=torch.long, device=device)
    spent = torch.full((batch,), float(macs.total), dtype=torch.float64, device=device)
    alive = torch.arange(batch, device=device)  # original indices of the samples still running

    captured: List[torch.Tensor] = []
    handles = [b.energy_tap.register_forward_hook(lambda m, i, o: captured.append(o)) for b in decoders.values()]
    try:
        x = model.forward_stem(images)
        for name, block in network_blocks(model):
            captured.clear()
            x, _ = block(x, None)
            if name not in exit_blocks:
                continue
            prediction, margin = decode(captured[-1], block.codewords, block.num_active)
            leaving = margin >= threshold
            if leaving.any():
                leaving_idx = alive[leaving]
                predictions[leaving_idx] = prediction[leaving]
                exit_index[leaving_idx] = exit_names.index(name)
                spent[leaving_idx] = float(macs.up_to(name))
                keep = ~leaving
                alive, x = alive[keep], x[keep]
            if alive.numel() == 0:
                break
        if alive.numel():
            predictions[alive] = model.forward_head(x).argmax(dim=1)
    finally:
        for h in handles:
            h.remove()
    return EarlyExitOutput(predictions, exit_index, spent, exit_names)


@dataclass
class EarlyExitPoint:
    """One point of the accuracy-vs-compute curve."""
    threshold: float
    accuracy: float
    mean_macs: float
    relative_macs: float                  # mean_macs / MACs of the full network
    exit_fractions: Dict[str, float]      # share of samples leaving at each exit


def default_exit_thresholds(margins: Iterable[torch.Tensor], num: int = 12) -> List[float]:
    """Quantiles of the observed decoding margins (from eager to never exiting), then +inf."""
    values = torch.cat([m.flatten().float() for m in margins])
    if values.numel() == 0:
        return [math.inf]
    qs = torch.linspace(0, 1, num)
    thresholds = sorted({float(v) for v in torch.quantile(values, qs)})
    return thresholds + [math.inf]  # inf: nobody exits early, the plain classifier


def simulate_early_exit(
        model: CodedResNeXt,
        outputs: ModelOutputs,
        thresholds: Optional[Sequence[float]] = None,
        macs: Optional[MacsProfile] = None,
        exit_blocks: Optional[Sequence[str]] = None,
) -> List[EarlyExitPoint]:
    """Accuracy vs average MACs of early exit over `thresholds`, from one full pass.

    In eval mode a sample's energies do not depend on the other samples, so its exit at any
    threshold can be read off the full pass (`early_exit_predict` gives the same predictions).
    """
    decoded = early_predictions(model, outputs)
    if exit_blocks is not None:
        decoded = {k: v for k, v in decoded.items() if k in set(exit_blocks)}
    macs = macs if macs is not None else count_macs(model)
    if thresholds is None:
        thresholds = default_exit_thresholds([m for _, m in decoded.values()])
    names = list(decoded) + ['classifier']
    final = outputs.logits.argmax(1)
    n = outputs.num_samples
    curve = []
    for threshold in thresholds:
        prediction = final.clone()
        spent = torch.full((n,), float(macs.total), dtype=torch.float64)
        exit_at = torch.full((n,), len(names) - 1, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool)
        for i, (name, (pred, margin)) in enumerate(decoded.items()):
            leaving = (margin >= threshold) & ~done
            prediction[leaving] = pred[leaving]
            spent[leaving] = float(macs.up_to(name))
            exit_at[leaving] = i
            done |= leaving
        fractions = {name: float((exit_at == i).float().mean()) for i, name in enumerate(names)}
        curve.append(EarlyExitPoint(
            float(threshold), top1(prediction, outputs.targets), float(spent.mean()),
            float(spent.mean()) / macs.total, fractions))
    return curve


# --- specialization (paper Fig. 2a) ---------------------------------------------------------------
@dataclass
class SpecializationCurve:
    """Accuracy after removing k random active / inactive subNNs of one block (per sample's class).

    `active[i]` / `inactive[i]` hold the accuracy of every draw for `ks[i]` (None when the class
    has fewer than k such subNNs)."""
    block: str
    ks: List[int]
    active: List[Optional[List[float]]]
    inactive: List[Optional[List[float]]]
    num_samples: int
    draws: int

    def mean(self, which: str) -> List[Optional[float]]:
        values = self.active if which == 'active' else self.inactive
        return [None if v is None else float(np.mean(v)) for v in values]

    def to_dict(self) -> dict:
        d = asdict(self)
        d['active_mean'] = self.mean('active')
        d['inactive_mean'] = self.mean('inactive')
        return d


def default_specialization_block(model: CodedResNeXt) -> str:
    """The paper's block: the second block of c5 for ImageNet (4 stages), else the last block of
    the first coded stage (the last of c3 for the CIFAR models)."""
    _check_coded(model)
    blocks = network_blocks(model)
    if len(model.stage_names) == 4:
        name = f'{model.stage_names[3]}.1'
        if any(n == name and b.coded for n, b in blocks):
            return name
    first_coded_stage = next(n.split('.')[0] for n, b in blocks if b.coded)
    return [n for n, _ in blocks if n.split('.')[0] == first_coded_stage][-1]


@torch.no_grad()
def specialization_curve(
        model: CodedResNeXt,
        loader: Iterable,
        block: Optional[str] = None,
        ks: Optional[Sequence[int]] = None,
        draws: int = 5,
        seed: int = 0,
        progress: bool = False,
) -> SpecializationCurve:
    """Accuracy when k random subNNs of `block` that are active (resp. inactive) for each
    sample's true class are removed (gate = 0), for every k in `ks` and `draws` random draws.

    The draw for a class is the same for all its samples. The network up to `block` runs once
    per batch; the rest runs once per (mode, k, draw) on the whole batch, with a per-sample
    (B, N) gate that removes each sample's own draw.
    """
    _check_coded(model)
    model.eval()
    blocks = network_blocks(model)
    block = block if block is not None else default_specialization_block(model)
    names = [n for n, _ in blocks]
    if block not in names:
        raise TimmCodedError(f'no block {block!r}; blocks: {", ".join(names)}')
    position = names.index(block)
    target = blocks[position][1]
    if not target.coded or not target.codewords.numel():
        raise NotCodedError(f'block {block} is not coded: its subNNs carry no class')
    codewords = target.codewords.cpu().numpy().astype(bool)
    num_classes, num_subnns = codewords.shape
    num_active = target.num_active
    ks = list(range(num_active + 1)) if ks is None else [int(k) for k in ks]
    rng = np.random.default_rng(seed)
    # removed[(mode, k)][draw][class] = subNN indices to remove; None if infeasible
    removed: Dict[Tuple[str, int], Optional[List[List[np.ndarray]]]] = {}
    for mode in ('active', 'inactive'):
        for k in ks:
            pool_size = num_active if mode == 'active' else num_subnns - num_active
            if k > pool_size or k < 0:
                removed[(mode, k)] = None
                continue
            removed[(mode, k)] = [
                [rng.choice(np.flatnonzero(codewords[c] == (mode == 'active')), size=k, replace=False)
                 for c in range(num_classes)] for _ in range(draws)]
    # keep[(mode, k)][draw]: (K, N) 1/0 table; row c is the gate of every sample of class c
    keep: Dict[Tuple[str, int], List[torch.Tensor]] = {}
    for key, per_draw in removed.items():
        if per_draw is None or key[1] == 0:
            continue
        keep[key] = []
        for per_class in per_draw:
            table = torch.ones(num_classes, num_subnns)
            for c, subnns in enumerate(per_class):
                table[c, torch.as_tensor(subnns, dtype=torch.long)] = 0.
            keep[key].append(table)
    correct = {key: np.zeros(draws) for key, v in removed.items() if v is not None}
    total = 0
    saved_gate = target.subnn_gate
    device = _model_device(model)

    def num_correct(x: torch.Tensor, labels: torch.Tensor, gate: torch.Tensor) -> int:
        target.subnn_gate = gate  # (N,) for all, or (B, N): each sample's own subNNs removed
        for _, b in blocks[position:]:
            x, _ = b(x, None)
        return int((model.forward_head(x).argmax(1) == labels).sum())

    try:
        for images, labels in tqdm(loader, desc=f'specialization {block}', disable=not progress, leave=False):
            x = model.forward_stem(images.to(device))
            for _, b in blocks[:position]:
                x, _ = b(x, None)
            labels = labels.to(device)
            total += labels.numel()
            intact = num_correct(x, labels, saved_gate)  # k = 0 removes nothing: serves every mode and draw
            for key, per_draw in removed.items():
                if per_draw is None:
                    continue
                for d in range(draws):
                    if key[1] == 0:
                        correct[key][d] += intact
                    else:
                        gate = keep[key][d].to(device=saved_gate.device, dtype=saved_gate.dtype)[labels]
                        correct[key][d] += num_correct(x, labels, gate)
    finally:
        target.subnn_gate = saved_gate
    if total == 0:
        raise TimmCodedError('the data loader yielded no images')

    def series(mode: str) -> List[Optional[List[float]]]:
        return [None if removed[(mode, k)] is None else (correct[(mode, k)] / total).tolist() for k in ks]

    return SpecializationCurve(block, ks, series('active'), series('inactive'), total, draws)
