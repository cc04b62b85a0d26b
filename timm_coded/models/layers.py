"""The coded ResNeXt bottleneck, its stage container, and the energy taps that expose energies.

Parameter names follow timm's `Bottleneck` (conv1/bn1/conv2/bn2/conv3/bn3/downsample), so a
timm ResNeXt state_dict loads into a coded model of the same shape.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from timm.models._manipulate import checkpoint

from ..energy import normalization_scale, subnn_energies

__all__ = [
    'CodedBottleneck', 'CodedStage', 'EnergyTap', 'draw_subnn_mask', 'coded_blocks', 'EnergyRecord',
    'record_energies', 'EnergyRecorder',
]


class EnergyTap(nn.Identity):
    """Identity that every coded block calls with its (B, N) subNN energies.

    Forward hooks on it see the energies of each forward pass. This is how they reach the
    coding loss without changing what `model(x)` returns (one logits tensor, as timm expects),
    and it works through DDP, torch.compile, fx tracing and gradient checkpointing.
    """


@register_notrace_function  # random draw of data-dependent size: a single node in fx graphs
def draw_subnn_mask(batch_size: int, num_subnns: int, drop_rate: float, device: torch.device) -> torch.Tensor:
    """dropSubNNs: per sample, each subNN kept with probability 1 - p and scaled by 1 / (1 - p)."""
    keep = torch.rand(batch_size, num_subnns, device=device) >= drop_rate
    return keep.float() / (1. - drop_rate)


class CodedBottleneck(nn.Module):
    """ResNeXt bottleneck whose N groups (subNNs) can be coded.

    A coded block (N_act < N) normalises the sum of its subNN outputs by the root mean subNN
    energy, exposes those energies through `energy_tap`, and (in training) drops whole subNNs
    per sample. An uncoded block (N_act == N) is exactly timm's ResNeXt bottleneck.

    Args:
        in_chs: input channels.
        out_chs: output channels (C).
        num_subnns: N, the subNN count of the full block (the normalization always divides by it).
        subnn_width: d, bottleneck channels per subNN.
        num_active: N_act; the block is coded when N_act < N.
        stride: stride of the grouped 3x3 conv.
        downsample: projection for the skip path, when shapes change.
        present_subnns: the subNNs physically present (a sliced binary classifier keeps only the
            active ones of its class); None = all N.
        codewords: (K, N) table used by the coding loss and early decoding; None when unknown.
        drop_subnn_rate: p_drop of dropSubNNs.
        new_mask: draw a new dropSubNNs mask in this block; False reuses the mask of the previous
            block ("same code, same mask").
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            num_subnns: int,
            subnn_width: int,
            num_active: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            present_subnns: Optional[Sequence[int]] = None,
            codewords: Optional[torch.Tensor] = None,
            drop_subnn_rate: float = 0.,
            new_mask: bool = True,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            drop_path: Optional[nn.Module] = None,
            device=None,
            dtype=None,
    ) -> None:
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if not 0 < num_active <= num_subnns:
            raise ValueError(f'num_active must be in 1..{num_subnns}, got {num_active}')
        if not 0. <= drop_subnn_rate < 1.:
            raise ValueError(f'drop_subnn_rate must be in [0, 1), got {drop_subnn_rate}')
        present = tuple(range(num_subnns)) if present_subnns is None else tuple(int(i) for i in present_subnns)
        if not present or len(set(present)) != len(present) or not all(0 <= i < num_subnns for i in present):
            raise ValueError(f'present_subnns must be distinct indices in 0..{num_subnns - 1}, got {present}')

        self.num_subnns = num_subnns
        self.num_active = num_active
        self.subnn_width = subnn_width
        self.present_subnns = list(present)
        self.num_present = len(present)
        self.coded = num_active < num_subnns
        self.drop_subnn_rate = float(drop_subnn_rate)
        self.new_mask = new_mask
        width = self.num_present * subnn_width

        self.conv1 = nn.Conv2d(in_chs, width, kernel_size=1, bias=False, **dd)
        self.bn1 = norm_layer(width, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(
            width, width, kernel_size=3, stride=stride, padding=1, groups=self.num_present, bias=False, **dd)
        self.bn2 = norm_layer(width, **dd)
        self.act2 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(width, out_chs, kernel_size=1, bias=False, **dd)
        self.bn3 = norm_layer(out_chs, **dd)
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.drop_path = drop_path if drop_path is not None else nn.Identity()
        self.energy_tap = EnergyTap()

        # 1 for a subNN that takes part, 0 for one removed (specialization analysis, masked
        # full model). Removing a subNN zeroes its output before the normalization, so its
        # energy adds nothing while the mean still divides by N. Not saved in state_dicts.
        # May be replaced by a (B, N) tensor to gate each sample differently.
        self.register_buffer('subnn_gate', torch.ones(self.num_present, **dd), persistent=False)
        # (K, N) codeword table for the loss and decoding; (0, N) when the block has none.
        if codewords is None:
            codewords = torch.zeros(0, num_subnns)
        self.register_buffer('codewords', codewords.to(device=device, dtype=torch.float32), persistent=False)

    def init_conv3_as_grouped(self) -> None:
        # The authors' coded block computes conv3 as a grouped conv with N*C outputs (one C-channel
        # output per subNN); Kaiming fan-out init of that conv has std sqrt(2 / (N*C)), sqrt(N)
        # smaller than the dense conv's sqrt(2 / C). The forward pass does not care (energy
        # normalisation), but the start of training does: gradients and weight decay act on
        # weights of this scale.
        std = (2. / (self.num_subnns * self.conv3.out_channels)) ** 0.5
        nn.init.normal_(self.conv3.weight, mean=0., std=std)

    def zero_init_last(self) -> None:
        # The paper zero-initialises the last BN's gamma (as timm does for ResNets).
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        shortcut = x
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.bn2(self.conv2(h)))

        if self.coded:
            # the gate is (N,) for the whole batch, or (B, N) per sample (e.g. each sample's class)
            gate = self.subnn_gate.float()
            gate = gate.unsqueeze(0) if gate.dim() == 1 else gate
            energies = subnn_energies(h, self.conv3.weight, self.num_present) * gate
            energies = self.energy_tap(energies)
            # Normalization, gate and dropSubNNs are all per-(sample, subNN) scalings of h_n, and
            # conv3 is linear: fold them into one multiplier on h instead of scaling the C-channel
            # output (less memory, and no N separate outputs are ever formed).
            scale = normalization_scale(energies, self.num_subnns)
            multiplier = scale.unsqueeze(1) * gate
            if self.training and self.drop_subnn_rate > 0.:
                if mask is None or self.new_mask:  # new_mask is set wherever the scheme (so N) changes
                    mask = draw_subnn_mask(h.shape[0], self.num_present, self.drop_subnn_rate, h.device)
                multiplier = multiplier * mask
            channel_multiplier = multiplier.repeat_interleave(self.subnn_width, dim=1).to(h.dtype)
            h = h * channel_multiplier[:, :, None, None]

        out = self.bn3(self.conv3(h))
        out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        out = self.act3(out + shortcut)
        return out, mask


class CodedStage(nn.Sequential):
    """A stage of blocks, an `nn.Sequential` so parameter names stay `layerX.Y.*` as in timm.

    The dropSubNNs mask travels from block to block; `forward` takes a plain tensor so timm's
    feature extraction can call stages on their own.
    """

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, _ = self.forward_masked(x, None)
        return x

    def forward_masked(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        for block in self:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                # the mask is an input, so the recomputation in backward drops the same subNNs
                x, mask = checkpoint(block, x, mask)
            else:
                x, mask = block(x, mask)
        return x, mask


def coded_blocks(model: nn.Module) -> List[Tuple[str, CodedBottleneck]]:
    """(qualified name, block) of every coded block, in forward order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CodedBottleneck) and m.coded]


@dataclass
class EnergyRecord:
    """Energies of one coded block from one forward pass."""
    name: str
    block: CodedBottleneck
    energies: torch.Tensor  # (B, N_present) float32


class EnergyRecorder:
    """Collects the energies of every coded block during forward passes.

    Hooks are placed on the blocks' `EnergyTap`s of the (unwrapped) model; wrap the model with
    DDP / torch.compile afterwards and the records still arrive. Call `clear()` before each
    forward; `records` then lists the coded blocks in forward order. Gradient checkpointing
    re-runs blocks in backward; those late records are ignored by `clear()` at the next step.
    """

    def __init__(self, model: nn.Module, detach: bool = False) -> None:
        self.detach = detach
        self.records: List[EnergyRecord] = []
        self._handles = []
        for name, block in coded_blocks(model):
            self._handles.append(block.energy_tap.register_forward_hook(self._make_hook(name, block)))

    def _make_hook(self, name: str, block: CodedBottleneck):
        def hook(module, inputs, output):
            self.records.append(EnergyRecord(name, block, output.detach() if self.detach else output))
        return hook

    @property
    def num_blocks(self) -> int:
        return len(self._handles)

    def clear(self) -> None:
        self.records = []

    def energies(self) -> Dict[str, torch.Tensor]:
        return {r.name: r.energies for r in self.records}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> 'EnergyRecorder':
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@contextmanager
def record_energies(model: nn.Module, detach: bool = True) -> Iterator[EnergyRecorder]:
    """`with record_energies(model) as rec: model(x)`; then `rec.energies()` by block name."""
    recorder = EnergyRecorder(model, detach=detach)
    try:
        yield recorder
    finally:
        recorder.remove()
