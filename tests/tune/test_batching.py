from __future__ import annotations

import random

from ragtune.tune.batching import length_grouped_batches, micro_batches, rank_share


def test_every_example_once_per_epoch_in_length_groups() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(1003)]
    batches = length_grouped_batches(lengths, batch_size=4, seed=1, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))  # every example exactly once
    assert len(batches) == 251 and sorted(len(b) for b in batches)[0] == 3

    # Grouped by length: far less padding than random batches.
    def padding(bs: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)

    order = list(range(1003))
    rng.shuffle(order)
    random_batches = [order[i : i + 4] for i in range(0, 1003, 4)]
    assert padding(batches) * 10 < padding(random_batches)


def test_order_is_fixed_by_seed_and_epoch() -> None:
    lengths = list(range(100))
    a = length_grouped_batches(lengths, 8, seed=3, epoch=2)
    assert a == length_grouped_batches(lengths, 8, seed=3, epoch=2)
    assert a != length_grouped_batches(lengths, 8, seed=3, epoch=1)
    assert a != length_grouped_batches(lengths, 8, seed=4, epoch=2)


def test_micro_batches_fit_the_token_budget_and_ranks_split_batches() -> None:
    lengths = [10, 50, 20, 40, 30, 200]
    micro = micro_batches(range(6), lengths, max_tokens=100)
    assert sorted(i for m in micro for i in m) == list(range(6))
    assert all(len(m) == 1 or len(m) * max(lengths[i] for i in m) <= 100 for m in micro)
    assert micro[0] == [5]  # longer than the budget: alone
    shares = [rank_share([0, 1, 2, 3, 4], lengths, r, 2) for r in range(2)]
    assert shares == [[1, 4, 0], [3, 2]]  # longest first, dealt out in turn
