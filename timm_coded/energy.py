"""Energy arithmetic of coded blocks: subNN energies, normalization, coding loss, decoding scores.

THE owner of this arithmetic: the block (layers.py), the coding loss (training.py), early
decoding (decoding.py) and evaluation all call these functions, so changing how energies are
normalised is a change to this file only.

Notation (paper): a coded block has N subNNs; subNN n outputs t_n = W_n h_n where h_n is its
d-channel slice of the input of the block's last 1x1 conv and W_n the matching d input
columns of that conv. E_n = mean over (C, H, W) of t_n^2. The normalised energies
E_bar_n = N * E_n / sum_i E_i sum to N; the coding loss pushes r * E_bar_n towards the class's
codeword digit (r = N_act / N).

Energies, the normalization and the loss are float32 also under autocast: energies are small
sums of squares and the loss raises differences to the 4th power. Only the per-pixel second
moments of a bfloat16 activation stay in bfloat16 (see `_second_moments`).
"""

from contextlib import nullcontext
from typing import ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = [
    'subnn_energies', 'normalization_scale', 'normalized_energies', 'rescaled_energies', 'target_codewords',
    'coding_loss', 'decoding_scores', 'decode', 'NORM_EPS',
]

# Added to the mean energy before the square root: keeps an all-zero input finite.
NORM_EPS = 1e-12


# Up to this many channels (N*d), bfloat16 second moments come from one (N*d x N*d) product per
# sample, whose diagonal d x d blocks are the S_n, and their gradient from one product with the
# block-diagonal matrix: N times the multiply-adds of per-subNN products, but one large GEMM on a
# view of h instead of N*B tiny ones on a layout copy. Measured (AVX-512/AMX, 1 thread, forward +
# backward): 1.5-3x faster than per-subNN products at N*d = 80..220, 1.3x slower at 440.
FULL_PRODUCT_MAX_CHANNELS = 256


def _is_channels_last(h: torch.Tensor) -> bool:
    return h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()


class _LowPrecisionSecondMoments(torch.autograd.Function):
    """S_n = sum over pixels of h_n h_n^T, (B, N, d, d) in h's dtype, for a bfloat16 h.

    Autograd through `h^T h` differentiates both operands separately and adds them; here the
    gradient is one product, dL/dh_n = (dS_n + dS_n^T) h_n, computed on views of h so that it keeps
    h's memory layout (a gradient in the other layout makes its accumulation with the block's
    other gradient slow). Wide blocks use per-subNN products, narrow ones one full product whose
    diagonal d x d blocks are the S_n (see FULL_PRODUCT_MAX_CHANNELS).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, num_subnns: int) -> torch.Tensor:
        ctx.save_for_backward(h)
        ctx.num_subnns = num_subnns
        pixels_last = _pixels_last_view(h)  # (B, N*d, P)
        if h.shape[1] <= FULL_PRODUCT_MAX_CHANNELS:
            full = torch.matmul(pixels_last, pixels_last.transpose(1, 2))
            blocks = full.unflatten(1, (num_subnns, -1)).unflatten(3, (num_subnns, -1))  # (B, N, d, N, d)
            return blocks.diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
        per_subnn = pixels_last.unflatten(1, (num_subnns, -1))  # (B, N, d, P)
        return torch.matmul(per_subnn, per_subnn.transpose(-1, -2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (h,) = ctx.saved_tensors
        n = ctx.num_subnns
        batch, channels, height, width = h.shape
        d = channels // n
        symmetric = grad + grad.transpose(-1, -2)  # (B, N, d, d)
        pixels_last = _pixels_last_view(h)  # (B, C, P)
        channels_last = _is_channels_last(h)
        if channels <= FULL_PRODUCT_MAX_CHANNELS:
            block_diagonal = h.new_zeros(batch, n, d, n, d)
            block_diagonal.diagonal(dim1=1, dim2=3).copy_(symmetric.permute(0, 2, 3, 1))
            block_diagonal = block_diagonal.view(batch, channels, channels)  # symmetric
            if channels_last:  # (B, P, C) products come out channels_last
                grad_h = torch.matmul(pixels_last.transpose(1, 2), block_diagonal).transpose(1, 2)
            else:
                grad_h = torch.matmul(block_diagonal, pixels_last)
        else:
            per_subnn = pixels_last.unflatten(1, (n, -1)).transpose(-1, -2)  # (B, N, P, d)
            grad_h = torch.matmul(per_subnn, symmetric)  # (B, N, P, d)
            if channels_last:
                grad_h = grad_h.permute(0, 2, 1, 3).reshape(batch, height * width, channels).transpose(1, 2)
            else:
                grad_h = grad_h.transpose(-1, -2).reshape(batch, channels, height * width)
        return grad_h.unflatten(2, (height, width)), None


def _pixels_last_view(h: torch.Tensor) -> torch.Tensor:
    """(B, C, P) view of h, no copy in either memory layout."""
    return h.flatten(2)


def _second_moments(h: torch.Tensor, num_subnns: int) -> torch.Tensor:
    """S_n = sum over pixels of h_n h_n^T, (B, N, d, d) float32.

    bfloat16 (autocast's fast path): h is already rounded to bfloat16, so upcasting it copies the
    block's widest activation (forward and backward) for nothing; the products accumulate in
    float32 and only S is rounded to bfloat16 (about 2e-3 relative on the energies, measured).
    float16 has too little range for sums over thousands of pixels, and float32 keeps the exact
    reference arithmetic: both go through float32.
    """
    if h.dtype == torch.bfloat16 and not torch.jit.is_scripting():  # TorchScript: no autograd.Function
        return _LowPrecisionSecondMoments.apply(h, num_subnns).float()
    h32 = h.float().unflatten(1, (num_subnns, -1)).flatten(3)  # (B, N, d, P)
    return torch.matmul(h32, h32.transpose(-1, -2))


def _autocast_off(device_type: str) -> ContextManager:
    """Autocast disabled for what follows where it is on; a no-op on devices without autocast (e.g.
    'meta', which timm's model tests use, and where even `torch.autocast(enabled=False)` raises)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # no autocast for this device type
        enabled = False
    return torch.autocast(device_type, enabled=False) if enabled else nullcontext()


@register_notrace_function  # dtype/layout branches: one node in fx graphs
def subnn_energies(h: torch.Tensor, conv_weight: torch.Tensor, num_subnns: int) -> torch.Tensor:
    """Per-sample energy of every subNN output, without materialising the N outputs.

    E_n = 1/(C H W) * sum_pixels h_n^T (W_n^T W_n) h_n, evaluated as <S_n, G_n> with
    S_n = sum_pixels h_n h_n^T (d x d) and the Gram matrix G_n = W_n^T W_n (d x d): about
    N d^2 multiply-adds per pixel instead of the N C d of computing every t_n.

    Args:
        h: (B, N*d, H, W) input of the last 1x1 conv.
        conv_weight: (C, N*d, 1, 1) weight of that conv.
        num_subnns: N (the number of subNNs physically present in `h`).
    Returns:
        (B, N) float32 energies, clamped at 0 (round-off can make a tiny one negative).
    """
    if torch.jit.is_scripting():  # TorchScript: no autocast here
        return _subnn_energies(h, conv_weight, num_subnns)
    # Autocast would run the products below in its low precision: the Gram matrices' bmm in bfloat16
    # (rounding every G_n on top of S: 1.8e-3 instead of 1.2e-3 largest relative energy error of a
    # 160-channel block) and, under float16, the float32 second moments, whose sums of squares
    # overflow float16. A bfloat16 h keeps its bfloat16 second moments either way.
    with _autocast_off(h.device.type):
        return _subnn_energies(h, conv_weight, num_subnns)


def _subnn_energies(h: torch.Tensor, conv_weight: torch.Tensor, num_subnns: int) -> torch.Tensor:
    # shapes via unflatten(-1) so that fx tracing (symbolic shapes) and TorchScript both work
    second_moment = _second_moments(h, num_subnns)
    w = conv_weight.float().flatten(1).unflatten(1, (num_subnns, -1))  # (C, N, d)
    gram = torch.einsum('cni,cnj->nij', w, w)
    num_pixels = h.shape[-1] * h.shape[-2]
    energies = (second_moment * gram.unsqueeze(0)).sum(dim=(-1, -2)) / (w.shape[0] * num_pixels)
    return energies.clamp_min(0.)


def normalization_scale(energies: torch.Tensor, num_subnns: int, eps: float = NORM_EPS) -> torch.Tensor:
    """The coded block's output scale, (B,): 1 / sqrt(mean_n E_n + eps) with the block's original N.

    The block multiplies the sum of its subNN outputs by this, so the subNNs' energies after the
    block are `normalized_energies` (E_bar = E * scale^2, summing to N).
    """
    return torch.rsqrt(energies.sum(dim=1) / num_subnns + eps)  # eps an argument: TorchScript takes no globals


def normalized_energies(energies: torch.Tensor, num_subnns: Optional[int] = None) -> torch.Tensor:
    """E_bar = N * E / sum(E): sums to N (the energies after the block's normalization).

    `num_subnns` is the block's original N; a sliced block (fewer subNNs present) still divides
    by it, exactly as the full model with the other subNNs zeroed.
    """
    n = energies.shape[-1] if num_subnns is None else num_subnns
    energies = energies.float()
    return energies * (n / (energies.sum(dim=-1, keepdim=True) + n * NORM_EPS))


def rescaled_energies(energies: torch.Tensor, num_active: int, num_subnns: Optional[int] = None) -> torch.Tensor:
    """r * E_bar (r = N_act / N): the normalised energies rescaled to sum to N_act, the scale of a
    codeword. The coding loss compares them with the class's codeword; early decoding finds the
    nearest codeword to them."""
    n = energies.shape[-1] if num_subnns is None else num_subnns
    return (num_active / n) * normalized_energies(energies, n)


def target_codewords(target: torch.Tensor, codewords: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """The codeword each sample should follow, (B, N) float32.

    Hard labels (B,) index the table; soft label distributions (B, K) from mixup/cutmix or
    label smoothing give the mixed codeword t @ W (rows are renormalised to sum to 1, so BCE
    style multi-hot targets also work). When the energies come from a batch that is a multiple
    of the targets (timm's JSD split augmentation concatenates splits), targets are repeated.
    """
    codewords = codewords.float()
    if target.dim() == 1 or (target.dim() == 2 and target.shape[1] == 1 and codewords.shape[0] != 1):
        words = codewords[target.reshape(-1).long()]
    elif target.dim() == 2 and target.shape[1] == codewords.shape[0]:
        weights = target.float()
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        words = weights @ codewords
    else:
        raise ValueError(
            f'targets of shape {tuple(target.shape)} do not match a coding scheme of '
            f'{codewords.shape[0]} classes: expected (B,) labels or (B, {codewords.shape[0]}) distributions')
    if batch_size is not None and batch_size != words.shape[0]:
        if batch_size % words.shape[0]:
            raise ValueError(f'{batch_size} energy rows cannot be matched with {words.shape[0]} targets')
        words = words.repeat(batch_size // words.shape[0], 1)
    return words


def coding_loss(
        energies: torch.Tensor,
        target_words: torch.Tensor,
        num_active: int,
        num_subnns: Optional[int] = None,
        power: float = 4.,
        threshold: float = 0.,
) -> torch.Tensor:
    """L_code = mean over batch and subNNs of max(|r E_bar_n - w_n| - threshold, 0)^power."""
    error = (rescaled_energies(energies, num_active, num_subnns) - target_words.float()).abs()
    if threshold > 0:
        error = F.relu(error - threshold)
    return error.pow(power).mean()


def decoding_scores(energies: torch.Tensor, codewords: torch.Tensor, num_active: int) -> torch.Tensor:
    """Early-decoding scores (B, K): minus the squared distance between the energies rescaled to
    sum to N_act and every class's codeword. argmax = the paper's nearest-codeword decoder."""
    v = rescaled_energies(energies, num_active, codewords.shape[-1])
    return -torch.cdist(v, codewords.float().to(v.device)).pow(2)


def decode(energies: torch.Tensor, codewords: torch.Tensor, num_active: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest-codeword prediction and its margin (gap between the best two squared distances)."""
    scores = decoding_scores(energies, codewords, num_active)
    top2 = scores.topk(min(2, scores.shape[-1]), dim=-1)
    margin = top2.values[:, 0] - top2.values[:, -1]
    return top2.indices[:, 0], margin
