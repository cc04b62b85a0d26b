"""Coded ResNeXt (Avranas & Kountouris, "Coded ResNeXt: a network for designing disentangled
information paths", arXiv 2202.05343) as timm models.

Every class owns a path through the network: in each coded stage a codeword of the stage's
coding scheme says which subNNs (ResNeXt groups) carry it. The coded blocks normalise their
output by the subNN energies and expose those energies (see `layers.EnergyRecorder`) for the
coding loss (`timm_coded.training`) and early decoding (`timm_coded.analysis.decoding`).

`coded=False` gives the paper's control baseline: the same network with every block uncoded,
which is exactly a timm ResNeXt of that shape.
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models.resnet import downsample_conv

from ..codes import CodingScheme, builtin_name, builtin_scheme, list_builtin_schemes, load_scheme
from ..constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ..errors import CheckpointMismatchError, SchemeError
from ..hub.manifest import ManifestError, pretrained_cfg_overrides
from .layers import CodedBottleneck, CodedStage

__all__ = ['CodedResNeXt', 'resolve_stage_scheme', 'MODEL_ARCHS', 'ARCHITECTURES', 'ALIASES', 'canonical_architecture']

_logger = logging.getLogger(__name__)


_MAX_STAGES = 4

SchemeSpec = Union[None, str, CodingScheme, Dict[str, Any], Sequence[str], Sequence[Sequence[int]]]


def _per_stage(value: Union[int, Sequence[int], None], num_stages: int, what: str) -> Tuple:
    if value is None or isinstance(value, (int, float)):
        return (value,) * num_stages
    value = tuple(value)
    if len(value) != num_stages:
        raise ValueError(f'{what} needs one value per stage ({num_stages}), got {len(value)}: {value}')
    return value


def _as_scheme(spec: SchemeSpec) -> CodingScheme:
    if isinstance(spec, CodingScheme):
        return spec
    if isinstance(spec, str):
        return load_scheme(spec)
    if isinstance(spec, dict):
        return CodingScheme.from_dict(spec)
    return CodingScheme(spec)


def resolve_stage_scheme(
        spec: SchemeSpec,
        num_classes: int,
        num_subnns: int,
        num_active: int,
        class_names: Optional[Sequence[str]] = None,
) -> Optional[CodingScheme]:
    """The coding scheme of one stage, or None for an uncoded stage.

    A user-supplied scheme must fit the stage (N) and the classifier (K == num_classes). Without
    one, the shipped table for (K, N, N_act) is used; for a K that has no shipped table (e.g.
    fine-tuning on another dataset) one is generated deterministically (seed 0) and logged.
    """
    if spec is not None:
        scheme = _as_scheme(spec)
        if scheme.num_subnns != num_subnns:
            raise SchemeError(
                f'the scheme has codewords of length {scheme.num_subnns} but the stage has {num_subnns} subNNs')
        if num_classes > 0 and scheme.num_classes != num_classes:
            raise SchemeError(
                f'the scheme has {scheme.num_classes} codewords but num_classes={num_classes}; '
                f'supply a scheme with one codeword per class')
    elif num_active >= num_subnns:
        return None
    elif num_classes <= 0:
        return None  # a headless backbone: paths are undefined until a classifier exists
    else:
        name = builtin_name(num_classes, num_subnns, num_active)
        if name in list_builtin_schemes():
            scheme = builtin_scheme(name)
        else:
            from ..codes import generate_scheme  # only needed off the paper's settings
            try:
                scheme = generate_scheme(num_classes, num_subnns, num_active, seed=0, time_budget=_GENERATE_SECONDS)
            except SchemeError as e:
                # create_model cannot pass a time budget: say what the user can do instead
                raise SchemeError(
                    f'num_classes={num_classes} has no built-in coding scheme for a stage of N={num_subnns} subNNs '
                    f'with N_act={num_active}, and none could be generated within {_GENERATE_SECONDS:g}s ({e}). '
                    f'Make one beforehand (timm_coded.generate_scheme({num_classes}, {num_subnns}, {num_active}, '
                    f'time_budget=...) or `timm-coded schemes generate --classes {num_classes} --subnns {num_subnns} '
                    f'--active {num_active} --out FILE`) and pass it per stage with schemes=[...]') from None
            _logger.warning(
                'No built-in coding scheme for K=%d, N=%d, N_act=%d: generated one (%s). Pass schemes=... '
                'to choose your own.', num_classes, num_subnns, num_active, scheme.summary())
    if class_names is not None:
        scheme = scheme.with_class_names(class_names)
    return scheme


# seconds create_model may spend generating a scheme for a K without a shipped one
_GENERATE_SECONDS = 10.


class CodedResNeXt(nn.Module):
    """ResNeXt whose stages can be coded (Coded ResNeXt).

    Args:
        layers: blocks per stage.
        stage_channels: output channels of each stage.
        num_subnns: N (cardinality) per stage, or one value for all.
        subnn_width: d (bottleneck width of one subNN) per stage.
        num_active: N_act per stage; a stage is coded when N_act < N.
        stem_type: 'cifar' (3x3 conv, stride 1, no pool) or 'imagenet' (7x7/2 conv + 3x3/2 max pool).
        stem_width: stem output channels.
        num_classes: classifier outputs (K); must match user-supplied schemes.
        in_chans: input image channels.
        global_pool: timm pooling type of the head.
        coded: False makes every block uncoded (the paper's control baseline).
        schemes: per stage, None (shipped/generated table) or a scheme: CodingScheme, built-in
            name, JSON path, dict, or list of codeword strings. A user scheme sets N_act.
        class_names: names of the K classes (stored with the schemes).
        coding_loss_weight: mu, weight of the summed coding losses in the training loss.
        coding_loss_power: exponent of the coding loss (paper: 4).
        coding_loss_threshold: dead zone of the coding loss (paper: 0).
        drop_subnn_rate: p_drop of dropSubNNs (paper: 0.1).
        same_code_same_mask: consecutive blocks with the same scheme share the dropSubNNs mask.
        present_subnns: per stage, the subNN indices physically present (None = all). Used by
            sliced binary classifiers; only coded stages can be sliced.
        head_bias: bias in the final linear layer. The authors' networks have none (and the
            paper's parameter counts assume none); set True to load timm ResNeXt weights.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth rate (linearly increasing over blocks).
        zero_init_last: zero-initialise the last BN of every block.
        act_layer, norm_layer: activation and norm layers (timm names or classes).
    """

    def __init__(
            self,
            layers: Sequence[int] = (3, 3, 3),
            stage_channels: Sequence[int] = (256, 512, 1024),
            num_subnns: Union[int, Sequence[int]] = 10,
            subnn_width: Union[int, Sequence[int]] = (11, 22, 44),
            num_active: Union[int, Sequence[int], None] = (10, 5, 3),
            stem_type: str = 'cifar',
            stem_width: int = 64,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            coded: bool = True,
            schemes: Optional[Sequence[SchemeSpec]] = None,
            class_names: Optional[Sequence[str]] = None,
            coding_loss_weight: float = 6.,
            coding_loss_power: float = 4.,
            coding_loss_threshold: float = 0.,
            drop_subnn_rate: float = 0.1,
            same_code_same_mask: bool = True,
            present_subnns: Optional[Sequence[Optional[Sequence[int]]]] = None,
            head_bias: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = True,
            act_layer: Union[str, Type[nn.Module]] = 'relu',
            norm_layer: Union[str, Type[nn.Module]] = 'batchnorm2d',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(layers)
        num_subnns = _per_stage(num_subnns, num_stages, 'num_subnns')
        subnn_width = _per_stage(subnn_width, num_stages, 'subnn_width')
        num_active = _per_stage(num_active, num_stages, 'num_active')
        num_active = tuple(n if a is None else a for a, n in zip(num_active, num_subnns))
        schemes = _per_stage(schemes, num_stages, 'schemes') if schemes is not None else (None,) * num_stages
        present_subnns = (
            _per_stage(present_subnns, num_stages, 'present_subnns') if present_subnns is not None
            else (None,) * num_stages)
        if not 1 <= num_stages <= _MAX_STAGES:
            raise ValueError(f'a ResNeXt has 1 to {_MAX_STAGES} stages, got {num_stages}')
        if len(stage_channels) != num_stages:
            raise ValueError(f'stage_channels needs {num_stages} values, got {len(stage_channels)}')
        if stem_type not in ('cifar', 'imagenet'):
            raise ValueError(f"stem_type must be 'cifar' or 'imagenet', got {stem_type!r}")
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.coded = coded
        self.class_names = list(class_names) if class_names is not None else None
        self.coding_loss_weight = float(coding_loss_weight)
        self.coding_loss_power = float(coding_loss_power)
        self.coding_loss_threshold = float(coding_loss_threshold)
        self.drop_subnn_rate = float(drop_subnn_rate)

        # Resolve each stage's scheme first: a user scheme fixes that stage's N_act.
        self.schemes = []  # per stage: CodingScheme, or None when uncoded
        for i in range(num_stages):
            if not coded:
                num_active = num_active[:i] + (num_subnns[i],) + num_active[i + 1:]
                self.schemes.append(None)
                continue
            is_sliced = present_subnns[i] is not None
            scheme = None if is_sliced else resolve_stage_scheme(
                schemes[i], num_classes, num_subnns[i], num_active[i], class_names)
            if scheme is not None:
                num_active = num_active[:i] + (scheme.num_active,) + num_active[i + 1:]
                if self.class_names is None and scheme.class_names is not None:
                    self.class_names = list(scheme.class_names)
            self.schemes.append(scheme)
            if is_sliced and num_active[i] >= num_subnns[i]:
                raise ValueError(f'stage {i} is uncoded and cannot be sliced (present_subnns given)')

        # stem
        stem_stride = 1 if stem_type == 'cifar' else 2
        kernel_size = 3 if stem_type == 'cifar' else 7
        self.conv1 = nn.Conv2d(
            in_chans, stem_width, kernel_size=kernel_size, stride=stem_stride, padding=kernel_size // 2, bias=False, **dd)
        self.bn1 = norm_layer(stem_width, **dd)
        self.act1 = act_layer(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_type == 'imagenet' else nn.Identity()
        self.feature_info = [dict(num_chs=stem_width, reduction=stem_stride, module='act1')]
        stem_reduction = stem_stride * (2 if stem_type == 'imagenet' else 1)

        # stages
        total_blocks = sum(layers)
        block_idx = 0
        in_chs = stem_width
        reduction = stem_reduction
        previous_scheme: Optional[CodingScheme] = None
        self.stage_names = []
        for i, depth in enumerate(layers):
            stride = 1 if i == 0 else 2
            reduction *= stride
            scheme = self.schemes[i]
            codewords = torch.from_numpy(scheme.codewords.astype('float32')) if scheme is not None else None
            blocks = []
            for j in range(depth):
                block_stride = stride if j == 0 else 1
                downsample = None
                if block_stride != 1 or in_chs != stage_channels[i]:
                    downsample = downsample_conv(
                        in_chs, stage_channels[i], kernel_size=1, stride=block_stride, norm_layer=norm_layer, **dd)
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                # "same code, same mask": only the first of consecutive same-scheme blocks draws one
                new_mask = not (same_code_same_mask and scheme is not None and scheme == previous_scheme)
                blocks.append(CodedBottleneck(
                    in_chs,
                    stage_channels[i],
                    num_subnns=num_subnns[i],
                    subnn_width=subnn_width[i],
                    num_active=num_active[i],
                    stride=block_stride,
                    downsample=downsample,
                    present_subnns=present_subnns[i],
                    codewords=codewords,
                    drop_subnn_rate=drop_subnn_rate if num_active[i] < num_subnns[i] else 0.,
                    new_mask=new_mask,
                    act_layer=act_layer,
                    norm_layer=norm_layer,
                    drop_path=DropPath(dpr) if dpr > 0. else None,
                    **dd,
                ))
                previous_scheme = scheme
                in_chs = stage_channels[i]
                block_idx += 1
            stage_name = f'layer{i + 1}'
            self.add_module(stage_name, CodedStage(*blocks))
            self.stage_names.append(stage_name)
            self.feature_info.append(dict(num_chs=stage_channels[i], reduction=reduction, module=stage_name))
        for i in range(num_stages, _MAX_STAGES):
            self.add_module(f'layer{i + 1}', CodedStage())  # no parameters: keeps forward_features scriptable

        # head
        self.num_features = self.head_hidden_size = stage_channels[-1]
        self.head_bias = head_bias
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = self._make_fc(num_classes, **dd)

        self.init_weights(zero_init_last=zero_init_last)

    def _make_fc(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes, bias=self.head_bias,
                         device=device, dtype=dtype)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        for m in self.modules():
            if isinstance(m, CodedBottleneck) and m.coded:
                m.init_conv3_as_grouped()
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, CodedBottleneck):
                    m.zero_init_last()

    # --- timm model API ----------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        return dict(stem=r'^conv1|bn1|maxpool', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage_name in self.stage_names:
            getattr(self, stage_name).grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier head. With another K, stages re-resolve their coding scheme (shipped or
        generated) unless the current scheme already has K codewords."""
        # Resolve the new schemes first: an impossible K raises before the trained head is touched.
        new_schemes = self._schemes_for(num_classes) if num_classes > 0 else {}
        param = next(self.parameters())
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.num_classes = num_classes
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc = self._make_fc(num_classes, device=param.device, dtype=param.dtype)
        self.global_pool.train(self.training)
        self.fc.train(self.training)
        for i, scheme in new_schemes.items():
            self.schemes[i] = scheme
            words = torch.from_numpy(scheme.codewords.astype('float32'))
            for block in self._coded_stage_blocks(i):
                block.codewords = words.to(device=block.subnn_gate.device)
        if num_classes > 0 and self.class_names is not None and len(self.class_names) != num_classes:
            self.class_names = None

    def _coded_stage_blocks(self, stage_index: int) -> List[CodedBottleneck]:
        stage = getattr(self, self.stage_names[stage_index])
        return [b for b in stage if isinstance(b, CodedBottleneck) and b.coded]

    @torch.jit.ignore
    def _schemes_for(self, num_classes: int) -> Dict[int, CodingScheme]:
        """{stage index: scheme} for the coded full (unsliced) stages whose scheme must change for K classes."""
        schemes = {}
        for i in range(len(self.stage_names)):
            blocks = self._coded_stage_blocks(i)
            if not blocks or blocks[0].num_present != blocks[0].num_subnns:
                continue
            current = self.schemes[i]
            if current is not None and current.num_classes == num_classes:
                continue
            schemes[i] = resolve_stage_scheme(None, num_classes, blocks[0].num_subnns, blocks[0].num_active)
        return schemes

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features plus intermediates: index 0 is the stem, 1.. the stages (timm convention)."""
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        num_stages = len(self.stage_names)
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        x = self.maxpool(x)
        stage_names = self.stage_names[:max_index] if stop_early else self.stage_names
        mask: Optional[torch.Tensor] = None
        for feat_idx, stage_name in enumerate(stage_names, start=1):
            x, mask = getattr(self, stage_name).forward_masked(x, mask)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) after the last intermediate that `indices` asks for."""
        num_stages = len(self.stage_names)
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)
        for stage_name in self.stage_names[max_index:]:
            setattr(self, stage_name, CodedStage())  # empty, so forward_features still runs
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        # Spelled out (not a loop over names) so TorchScript can compile it; the dropSubNNs
        # mask flows across stages for "same code, same mask". 3-stage nets have an empty layer4.
        mask: Optional[torch.Tensor] = None
        x, mask = self.layer1.forward_masked(x, mask)
        x, mask = self.layer2.forward_masked(x, mask)
        x, mask = self.layer3.forward_masked(x, mask)
        x, mask = self.layer4.forward_masked(x, mask)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- architectures: THE table (paper Table 1) ----------------------------------------------------
# One entry per architecture: its model arguments, its data config and its aliases. The model
# arguments, timm's pretrained cfgs (+ the weights manifest's tags), the aliases and the binary
# twins (`<name>_binary`, registered in binary.py) are all generated from it: adding a coded
# architecture is one entry here plus its one-line entrypoint below.
@dataclass(frozen=True)
class Architecture:
    args: Dict[str, Any]
    cifar: bool  # 32x32 CIFAR data config (else ImageNet 224 px)
    num_classes: int
    aliases: Tuple[str, ...] = ()
    dataset_stats: Tuple[Tuple[float, ...], Tuple[float, ...]] = (CIFAR10_MEAN, CIFAR10_STD)
    # timm's own `arch.tag` whose weights (same parameter names) start fine-tuning: the tag
    # `<name>.<its tag>` loads them from timm's Hub repository (see `timm_weights_cfgs`)
    timm_weights: Optional[str] = None


ARCHITECTURES: Dict[str, Architecture] = {
    # CIFAR-10: ResNeXt-29 (10x11d), stage ratios 10/10, 5/10, 3/10
    'coded_resnext29_10x11d': Architecture(dict(
        layers=(3, 3, 3), stage_channels=(256, 512, 1024), num_subnns=10, subnn_width=(11, 22, 44),
        num_active=(10, 5, 3), stem_type='cifar', coding_loss_weight=6.), cifar=True, num_classes=10),
    # CIFAR-100: ResNeXt-29 (20x6d), stage ratios 20/20, 8/20, 4/20
    'coded_resnext29_20x6d': Architecture(dict(
        layers=(3, 3, 3), stage_channels=(256, 512, 1024), num_subnns=20, subnn_width=(6, 12, 24),
        num_active=(20, 8, 4), stem_type='cifar', coding_loss_weight=6.), cifar=True, num_classes=100,
        dataset_stats=(CIFAR100_MEAN, CIFAR100_STD)),
    # ImageNet: ResNeXt-50 (32x4d), stage ratios 32/32, 32/32, 16/32, 8/32
    'coded_resnext50_32x4d': Architecture(dict(
        layers=(3, 4, 6, 3), stage_channels=(256, 512, 1024, 2048), num_subnns=32, subnn_width=(4, 8, 16, 32),
        num_active=(32, 32, 16, 8), stem_type='imagenet', coding_loss_weight=1.), cifar=False, num_classes=1000,
        aliases=('coded_resnext50',), timm_weights='resnext50_32x4d.a1h_in1k'),
    # Not in the paper: a small CIFAR-10 network with the same coding (10 subNNs; 10/10, 5/10,
    # 3/10) that trains on two CPU cores in minutes. For demos, tests and quick experiments.
    'coded_resnext17_10x2d': Architecture(dict(
        layers=(1, 2, 2), stage_channels=(64, 128, 256), num_subnns=10, subnn_width=(2, 4, 8),
        num_active=(10, 5, 3), stem_type='cifar', stem_width=32, coding_loss_weight=6.), cifar=True, num_classes=10),
    # Not in the paper: the zoo's first CPU-trained CIFAR-10 net (77.8 %, superseded by
    # coded_resnext17_10x8d; no weights shipped). One block per stage, wide outputs (128/256/512)
    # and 10 subNNs of width 4/8/16.
    'coded_resnext11_10x4d': Architecture(dict(
        layers=(1, 1, 1), stage_channels=(128, 256, 512), num_subnns=10, subnn_width=(4, 8, 16),
        num_active=(10, 5, 3), stem_type='cifar', stem_width=64, coding_loss_weight=6.), cifar=True, num_classes=10),
    # Not in the paper: the zoo's CPU-trained CIFAR-10 model (benchmarks/RESULTS.md). The 1-2-2 blocks and 64/128/256
    # outputs of coded_resnext17_10x2d with the paper's subNN widths scaled down (8/16/32, i.e. the
    # grouped 3x3 convs carry most of the capacity instead of the 1x1 projections): 1.7x the
    # parameters of coded_resnext11_10x4d at ~0.9x its training speed on the CPU fast path.
    'coded_resnext17_10x8d': Architecture(dict(
        layers=(1, 2, 2), stage_channels=(64, 128, 256), num_subnns=10, subnn_width=(8, 16, 32),
        num_active=(10, 5, 3), stem_type='cifar', stem_width=64, coding_loss_weight=6.), cifar=True, num_classes=10),
}
# alias -> canonical name
ALIASES: Dict[str, str] = {alias: name for name, arch in ARCHITECTURES.items() for alias in arch.aliases}


def canonical_architecture(name: str) -> str:
    """The table's name for `name` (an alias resolves to its architecture)."""
    return ALIASES.get(name, name)


# name (aliases included) -> the model arguments of timm.create_model(name)
MODEL_ARCHS: Dict[str, Dict[str, Any]] = {
    name: dict(ARCHITECTURES[canonical_architecture(name)].args,
               num_classes=ARCHITECTURES[canonical_architecture(name)].num_classes)
    for name in list(ARCHITECTURES) + list(ALIASES)}

_PAPER = 'https://arxiv.org/abs/2202.05343'


def _check_pretrained_values(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's pretrained filter: refuse non-floating or non-finite weights on every load path."""
    from .binary import check_weight_values

    check_weight_values(model, state_dict, what=_weights_source(model))
    return state_dict


def _weights_source(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return str(cfg.get('file') or cfg.get('hf_hub_id') or 'the pretrained weights')


def _is_timm_weights(cfg: Dict[str, Any]) -> bool:
    """Whether a pretrained cfg is an architecture's tag of timm's own weights (`timm_weights_cfgs`)."""
    name = cfg.get('architecture')
    arch = ARCHITECTURES.get(canonical_architecture(name)) if name else None
    return arch is not None and arch.timm_weights is not None and cfg.get('tag') == arch.timm_weights.split('.')[-1]


def _fit_timm_weights(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's own ResNeXt weights for a coded model: the same names, so only the head is mapped.

    The authors' classifier has no bias (head_bias=False): timm's fc.bias is dropped, the 1000-class
    fc.weight kept (head_bias=True keeps both). A head of another size is timm's loader's to drop
    (num_classes differs from the cfg's). Everything else must match name for name and shape for
    shape: timm's loader loads non-strictly once it drops the head, so without this check a repo
    of another model would leave the backbone silently random.
    """
    cfg = model.pretrained_cfg
    source = _weights_source(model)
    weight, bias = f"{cfg['classifier']}.weight", f"{cfg['classifier']}.bias"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    first_conv = f"{cfg['first_conv']}.weight"
    if first_conv in expected:  # timm adapts the stem to in_chans after this filter
        expected[first_conv] = (expected[first_conv][0], cfg['input_size'][0], *expected[first_conv][2:])
    if model.num_classes != cfg['num_classes']:
        ignored = {weight, bias}  # a new head: timm's loader drops the old one
    elif bias not in expected and bias in state_dict:
        ignored = {bias}
        _logger.warning("%s: fc.bias dropped, the coded model has no classifier bias (head_bias=False, as the "
                        "authors'); pass head_bias=True to keep it", source)
    else:
        ignored = set()
    state_dict = {k: v for k, v in state_dict.items() if k not in ignored}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    expected = {k: v for k, v in expected.items() if k not in ignored}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    problems = [f'{len(wrong)} tensor(s) of another shape, e.g. {wrong[0]} is {found[wrong[0]]}, '
                f'the model needs {expected[wrong[0]]}'] if wrong else []
    problems += [f'{len(keys)} {what} tensor(s), e.g. {keys[0]}' for keys, what in (
        (missing, 'missing'), (unexpected, 'unexpected')) if keys]
    if problems:
        wanted = ARCHITECTURES[canonical_architecture(cfg['architecture'])].timm_weights.split('.')[0]
        raise CheckpointMismatchError(
            f'{source} does not fit {cfg["architecture"]} (it needs timm {wanted} weights): {"; ".join(problems)}')
    return state_dict


def _filter_pretrained(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's pretrained filter of the coded models: timm's own weights are fitted first."""
    if _is_timm_weights(getattr(model, 'pretrained_cfg', None) or {}):
        state_dict = _fit_timm_weights(state_dict, model)
    return _check_pretrained_values(state_dict, model)


def manifest_artifact_for(variant: str, pretrained: bool, kwargs: Dict[str, Any]):
    """(resolved pretrained cfg, the weights-manifest artifact it names or None) for a create call."""
    if not pretrained:
        return None, None
    from timm.models._builder import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
    if cfg.get('state_dict') is not None:
        return cfg, None
    from ..hub.manifest import HubLocation, load_manifest

    try:
        artifact = load_manifest().get(f"{cfg.get('architecture')}.{cfg.get('tag')}")
    except (ManifestError, KeyError):
        return cfg, None
    location = artifact.location
    if cfg.get('source') == 'hf-hub':
        # `hf-hub:<repo>@<branch or commit>` of a published artifact (what its model card shows): the
        # manifest pins the commit to trust, so that commit is loaded, verified; another repo or
        # revision is the caller's to vouch for
        repo, _, revision = str(cfg.get('hf_hub_id') or '').partition('@')
        if not isinstance(location, HubLocation) or location.repo_id != repo \
                or (revision or 'main') not in (location.revision, location.commit):
            return cfg, None
        return dict(cfg, source=''), artifact  # '': timm then loads the verified `file`, not the branch
    expected_file = None if isinstance(location, HubLocation) else str(
        location.resolve().joinpath(*artifact.weights_file.path.split('/')))
    if cfg.get('file') not in (None, expected_file) or cfg.get('source') == 'local-dir':
        return cfg, None  # the caller substituted other weights: theirs to vouch for
    return cfg, artifact


def verified_pretrained_kwargs(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Point timm's pretrained loader at a sha256-verified copy of a manifest artifact.

    When the resolved pretrained cfg is a weights-manifest artifact (a package file or a pinned
    Hub revision) and the caller did not substitute other weights, the files are fetched (Hub
    cache or package) and checked against the manifest's sha256 first; timm then loads exactly
    that verified file. A mismatch raises IntegrityError (and drops the file from the HF cache).
    """
    return with_verified_weights(kwargs, *manifest_artifact_for(variant, pretrained, kwargs))


def with_verified_weights(kwargs: Dict[str, Any], cfg: Optional[Dict[str, Any]], artifact) -> Dict[str, Any]:
    """`kwargs` whose pretrained cfg points at the sha256-verified file of `artifact` (if any)."""
    if artifact is None:
        return kwargs
    from ..hub.download import download_artifact

    folder = download_artifact(artifact)
    verified = dict(cfg, file=str(folder.joinpath(*artifact.weights_file.path.split('/'))))
    return dict(kwargs, pretrained_cfg=verified, pretrained_cfg_overlay=None)


def _create_coded_resnext(variant: str, pretrained: bool = False, **kwargs) -> CodedResNeXt:
    kwargs = verified_pretrained_kwargs(variant, pretrained, kwargs)
    model_args = dict(MODEL_ARCHS[variant], **kwargs)
    num_feature_levels = len(model_args['layers']) + 1
    return build_model_with_cfg(
        CodedResNeXt, variant, pretrained,
        feature_cfg=dict(out_indices=tuple(range(num_feature_levels))),
        pretrained_filter_fn=_filter_pretrained,
        **model_args,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'paper_ids': 'arXiv:2202.05343', 'paper_name':
        'Coded ResNeXt: a network for designing disentangled information paths', 'license': 'apache-2.0',
        **kwargs,
    }


def _cifar_cfg(num_classes: int, **kwargs) -> Dict[str, Any]:
    cifar = dict(num_classes=num_classes, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD)
    return _cfg(**dict(cifar, **kwargs))


def tagged_cfgs(arch: str, cfg: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """`arch`'s cfgs for timm: one per weights-manifest artifact (`arch.tag`, listed first, so
    `pretrained=True` picks trained weights), or the bare cfg when it has none."""
    # weights_manifest.json is the one source of truth for trained weights
    try:
        tagged = pretrained_cfg_overrides(arch)
    except ManifestError as e:
        _logger.error('weights_manifest.json unreadable, no pretrained weights registered: %s', e)
        tagged = {}
    if not tagged:
        return {arch: cfg}
    return {f'{arch}.{tag}': dict(cfg, **overrides) for tag, overrides in tagged.items()}


def architecture_cfg(name: str) -> Dict[str, Any]:
    """timm's pretrained cfg (data config) of an architecture, without weights."""
    arch = ARCHITECTURES[canonical_architecture(name)]
    if not arch.cifar:
        return _cfg(num_classes=arch.num_classes)
    mean, std = arch.dataset_stats
    return _cifar_cfg(arch.num_classes, mean=mean, std=std)


def timm_weights_cfgs(name: str) -> Dict[str, Dict[str, Any]]:
    """`name.<tag>` -> cfg of the tag that starts `name` from timm's own weights (if it has one).

    The tag is the source's own (`resnext50_32x4d.a1h_in1k` -> `coded_resnext50_32x4d.a1h_in1k`),
    so it names exactly which weights it loads. The data config and Hub repo are timm's, taken
    from timm's cfg; only the Hub copy is a source (timm's GitHub-release url would be a second,
    untested path). These are not sha256-pinned: timm's artifact is not in weights_manifest.json.
    """
    source = ARCHITECTURES[canonical_architecture(name)].timm_weights
    if source is None:
        return {}
    try:
        upstream = get_pretrained_cfg(source).to_dict()
    except (RuntimeError, AttributeError) as e:  # a timm without these weights: no tag, not a failed import
        _logger.error('timm has no %s weights, %s.<tag> not registered: %s', source, name, e)
        return {}
    data = {k: v for k, v in upstream.items() if k not in ('architecture', 'tag', 'url', 'paper_ids', 'paper_name')}
    notes = (f'Starts from timm {source} ImageNet weights (not trained coded): for fine-tuning.',)
    return {f'{name}.{upstream["tag"]}': dict(architecture_cfg(name), **data, notes=notes)}


def _default_cfgs() -> Dict[str, Dict[str, Any]]:
    cfgs = {}
    for name in MODEL_ARCHS:  # every architecture and alias, with its manifest tags
        tagged = tagged_cfgs(name, architecture_cfg(name))
        init = timm_weights_cfgs(name)
        if init and name in tagged:
            # timm makes the first tag with weights the default unless a later tag ending in '*'
            # claims it: without trained coded weights the bare cfg stays the default, so that
            # `pretrained=True` never silently means timm's uncoded weights and the data config
            # (and the binary twins', copied from it) is unchanged
            cfgs.update(init)
            cfgs[f'{name}.*'] = tagged[name]
        else:
            cfgs.update(tagged)
            cfgs.update(init)
    return cfgs


default_cfgs = generate_default_cfgs(_default_cfgs())


@register_model
def coded_resnext29_10x11d(pretrained: bool = False, **kwargs) -> CodedResNeXt:
    """Coded ResNeXt-29 (10x11d) for CIFAR-10 (paper Table 1)."""
    return _create_coded_resnext('coded_resnext29_10x11d', pretrained, **kwargs)


@register_model
def coded_resnext29_20x6d(pretrained: bool = False, **kwargs) -> CodedResNeXt:
    """Coded ResNeXt-29 (20x6d) for CIFAR-100 (paper Table 1)."""
    return _create_coded_resnext('coded_resnext29_20x6d', pretrained, **kwargs)


@register_model
def coded_resnext50_32x4d(pretrained: bool = False, **kwargs) -> CodedResNeXt:
    """Coded ResNeXt-50 (32x4d) for ImageNet (paper Table 1)."""
    return _create_coded_resnext('coded_resnext50_32x4d', pretrained, **kwargs)


@register_model
def coded_resnext50(pretrained: bool = False, **kwargs) -> CodedResNeXt:
    """Alias of coded_resnext50_32x4d."""
    return _create_coded_resnext('coded_resnext50', pretrained, **kwargs)


@register_model
def coded_resnext17_10x2d(pretrained: bool = False, **kwargs) -> CodedResNeXt:
    """Small Coded ResNeXt for CIFAR-10 (1-2-2 blocks, 10 subNNs of width 2/4/8): trains on a CPU."""
    return _create_coded_resnext('coded_resnext17_10x2d', pretrained, **kwargs)


@register_model
def coded_resnext11_10x4d(pretrained: bool = False, **kwargs) -> CodedResNeXt:
    """CPU-scale CIFAR-10 Coded ResNeXt (1-1-1 blocks, 10 subNNs of width 4/8/16); the zoo's previous net."""
    return _create_coded_resnext('coded_resnext11_10x4d', pretrained, **kwargs)


@register_model
def coded_resnext17_10x8d(pretrained: bool = False, **kwargs) -> CodedResNeXt:
    """CPU-trained CIFAR-10 Coded ResNeXt of the zoo (1-2-2 blocks, 10 subNNs of width 8/16/32)."""
    return _create_coded_resnext('coded_resnext17_10x8d', pretrained, **kwargs)
