"""Class-subset classifiers: one network for a set of classes, sliced out of a trained Coded ResNeXt.

A binary classifier keeps one class's path. A subset classifier (e.g. "vehicles": airplane,
automobile, ship, truck) keeps, in every coded block, the union of its classes' active subNNs,
every uncoded block whole and the classifier rows of its classes. Its logits equal the full
model's logits of those classes with every other subNN removed (`gate_to_classes`), in eval
mode; no retraining. It answers two questions: is the image one of the subset (the largest of
its logits reaches `threshold`, fitted F1-maximising on training data), and which one (argmax).

The sliced network is the registered timm architecture `<parent>_subset`; its model arguments
(classes, present subNNs per stage, subset name, threshold, parent) are JSON, so it saves,
publishes and reloads like every other timm model.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from timm.models import generate_default_cfgs

from .binary import (
    _CANONICAL, _PARENTS, _binary_cfg, _reset_non_persistent_buffers, _resolve_class, _sliced_state_dict, build_sliced_twin,
    check_state_dict, parent_architecture, parent_model_args, register_twin, sliced_twin_kwargs,
)
from .coded_resnext import (
    MODEL_ARCHS, CodedResNeXt, resolve_stage_scheme, tagged_cfgs,
)
from ..errors import TimmCodedError

__all__ = ['CodedSubsetClassifier', 'subset_architecture', 'subset_model_args', 'slice_subset', 'check_subset_name']

SUBSET_SUFFIX = '_subset'
_NAME_RE = re.compile(r'^[a-z0-9][a-z0-9_]*$')  # it becomes part of a timm pretrained tag


class CodedSubsetClassifier(CodedResNeXt):
    """A Coded ResNeXt that keeps, in each coded stage, the union of the subNNs of some classes.

    `forward` returns one logit per subset class, shape (B, len(class_indices)), in the order of
    `class_indices`; `predict` gives each sample's class index in the parent, or -1 when its
    largest logit is below `threshold` (not one of the subset's classes). Model arguments beyond
    `CodedResNeXt`'s:
        class_indices: the classes' rows in the parent's coding schemes and classifier.
        class_names: their names, when the parent knows class names.
        subset_name: what the subset is called ('vehicles'); part of its pretrained tag.
        threshold: decision threshold on the largest logit (F1-maximising on training data).
        parent_architecture: the registered parent.
    `present_subnns` (per stage, the kept subNN indices; None for uncoded stages) is required.
    The parent's `num_active` is kept: the union may hold every subNN of a stage, which stays a
    coded (energy-normalised) stage.
    """

    def __init__(
            self,
            *,
            present_subnns: Sequence[Optional[Sequence[int]]],
            class_indices: Sequence[int] = (0,),
            class_names: Optional[Sequence[str]] = None,
            subset_name: str = '',
            threshold: float = 0.,
            parent_architecture: str = '',
            num_classes: Optional[int] = None,
            **kwargs: Any,
    ) -> None:
        indices = [int(k) for k in class_indices]
        num_classes = len(indices) if num_classes is None else num_classes
        # names describe the head only while it is the subset's own (timm may ask for another head)
        names = list(class_names) if class_names is not None and num_classes == len(indices) else None
        super().__init__(
            present_subnns=[None if p is None else [int(i) for i in p] for p in present_subnns],
            num_classes=num_classes, class_names=names, **kwargs)
        self.class_indices = indices
        self.subset_name = str(subset_name)
        self.threshold = float(threshold)
        self.parent_architecture = str(parent_architecture)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        if next(self.parameters()).is_meta:  # about to be replaced by the parent's slice
            return
        super().init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample, the parent's index of the most likely subset class, or -1 for none."""
        logits = self.forward(x)
        best, position = logits.max(dim=1)
        classes = torch.as_tensor(self.class_indices, device=logits.device)[position]
        return torch.where(best >= self.threshold, classes, torch.full_like(classes, -1))


def subset_architecture(parent: str) -> str:
    """The registered subset architecture of a parent, e.g. `coded_resnext29_10x11d_subset`."""
    return _CANONICAL.get(parent, parent) + SUBSET_SUFFIX


def check_subset_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TimmCodedError(f'subset name {name!r} must be lower-case letters, digits and _ (it becomes part '
                             'of the pretrained tag), e.g. vehicles')
    return name


def _union_present_subnns(parent: str, class_indices: Sequence[int]) -> List[Optional[List[int]]]:
    """Per stage of `parent` with its built-in schemes, the subNNs active for any of the classes."""
    arch = MODEL_ARCHS[parent]
    num_stages = len(arch['layers'])
    per_stage = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * num_stages  # noqa: E731
    present: List[Optional[List[int]]] = []
    for n, a in zip(per_stage(arch['num_subnns']), per_stage(arch['num_active'])):
        scheme = resolve_stage_scheme(None, arch['num_classes'], n, a)
        present.append(None if scheme is None else _union(scheme, class_indices))
    return present


def _union(scheme, class_indices: Sequence[int]) -> List[int]:
    return sorted({int(n) for k in class_indices for n in scheme.active_subnns(k)})


def _create_subset(parent: str, pretrained: bool = False, **kwargs) -> CodedSubsetClassifier:
    twin = subset_architecture(parent)
    cfg, artifact = sliced_twin_kwargs(twin, parent, pretrained, kwargs)
    # without classes: every class, i.e. the whole network (what timm's generic tests build)
    class_indices = [int(k) for k in kwargs.pop('class_indices', range(MODEL_ARCHS[parent]['num_classes']))]
    present = kwargs.pop('present_subnns', None)
    if present is None:
        present = _union_present_subnns(parent, class_indices)
    model_args = parent_model_args(parent, kwargs, cfg, artifact)
    model_args.setdefault('num_classes', len(class_indices))  # one logit per class, unless asked otherwise
    # timm drops pretrained classifier weights whose size differs from the cfg's num_classes: the
    # cfg's head is this subset's (the registered cfg describes the default, every-class subset)
    head = {'num_classes': len(class_indices)}
    if isinstance(model_args.get('pretrained_cfg'), dict):
        model_args['pretrained_cfg'] = dict(model_args['pretrained_cfg'], **head)
    else:
        model_args['pretrained_cfg_overlay'] = dict(model_args.get('pretrained_cfg_overlay') or {}, **head)
    return build_sliced_twin(CodedSubsetClassifier, twin, parent, pretrained, model_args,
                             present_subnns=present, class_indices=class_indices)


def _subset_cfg(parent: str) -> Dict[str, Any]:
    cfg = _binary_cfg(parent)
    cfg['num_classes'] = MODEL_ARCHS[parent]['num_classes']  # the default subset: every class
    return cfg


# every subset classifier in the manifest is a pretrained tag: `<parent>_subset.<tag>`
default_cfgs = generate_default_cfgs({
    name: cfg for p in _PARENTS for name, cfg in tagged_cfgs(subset_architecture(p), _subset_cfg(p)).items()})


for _parent in _PARENTS:
    register_twin(subset_architecture(_parent), partial(_create_subset, _parent), __name__,
                  f'Class-subset classifier sliced from {_parent}.')


# --- slicing -----------------------------------------------------------------------------------
def subset_model_args(model: CodedResNeXt, classes: Sequence[Union[int, str]], name: str,
                      threshold: float = 0.) -> Dict[str, Any]:
    """JSON-serialisable model arguments of the subset classifier of `classes` (indices or names)."""
    if isinstance(model, CodedSubsetClassifier) or type(model).__name__ == 'CodedBinaryClassifier':
        raise TimmCodedError('the model is already a sliced classifier; slice its parent')
    if not isinstance(model, CodedResNeXt):
        raise TimmCodedError(f'{type(model).__name__} is not a Coded ResNeXt; only coded models can be sliced')
    check_subset_name(name)
    if isinstance(classes, str) or len(classes) < 2:
        raise TimmCodedError(f'a class subset needs at least two classes, got {classes!r} '
                             '(one class: slice a binary classifier)')
    resolved = [_resolve_class(model, c) for c in classes]
    indices = [k for k, _ in resolved]
    if len(set(indices)) != len(indices):
        raise TimmCodedError(f'the class subset {list(classes)!r} names a class twice')
    present = [None if s is None or s.is_uncoded else _union(s, indices) for s in model.schemes]
    args: Dict[str, Any] = dict(
        class_indices=indices, present_subnns=present, subset_name=name, threshold=float(threshold),
        parent_architecture=parent_architecture(model))
    if all(n is not None for _, n in resolved):
        args['class_names'] = [n for _, n in resolved]
    if model.head_bias:
        args['head_bias'] = True
    if model.conv1.in_channels != 3:
        args['in_chans'] = model.conv1.in_channels
    return args


def slice_subset(model: CodedResNeXt, classes: Sequence[Union[int, str]], name: str,
                 threshold: float = 0.) -> CodedSubsetClassifier:
    """The classifier of a class subset: a physically smaller network.

    Its logits equal `model`'s logits of `classes` (in that order) with every subNN inactive for
    all of them removed (`gate_to_classes`), in eval mode. On the parent's device and dtype, in
    its train/eval mode, built with `timm.create_model(subset_architecture(parent), **args)`.
    """
    import timm

    args = subset_model_args(model, classes, name, threshold)
    arch = subset_architecture(args['parent_architecture'])
    reference = next(model.parameters())
    sliced = timm.create_model(arch, device='meta', dtype=reference.dtype, **args)
    sliced = sliced.to_empty(device=reference.device)
    _reset_non_persistent_buffers(sliced)
    state = _sliced_state_dict(model, args['present_subnns'], args['class_indices'])
    check_state_dict(sliced, state, what=f'the sliced state of {type(model).__name__}', model_name=arch)
    sliced.load_state_dict(state, strict=True)
    sliced.train(model.training)
    return sliced


def subset_logits(model: torch.nn.Module, loader, progress: bool = False, desc: str = 'subset classifier'):
    """(logits (n, K'), targets (n,)) of a subset classifier over one pass of a loader, in eval mode."""
    from tqdm import tqdm

    model.eval()
    device = next(model.parameters()).device
    logits, targets = [], []
    with torch.no_grad():
        for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
            logits.append(model(images.to(device)).float().cpu())
            targets.append(labels.cpu())
    if not logits:
        return torch.zeros(0, len(model.class_indices)), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)
