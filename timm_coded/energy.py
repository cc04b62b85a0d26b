"""Energy arithmetic of coded blocks: subNN energies, normalization, coding loss, decoding scores.

THE owner of this arithmetic: the block (layers.py), the coding loss (training.py), early
decoding (decoding.py) and evaluation all call these functions, so changing how energies are
normalised is a change to this file only.

Notation (paper): a coded block has N subNNs; subNN n outputs t_n = W_n h_n where h_n is its
d-channel slice of the input of the block's last 1x1 conv and W_n the matching d input
columns of that conv. E_n = mean over (C, H, W) of t_n^2. The normalised energies
E_bar_n = N * E_n / sum_i E_i sum to N; the coding loss pushes r * E_bar_n towards the class's
codeword digit (r = N_act / N).

Everything here is computed in float32, also under autocast: energies are small sums of
squares and the loss raises differences to the 4th power.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    'subnn_energies', 'normalization_scale', 'normalized_energies', 'rescaled_energies', 'target_codewords',
    'coding_loss', 'decoding_scores', 'decode', 'NORM_EPS',
]

# Added to the mean energy before the square root: keeps an all-zero input finite.
NORM_EPS = 1e-12


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
    # shapes via unflatten(-1) so that fx tracing (symbolic shapes) and TorchScript both work
    h32 = h.float().unflatten(1, (num_subnns, -1)).flatten(3)  # (B, N, d, P)
    second_moment = torch.matmul(h32, h32.transpose(-1, -2))  # (B, N, d, d)
    w = conv_weight.float().flatten(1).unflatten(1, (num_subnns, -1))  # (C, N, d)
    gram = torch.einsum('cni,cnj->nij', w, w)
    energies = (second_moment * gram.unsqueeze(0)).sum(dim=(-1, -2)) / (w.shape[0] * h32.shape[-1])
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
