"""Per-class binary classifiers sliced out of a trained Coded ResNeXt, and their thresholds.

In every coded block, class k's information runs through the subNNs of its codeword. Keeping
only those (conv1 output channels, the matching conv2 groups, conv3 input columns and their BN
entries), every uncoded block whole and row k of the classifier gives a smaller network whose
single logit equals the full model's logit k with the other subNNs removed (zeroed before the
energy normalization, which still divides by the original N). No retraining.

The sliced network is a registered timm architecture, `<parent>_binary` (e.g.
`coded_resnext29_10x11d_binary`); its model arguments (class, present subNNs per stage,
threshold, parent) are JSON, so `timm.create_model(name, **model_args)` rebuilds it and
`timm.models.save_for_hf` / `create_model('hf-hub:...')` round-trip it.

Thresholds follow the paper: the logit threshold maximising F1 on training data, and
precision/recall measured with 9 negatives sampled per positive.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, is_model, register_model

from .coded_resnext import (
    ALIASES, ARCHITECTURES, MODEL_ARCHS, CodedResNeXt, _check_pretrained_values, manifest_artifact_for, resolve_stage_scheme, tagged_cfgs,
    with_verified_weights,
)
from ..errors import CheckpointMismatchError, IntegrityError, NotCodedError, TimmCodedError
from .layers import CodedBottleneck

__all__ = [
    'CodedBinaryClassifier', 'BinaryMetrics', 'slice_binary', 'binary_architecture', 'parent_architecture',
    'binary_model_args', 'count_parameters', 'parameter_share', 'subnn_channel_index', 'load_checkpoint',
    'read_state_dict', 'check_state_dict', 'calibrate_threshold', 'binary_metrics', 'binary_classifier_logits',
    'gate_to_class', 'gate_to_classes', 'check_weight_values',
]

BINARY_SUFFIX = '_binary'
# registered parent name -> canonical architecture (aliases slice into the canonical binary)
# the registered parents and their aliases come from the one architecture table
_CANONICAL = ALIASES
_PARENTS = tuple(ARCHITECTURES)


# --- the sliced architecture -------------------------------------------------------------------
class CodedBinaryClassifier(CodedResNeXt):
    """A Coded ResNeXt that keeps, in each coded stage, only the subNNs of one class.

    `forward` returns one logit per sample, shape (B, 1); `predict` compares it with the
    calibrated `threshold`. Model arguments beyond `CodedResNeXt`'s:
        class_index: row k of the parent's coding schemes and classifier.
        class_name: its name, when the parent knows class names.
        threshold: decision threshold on the logit (F1-maximising on training data).
        parent_architecture: the registered parent (`coded_resnext29_10x11d`, ...).
    `present_subnns` (per stage, the kept subNN indices; None for uncoded stages) is required.
    """

    def __init__(
            self,
            *,
            present_subnns: Sequence[Optional[Sequence[int]]],
            class_index: int = 0,
            class_name: Optional[str] = None,
            threshold: float = 0.,
            parent_architecture: str = '',
            num_classes: int = 1,
            **kwargs: Any,
    ) -> None:
        present = [None if p is None else [int(i) for i in p] for p in present_subnns]
        # a sliced stage is coded with N_act = the number of subNNs kept (always < N)
        num_active = kwargs.pop('num_active', None)
        num_subnns = kwargs.get('num_subnns', 10)
        stage_subnns = [num_subnns] * len(present) if isinstance(num_subnns, int) else list(num_subnns)
        if num_active is None or isinstance(num_active, int):
            num_active = [num_active] * len(present)
        num_active = [len(p) if p is not None else (a if a is not None else n)
                      for p, a, n in zip(present, num_active, stage_subnns)]
        class_names = [class_name] if class_name is not None and num_classes == 1 else None
        super().__init__(
            present_subnns=present, num_active=num_active, num_classes=num_classes, class_names=class_names,
            **kwargs)
        self.class_index = int(class_index)
        self.class_name = '' if class_name is None else str(class_name)
        self.threshold = float(threshold)
        self.parent_architecture = str(parent_architecture)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        # Built on the meta device, every weight is about to be replaced by the parent's slice
        # (slice_binary); drawing random values there only costs time.
        if next(self.parameters()).is_meta:
            return
        super().init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """True where the logit reaches the threshold (the sample is predicted to be the class)."""
        return self.forward(x)[:, 0] >= self.threshold


def binary_architecture(parent: str) -> str:
    """The registered binary architecture of a parent, e.g. `coded_resnext29_10x11d_binary`."""
    return _CANONICAL.get(parent, parent) + BINARY_SUFFIX


def _default_present_subnns(parent: str, class_index: int) -> List[Optional[List[int]]]:
    """Active subNNs of `class_index` in every stage of `parent` with its built-in schemes."""
    arch = MODEL_ARCHS[parent]
    num_stages = len(arch['layers'])
    per_stage = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * num_stages  # noqa: E731
    present: List[Optional[List[int]]] = []
    for n, a in zip(per_stage(arch['num_subnns']), per_stage(arch['num_active'])):
        scheme = resolve_stage_scheme(None, arch['num_classes'], n, a)
        if scheme is None:
            present.append(None)
        else:
            present.append(list(scheme.active_subnns(scheme.class_index(class_index))))
    return present


def sliced_twin_kwargs(twin: str, parent: str, pretrained: bool, kwargs: Dict[str, Any]) -> Tuple[Any, Any]:
    """What every sliced twin (binary, subset) does first: with pretrained=True, the manifest
    artifact of `<twin>.<tag>` fills in every constructor argument it records (which classes, so
    which subNNs, and the parent's options that shape the weights, e.g. head_bias), as a load of the
    same folder by `local-dir:` does; the caller's own arguments win. A given parent_architecture
    must be this twin's parent. Edits `kwargs` in place; returns the pretrained cfg and the artifact."""
    cfg, artifact = manifest_artifact_for(twin, pretrained, kwargs)
    if artifact is not None:
        for key, value in artifact.model_args.items():
            kwargs.setdefault(key, value)
    parent_arg = kwargs.pop('parent_architecture', None)
    if parent_arg is not None and _CANONICAL.get(parent_arg, parent_arg) != parent:
        raise ValueError(f'parent_architecture={parent_arg!r} does not match {twin}')
    return cfg, artifact


def build_sliced_twin(cls: type, twin: str, parent: str, pretrained: bool, model_args: Dict[str, Any],
                      **fields: Any) -> nn.Module:
    """timm's builder for a sliced twin: `model_args` are the parent architecture's (weights
    verified), `fields` the twin's own (present_subnns, classes); features from every stage."""
    return build_model_with_cfg(
        cls, twin, pretrained,
        feature_cfg=dict(out_indices=tuple(range(len(model_args['layers']) + 1))),
        pretrained_filter_fn=_check_pretrained_values, parent_architecture=parent, **fields, **model_args)


def parent_model_args(parent: str, kwargs: Dict[str, Any], cfg: Any, artifact: Any) -> Dict[str, Any]:
    """The parent architecture's arguments (less its head size) updated by the remaining kwargs,
    with the artifact's weights verified (resolved once, by `sliced_twin_kwargs`)."""
    model_args = {k: v for k, v in MODEL_ARCHS[parent].items() if k != 'num_classes'}
    model_args.update(with_verified_weights(kwargs, cfg, artifact))
    return model_args


def _create_binary(parent: str, pretrained: bool = False, **kwargs) -> CodedBinaryClassifier:
    # without an artifact (random weights), class 0's path is built
    twin = binary_architecture(parent)
    cfg, artifact = sliced_twin_kwargs(twin, parent, pretrained, kwargs)
    class_index = int(kwargs.pop('class_index', 0))
    present = kwargs.pop('present_subnns', None)
    if present is None:  # the class's path through the parent's built-in schemes
        present = _default_present_subnns(parent, class_index)
    return build_sliced_twin(CodedBinaryClassifier, twin, parent, pretrained,
                             parent_model_args(parent, kwargs, cfg, artifact),
                             present_subnns=present, class_index=class_index)


def _binary_cfg(parent: str) -> Dict[str, Any]:
    cfg = get_pretrained_cfg(parent).to_dict()
    cfg = {k: v for k, v in cfg.items() if k not in ('architecture', 'tag', 'hf_hub_id', 'url', 'file')}
    cfg.update(num_classes=1, url='')
    return cfg


# every binary classifier in the manifest is a pretrained tag: `<parent>_binary.<tag>`
default_cfgs = generate_default_cfgs({
    name: cfg for p in _PARENTS for name, cfg in tagged_cfgs(binary_architecture(p), _binary_cfg(p)).items()})


def register_twin(name: str, create: Callable[..., nn.Module], module: str, doc: str) -> Callable[..., nn.Module]:
    """Register a one-line timm entrypoint `name` (a sliced twin of a parent architecture) in `module`.

    Made for every architecture of the table (binary and subset twins alike), so that no
    architecture lacks its twins; `create(pretrained, **kwargs)` builds the model."""
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return create(pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    entrypoint.__doc__ = doc
    setattr(sys.modules[module], name, register_model(entrypoint))
    return entrypoint


for _parent in _PARENTS:
    register_twin(binary_architecture(_parent), partial(_create_binary, _parent), __name__,
                  f'One-class binary classifier sliced from {_parent}.')


# --- slicing -----------------------------------------------------------------------------------
def _stage_blocks(model: CodedResNeXt) -> List[Tuple[str, List[Tuple[str, CodedBottleneck]]]]:
    return [(stage_name, [(f'{stage_name}.{j}', b) for j, b in enumerate(getattr(model, stage_name))])
            for stage_name in model.stage_names]


def _structure_of(model: CodedResNeXt) -> Dict[str, Any]:
    """The MODEL_ARCHS-style description of a model's shape (for finding its architecture)."""
    stages = _stage_blocks(model)
    first = [blocks[0][1] for _, blocks in stages]
    return dict(
        layers=tuple(len(blocks) for _, blocks in stages),
        stage_channels=tuple(b.conv3.out_channels for b in first),
        num_subnns=tuple(b.num_subnns for b in first),
        subnn_width=tuple(b.subnn_width for b in first),
        stem_width=model.conv1.out_channels,
        stem_type='imagenet' if isinstance(model.maxpool, nn.MaxPool2d) else 'cifar',
    )


def _arch_structure(arch: Dict[str, Any]) -> Dict[str, Any]:
    num_stages = len(arch['layers'])
    per_stage = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * num_stages  # noqa: E731
    return dict(
        layers=tuple(arch['layers']), stage_channels=tuple(arch['stage_channels']),
        num_subnns=per_stage(arch['num_subnns']), subnn_width=per_stage(arch['subnn_width']),
        stem_width=arch.get('stem_width', 64), stem_type=arch['stem_type'])


def parent_architecture(model: CodedResNeXt) -> str:
    """The registered architecture a model was built as (canonical name).

    Taken from timm's `pretrained_cfg` when the model came from `timm.create_model`, else found
    by matching the model's shape against the registered coded architectures.
    """
    structure = _structure_of(model)
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    name = _CANONICAL.get(name, name)
    if name in _PARENTS and _arch_structure(MODEL_ARCHS[name]) == structure:
        return name
    for candidate in _PARENTS:
        if _arch_structure(MODEL_ARCHS[candidate]) == structure:
            return candidate
    raise TimmCodedError(
        f'the model ({structure}) matches no registered Coded ResNeXt architecture ({", ".join(_PARENTS)}), '
        'so its binary classifiers have no registered architecture')


def subnn_channel_index(present: Sequence[int], subnn_width: int) -> torch.Tensor:
    """Channels of the listed subNNs in a block's N*d-channel bottleneck (subNN n owns n*d..n*d+d-1)."""
    return torch.cat([torch.arange(n * subnn_width, (n + 1) * subnn_width) for n in present])


def _resolve_class(model: CodedResNeXt, cls: Union[int, str]) -> Tuple[int, Optional[str]]:
    schemes = [s for s in model.schemes if s is not None and not s.is_uncoded]
    if not schemes:
        if any(isinstance(b, CodedBottleneck) and b.coded for b in model.modules()):
            raise NotCodedError('the model has coded blocks but no coding scheme (a headless model?); '
                                'give it a classifier (num_classes > 0) before slicing')
        raise NotCodedError('the model has no coded block (an uncoded/control model): it has no class paths '
                            'to slice a binary classifier from')
    scheme = schemes[0]
    if model.class_names is not None and scheme.class_names is None:
        scheme = scheme.with_class_names(model.class_names)
    index = scheme.class_index(cls)
    name = scheme.class_names[index] if scheme.class_names is not None else None
    return index, name


def binary_model_args(model: CodedResNeXt, cls: Union[int, str], threshold: float = 0.) -> Dict[str, Any]:
    """JSON-serialisable model arguments of class `cls`'s binary classifier of `model`."""
    if isinstance(model, CodedBinaryClassifier):
        raise TimmCodedError('the model is already a binary classifier; slice its parent')
    if not isinstance(model, CodedResNeXt):
        raise NotCodedError(f'{type(model).__name__} is not a Coded ResNeXt; only coded models can be sliced')
    index, name = _resolve_class(model, cls)
    present: List[Optional[List[int]]] = []
    for scheme in model.schemes:
        present.append(None if scheme is None or scheme.is_uncoded else list(scheme.active_subnns(index)))
    args: Dict[str, Any] = dict(
        class_index=index, present_subnns=present, threshold=float(threshold),
        parent_architecture=parent_architecture(model))
    if name is not None:
        args['class_name'] = name
    # constructor options of the parent that change the sliced network's parameters
    if model.head_bias:
        args['head_bias'] = True
    if model.conv1.in_channels != 3:
        args['in_chans'] = model.conv1.in_channels
    return args


def _sliced_state_dict(model: CodedResNeXt, present_subnns: Sequence[Optional[Sequence[int]]],
                       class_indices: Sequence[int]) -> Dict[str, torch.Tensor]:
    """The parent's state with, per coded stage, only the `present_subnns` and, in the
    classifier, only the rows of `class_indices` (in that order)."""
    state = model.state_dict()
    sliced = dict(state)
    for (stage_name, blocks), present in zip(_stage_blocks(model), present_subnns):
        if present is None:
            continue
        for block_name, block in blocks:
            index = subnn_channel_index(present, block.subnn_width).to(block.conv1.weight.device)
            for key in ('conv1.weight', 'conv2.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean',
                        'bn1.running_var', 'bn2.weight', 'bn2.bias', 'bn2.running_mean', 'bn2.running_var'):
                full_key = f'{block_name}.{key}'
                if full_key in state:
                    sliced[full_key] = state[full_key].index_select(0, index)
            # conv2 is grouped per subNN: keeping whole groups keeps each kept weight's input slice
            key = f'{block_name}.conv3.weight'
            sliced[key] = state[key].index_select(1, index)
    rows = torch.as_tensor(list(class_indices), dtype=torch.long, device=state['fc.weight'].device)
    sliced['fc.weight'] = state['fc.weight'].index_select(0, rows)
    if 'fc.bias' in state:
        sliced['fc.bias'] = state['fc.bias'].index_select(0, rows)
    return sliced


def _reset_non_persistent_buffers(model: nn.Module) -> None:
    # `to_empty` leaves buffers that no state_dict restores uninitialised
    for module in model.modules():
        if isinstance(module, CodedBottleneck):
            module.subnn_gate.fill_(1.)


def slice_binary(model: CodedResNeXt, cls: Union[int, str], threshold: float = 0.) -> CodedBinaryClassifier:
    """The binary classifier of class `cls` (index or name): a physically smaller network.

    Its logit equals `model`'s logit `cls` with every subNN inactive for the class removed
    (`gate_to_class`), in eval mode. The result is on the parent's device and dtype, in the
    parent's train/eval mode, and built with `timm.create_model(binary_architecture(parent),
    **binary_model_args(...))` so it saves and reloads like any timm model.

    Raises NotCodedError for an uncoded model, UnknownClassError for an unknown class.
    """
    import timm  # local: timm.create_model resolves the registered binary entrypoint

    args = binary_model_args(model, cls, threshold)
    name = binary_architecture(args['parent_architecture'])
    reference = next(model.parameters())
    # built on the meta device: no random init of weights that are overwritten right away
    binary = timm.create_model(name, device='meta', dtype=reference.dtype, **args)
    binary = binary.to_empty(device=reference.device)
    _reset_non_persistent_buffers(binary)
    state = _sliced_state_dict(model, args['present_subnns'], [args['class_index']])
    check_state_dict(binary, state, what=f'the sliced state of {type(model).__name__}', model_name=name)
    binary.load_state_dict(state, strict=True)
    binary.train(model.training)
    return binary


@contextmanager
def gate_to_class(model: CodedResNeXt, cls: Union[int, str]) -> Iterator[CodedResNeXt]:
    """Remove, in every coded block, the subNNs inactive for class `cls` (a context manager).

    `with gate_to_class(model, k): model(x)[:, k]` is the masked full model whose logit the
    sliced binary classifier of k reproduces. The gates are restored on exit.
    """
    with gate_to_classes(model, [cls]) as gated:
        yield gated


@contextmanager
def gate_to_classes(model: CodedResNeXt, classes: Sequence[Union[int, str]]) -> Iterator[CodedResNeXt]:
    """Keep, in every coded block, only the subNNs active for at least one of `classes` (the
    union of their codewords); the masked full model of a class-subset classifier."""
    indices = [_resolve_class(model, c)[0] for c in classes]
    saved: List[Tuple[CodedBottleneck, torch.Tensor]] = []
    try:
        for (stage_name, blocks), scheme in zip(_stage_blocks(model), model.schemes):
            if scheme is None or scheme.is_uncoded:
                continue
            word = torch.from_numpy(scheme.codewords[indices].max(axis=0).astype(np.float32))
            for _, block in blocks:
                saved.append((block, block.subnn_gate.clone()))
                present = torch.as_tensor(block.present_subnns)
                block.subnn_gate.copy_(word[present].to(block.subnn_gate))
        yield model
    finally:
        for block, gate in saved:
            block.subnn_gate.copy_(gate)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_share(binary: nn.Module, parent: nn.Module) -> float:
    """Fraction of the parent's parameters that the binary classifier keeps."""
    return count_parameters(binary) / count_parameters(parent)


# --- checkpoints -------------------------------------------------------------------------------
def read_state_dict(path: Union[str, os.PathLike], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Weights of a checkpoint file: safetensors, or a torch file read with `weights_only=True`.

    Accepts timm train.py checkpoints (`state_dict`, or `state_dict_ema` with `use_ema`) and
    strips DDP/compile prefixes (`module.`, `_orig_mod.`), via timm's own loader.
    """
    from timm.models import load_state_dict

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if not path.is_file():
        raise IntegrityError(f'checkpoint {path} is not a file')
    try:
        state = load_state_dict(str(path), use_ema=use_ema, device='cpu', weights_only=True)
    except Exception as e:  # a truncated file, another format, a pickle with code, ...
        # every failure becomes one readable line: EOFError / KeyError: 101 say nothing to a user
        detail = ' '.join(str(e).split()).split('. ')[0][:200]  # one line, its first sentence
        try:
            with open(path, 'rb') as f:
                head = f.read(8)
        except OSError:
            head = b''
        is_zip, is_pickle = head.startswith(b'PK\x03\x04'), head[:1] == b'\x80'  # torch.save's two formats
        if not head:
            problem = 'empty file'
        elif path.suffix == '.safetensors':  # timm reads these with safetensors, others with torch.load
            problem = f'corrupt or truncated safetensors file ({detail or type(e).__name__})'
        elif (is_zip or is_pickle) and 'weights_only' in detail:
            problem = ('it holds Python objects besides tensors, which weights-only loading refuses '
                       '(save a plain state_dict, or .safetensors)')
        elif (is_zip and isinstance(e, RuntimeError)) or (is_pickle and isinstance(e, EOFError)):
            problem = 'truncated or corrupt torch checkpoint' + (f' ({detail})' if detail and is_zip else '')
        elif is_zip or is_pickle:
            problem = f'a torch file, but no checkpoint of weights ({type(e).__name__}: {detail})'
        elif isinstance(e, (EOFError, KeyError, IndexError, ValueError, AttributeError, TypeError, RuntimeError)) \
                or type(e).__module__.startswith('_pickle'):
            problem = 'not a safetensors or torch checkpoint'
        else:
            problem = f'{type(e).__name__}: {detail}' if detail else type(e).__name__
        raise IntegrityError(f'cannot read checkpoint {path}: {problem}') from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IntegrityError(f'checkpoint {path} holds no state_dict of tensors')
    return state


def _describe(keys: Sequence[str], limit: int = 4) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def check_state_dict(model: nn.Module, state: Dict[str, torch.Tensor], what: str = 'the checkpoint',
                     model_name: str = '') -> None:
    """Raise CheckpointMismatchError naming the keys and shapes by which `state` misses `model`."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f'{k} {found[k]} vs {expected[k]}' for k in expected if k in found and found[k] != expected[k]]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing keys ({_describe(missing)})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected keys ({_describe(unexpected)})')
    if shapes:
        parts.append(f'{len(shapes)} shape mismatches, checkpoint vs model ({_describe(shapes)})')
    guess = _guess_architecture(found)
    hint = f'; it looks like a {guess} checkpoint' if guess and guess != model_name else ''
    target = model_name or type(model).__name__
    raise CheckpointMismatchError(f'{what} does not fit {target}: ' + '; '.join(parts) + hint)


def check_weight_values(model: nn.Module, state: Dict[str, torch.Tensor], what: str = 'the checkpoint') -> None:
    """Raise CheckpointMismatchError for weights that would load but compute garbage.

    A floating-point parameter or buffer of the model must come as floating point (a bool, uint8
    or int64 tensor would be cast silently) and hold only finite values (one NaN makes every
    prediction the same class).
    """
    expected = model.state_dict()
    for key, value in state.items():
        target = expected.get(key)
        if target is None or not target.is_floating_point():
            continue
        if not value.is_floating_point():
            raise CheckpointMismatchError(f'{what}: {key} is {str(value.dtype).replace("torch.", "")}, '
                                          'not floating point: not a weights file of this model')
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointMismatchError(f'{what}: {key} holds {bad} non-finite value(s) (NaN/inf): refusing it')


def _guess_architecture(found: Dict[str, Tuple[int, ...]]) -> Optional[str]:
    """The registered coded architecture whose state_dict has exactly these keys and shapes."""
    import timm

    # Shapes only: build on the meta device and uncoded (the same parameters), so that a head of
    # any size costs no coding-scheme generation and no memory.
    num_classes = found.get('fc.weight', (0,))[0]
    for name in _PARENTS:
        for head_bias in (False, True):
            model = timm.create_model(name, device='meta', coded=False, head_bias=head_bias,
                                      num_classes=num_classes)
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            if shapes == found:
                if head_bias and name == 'coded_resnext50_32x4d':
                    return "timm resnext50_32x4d (= coded_resnext50_32x4d with head_bias=True)"
                return name + (' (head_bias=True)' if head_bias else '')
    return None


def check_registered(model_name: str) -> None:
    """A one-line error for a name timm does not know (timm's own is a RuntimeError with a traceback)."""
    import timm

    if not is_model(model_name):
        known = ', '.join(timm.list_models('coded_*'))
        raise TimmCodedError(f'unknown model {model_name!r}; coded models: {known}')


def load_checkpoint(model_name: str, path: Union[str, os.PathLike], use_ema: bool = False,
                    **model_kwargs: Any) -> nn.Module:
    """`timm.create_model(model_name, **model_kwargs)` with the weights of `path`, in eval mode.

    Raises TimmCodedError for an unknown model name, IntegrityError for an unreadable file and
    CheckpointMismatchError (naming missing/unexpected keys and shape mismatches) for weights
    of another architecture.
    """
    import timm

    check_registered(model_name)
    state = read_state_dict(path, use_ema=use_ema)
    model = timm.create_model(model_name, **model_kwargs)
    check_state_dict(model, state, what=f'checkpoint {path}', model_name=model_name)
    check_weight_values(model, state, what=f'checkpoint {path}')
    model.load_state_dict(state, strict=True)
    return model.eval()


# --- thresholds and binary metrics -------------------------------------------------------------
@dataclass
class BinaryMetrics:
    """Precision / recall / F1 of a binary classifier at a threshold."""
    threshold: float
    precision: float
    recall: float
    f1: float
    num_positives: int
    num_negatives: int  # negatives actually used (sampled)
    true_positives: int
    false_positives: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _as_numpy(values: Union[torch.Tensor, np.ndarray, Sequence[float]], dtype=np.float64) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(-1)


def calibrate_threshold(logits: Union[torch.Tensor, np.ndarray], is_positive: Union[torch.Tensor, np.ndarray]) -> float:
    """The logit threshold with the highest F1 (prediction: logit >= threshold), as in the paper.

    Every distinct logit is a candidate cut; the returned threshold lies halfway between the
    lowest logit kept positive and the next lower one, so it does not sit on a training sample.
    Ties go to the higher threshold (fewer positives predicted).
    """
    scores = _as_numpy(logits)
    labels = _as_numpy(is_positive, dtype=bool)
    if scores.shape != labels.shape:
        raise ValueError(f'{scores.size} logits but {labels.size} labels')
    if not labels.any():
        raise ValueError('no positive sample: cannot calibrate a threshold')
    if not np.isfinite(scores).all():
        raise ValueError('logits must be finite')
    order = np.argsort(-scores, kind='stable')
    scores, labels = scores[order], labels[order]
    # group equal logits: a threshold cannot separate them
    last_of_group = np.append(scores[1:] != scores[:-1], True)
    true_pos = np.cumsum(labels)[last_of_group]
    predicted = (np.flatnonzero(last_of_group) + 1)
    f1 = 2 * true_pos / (predicted + labels.sum())
    best = int(np.argmax(f1))
    kept = scores[last_of_group]
    if best + 1 < kept.size:
        return float((kept[best] + kept[best + 1]) / 2)
    return float(kept[best] - max(1., abs(kept[best])) * 1e-3)  # everything positive: just below the lowest


def binary_metrics(
        logits: Union[torch.Tensor, np.ndarray],
        is_positive: Union[torch.Tensor, np.ndarray],
        threshold: float,
        negatives_per_positive: Optional[int] = 9,
        seed: int = 0,
) -> BinaryMetrics:
    """Precision, recall and F1 at `threshold`, with `negatives_per_positive` negatives drawn at
    random (without replacement, all of them if fewer exist) for every positive, as in the paper
    (9: a balanced 10-class setting). None uses every negative.

    Out-of-distribution evaluation passes the class's positives together with images of another
    dataset, all marked negative.
    """
    scores = _as_numpy(logits)
    labels = _as_numpy(is_positive, dtype=bool)
    if scores.shape != labels.shape:
        raise ValueError(f'{scores.size} logits but {labels.size} labels')
    positives = scores[labels]
    negatives = scores[~labels]
    if negatives_per_positive is not None and negatives.size:
        wanted = min(negatives.size, negatives_per_positive * positives.size)
        negatives = negatives[np.random.default_rng(seed).choice(negatives.size, size=wanted, replace=False)]
    true_pos = int((positives >= threshold).sum())
    false_pos = int((negatives >= threshold).sum())
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.
    recall = true_pos / positives.size if positives.size else 0.
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.
    return BinaryMetrics(float(threshold), precision, recall, f1, int(positives.size), int(negatives.size),
                         true_pos, false_pos)


@torch.no_grad()
def binary_classifier_logits(
        binaries: Sequence[nn.Module],
        loader: Iterable,
        device: Union[str, torch.device, None] = None,
        progress: bool = False,
        desc: str = 'binary classifiers',
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits of several binary classifiers over one pass of a loader: ((n, len(binaries)), targets (n,)).

    Each batch is decoded once and fed to every classifier (in eval mode).
    """
    from tqdm import tqdm

    for binary in binaries:
        binary.eval()
    device = torch.device(device) if device is not None else next(binaries[0].parameters()).device
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = images.to(device)
        all_logits.append(torch.cat([b(images)[:, :1].float().cpu() for b in binaries], dim=1))
        all_targets.append(targets.cpu())
    if not all_logits:
        return torch.zeros(0, len(binaries)), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)
