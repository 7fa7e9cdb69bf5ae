"""The factor an uncalibrated model borrows, kept between calls (R2.3): every estimate and
reconciliation answers as if it were worked out from every model's factor each time."""

from __future__ import annotations

import random

from scheduler.budget import TokenCounter
from scheduler.budget._tokens import BORROWED_FACTOR_MAX


def _lent(factors: dict[str, float]) -> float:
    """R2.3: the largest factor learned, within [1.0, BORROWED_FACTOR_MAX]; that maximum
    before any model has answered."""
    return min(max(max(factors.values(), default=BORROWED_FACTOR_MAX), 1.0),
               BORROWED_FACTOR_MAX)


def test_r2_3_the_borrowed_factor_follows_every_models_factor_up_and_down() -> None:
    """R2.3: models answering above and below their estimates, the largest factor rising,
    falling and passing the bounds: an uncalibrated model's estimate always borrows the
    largest factor learned so far (within its bounds), a calibrated one uses its own."""
    rng = random.Random(7)
    models = ["haiku", "sonnet", "opus"]
    for smoothing in (0.1, 0.5, 1.0):
        counter = TokenCounter(smoothing=smoothing)
        factors: dict[str, float] = {}
        for _ in range(400):
            model = rng.choice(models)
            raw = rng.randint(0, 2_000)
            est = counter.calibrated(model, raw)
            for other in [*models, "never-called"]:
                factor = factors.get(other, _lent(factors))
                assert counter.factor(other) == factor
                assert counter.calibrated_tokens(other, raw) == round(raw * factor)
            actual = rng.choice([0, rng.randint(1, 4_000), int(raw * rng.uniform(0.6, 2.2))])
            result = counter.reconcile(est, actual)
            if raw > 0 and actual > 0:
                old = factors.get(model)
                ratio = actual / raw
                factors[model] = ratio if old is None else old + smoothing * (ratio - old)
            assert result.factor == factors.get(model, _lent(factors))
