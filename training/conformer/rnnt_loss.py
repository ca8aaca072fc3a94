"""The RNN-T loss (Graves 2012) in plain torch, for the hybrid model's transducer head.

torchaudio's ``rnnt_loss`` is not available beside the CPU torch wheel we train with, so the forward
variable is computed here. Over the lattice of (frame t, emitted tokens u), with
``blank[t, u]`` the log-prob of leaving frame t without a token and ``emit[t, u]`` that of emitting
token u+1 at frame t:

    alpha[0, u] = sum_{j < u} emit[0, j]
    alpha[t, u] = logsumexp_{k <= u} (alpha[t-1, k] + blank[t-1, k] + sum_{k <= j < u} emit[t, j])
    loss = -(alpha[T-1, U] + blank[T-1, U])

The inner sum over k is a log-cumsum-exp once the emissions are turned into prefix sums, so each frame
is one vectorised step and autograd differentiates the whole recursion.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rnnt_loss(logits: Tensor, targets: Tensor, frame_len: Tensor, target_len: Tensor, blank: int) -> Tensor:
    """Mean over the batch of -log P(targets | frames).

    logits [B, T, U + 1, V + 1] (joint outputs, unnormalised), targets [B, U] (padded with anything),
    frame_len [B], target_len [B].
    """
    b, t_max, u1, _ = logits.shape
    logp = torch.log_softmax(logits.float(), dim=-1)
    blank_lp = logp[..., blank]  # [B, T, U+1]
    index = targets.clamp(min=0).long()[:, None, :, None].expand(b, t_max, u1 - 1, 1)
    emit = torch.gather(logp[:, :, : u1 - 1], 3, index).squeeze(-1)  # [B, T, U]
    # Emissions past a target's length must not count; they are masked by reading alpha at target_len.
    prefix = torch.cat([emit.new_zeros(b, t_max, 1), emit.cumsum(dim=2)], dim=2)  # [B, T, U+1]
    alpha = prefix[:, 0]
    finals = [alpha]
    for t in range(1, t_max):
        carried = alpha + blank_lp[:, t - 1] - prefix[:, t]
        alpha = prefix[:, t] + torch.logcumsumexp(carried, dim=1)
        finals.append(alpha)
    stacked = torch.stack(finals, dim=1)  # [B, T, U+1]
    rows = torch.arange(b, device=logits.device)
    last_t = (frame_len - 1).clamp(min=0).long()
    u_end = target_len.long()
    total = stacked[rows, last_t, u_end] + blank_lp[rows, last_t, u_end]
    return -total.mean()
