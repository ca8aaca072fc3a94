"""Dev check: ``rnnt_loss`` equals -log P(y|x) summed over every alignment, enumerated by brute force.

python -m training.conformer.check_rnnt_loss
"""

from __future__ import annotations

import itertools
import sys

import torch

from training.conformer.rnnt_loss import rnnt_loss


def brute_force(logits: torch.Tensor, targets: list[int], frames: int, blank: int) -> float:
    """-log of the summed probability of every path through the (frames x tokens) lattice."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    steps = frames + len(targets)
    paths = []
    for emit_at in itertools.combinations(range(steps), len(targets)):
        if steps - 1 in emit_at:  # a path ends with the blank that leaves the last frame
            continue
        t = u = 0
        total = 0.0
        for k in range(steps):
            if k in emit_at:
                total += float(logp[t, u, targets[u]])
                u += 1
            else:
                total += float(logp[t, u, blank])
                t += 1
        paths.append(total)
    return -float(torch.logsumexp(torch.tensor(paths), 0))


def main() -> None:
    torch.manual_seed(0)
    batch, frames, tokens, vocab = 4, 5, 3, 6
    logits = torch.randn(batch, frames, tokens + 1, vocab + 1)
    targets = torch.randint(0, vocab, (batch, tokens))
    frame_len = torch.tensor([5, 4, 3, 5])
    target_len = torch.tensor([3, 2, 1, 0])
    ours = [
        float(
            rnnt_loss(
                logits[i : i + 1], targets[i : i + 1], frame_len[i : i + 1], target_len[i : i + 1], vocab
            )
        )
        for i in range(batch)
    ]
    reference = [
        brute_force(logits[i, : frame_len[i], : target_len[i] + 1], targets[i, : target_len[i]].tolist(),
                    int(frame_len[i]), vocab)
        for i in range(batch)
    ]  # fmt: skip
    worst = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    batched = float(rnnt_loss(logits, targets, frame_len, target_len, vocab))
    worst = max(worst, abs(batched - sum(reference) / batch))
    print(f"rnnt_loss vs brute force: max |difference| {worst:.2e} ({ours} vs {reference})")
    if worst > 1e-4:
        sys.exit("FAIL")


if __name__ == "__main__":
    main()
