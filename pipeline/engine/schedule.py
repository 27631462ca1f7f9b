"""Learning-rate schedule: linear warm-up, then step decay (MMDetection's 1x schedule shape).

    lr(it) = base * warmup(it) * gamma ** (number of steps <= epoch(it))
    warmup(it) = ratio + (1 - ratio) * it / warmup_iters   for it < warmup_iters, else 1
"""
from __future__ import annotations

from bisect import bisect_right


def lr_factor(iteration: int, epoch: int, warmup_iters: int, warmup_ratio: float,
              steps: tuple[int, ...], gamma: float) -> float:
    """Multiplier of the base learning rate at a global ``iteration`` in ``epoch`` (0-based).

    ``steps`` are epochs (1-based, as in MMDetection configs: ``[8, 11]`` decays after the
    8th and 11th epochs), so the decay applies from 0-based epoch ``step`` on.
    """
    factor = gamma ** bisect_right(sorted(steps), epoch)
    if iteration < warmup_iters:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return factor
