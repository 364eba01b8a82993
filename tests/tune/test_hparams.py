from __future__ import annotations

import itertools
import math

import pytest

from ragtune.errors import RagtuneError
from ragtune.tune import hparams


@pytest.mark.parametrize(
    ("n", "epochs"),
    [
        (1, 25),  # 100 // 1 = 100, capped at 25
        (10, 10),  # 10 * 3 = 30 < 100 -> 100 // 10
        (33, 3),  # 33 * 3 = 99 < 100 -> 100 // 33 = 3
        (34, 3),  # 102 >= 100 -> the target, 3
        (8333, 3),  # 24,999 <= 25,000
        (8334, 2),  # 25,002 > 25,000 -> 25,000 // 8334 = 2
        (30_000, 1),  # 25,000 // 30,000 = 0 -> at least 1
    ],
)
def test_auto_epochs_follow_openai(n: int, epochs: int) -> None:
    assert hparams.auto_epochs(n) == epochs


@pytest.mark.parametrize(
    ("n", "batch"), [(10, 1), (249, 1), (750, 2), (1000, 2), (5000, 10), (200_000, 256)]
)
def test_auto_batch_size_is_two_per_mille_capped(n: int, batch: int) -> None:
    assert hparams.auto_batch_size(n) == batch


def test_resolve_fills_only_auto_values() -> None:
    hp = hparams.resolve("lora", 10)
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (10, 1, 0.05)
    assert hp.learning_rate == pytest.approx(0.05 * 3e-3)
    assert hp.auto == ("n_epochs", "batch_size", "learning_rate_multiplier")
    hp = hparams.resolve("full", 10_000, epochs=2, batch_size=None, lr_multiplier=None)
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, 20, 0.2)
    assert hp.learning_rate == pytest.approx(0.2 * 3e-4)
    assert hparams.auto_lr_multiplier(4) == 0.1 and hparams.auto_lr_multiplier(3) == 0.05
    with pytest.raises(RagtuneError):
        hparams.resolve("lora", 10, epochs=0)
    with pytest.raises(RagtuneError):
        hparams.resolve("qlora", 10)  # type: ignore[arg-type]


def test_schedule_warms_up_then_decays_to_near_zero() -> None:
    total, warmup = 100, hparams.warmup_steps(100)
    assert warmup == 3
    factors = [hparams.lr_factor(s, warmup, total) for s in range(total)]
    assert factors[:3] == [1 / 3, 2 / 3, 1.0]
    assert factors[3] == 1.0 and all(a >= b for a, b in itertools.pairwise(factors[3:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 96 / 97)))
    assert 0 < factors[-1] < 1e-3
