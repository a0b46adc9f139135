"""
The estimated cost of a task instance's images, and its ``max_cost_usd``: a hard stop, like ``max_images``.

What all tries spent comes from the durable ledger (:mod:`~airflow_provider_imagen._task.durable`); what each image
costs from the connection's prices over the catalog's defaults (:mod:`~airflow_provider_imagen._cloudflare.prices`).
Before any request, the known need (the images to generate, at the model's price) is checked; then each generation
about to start reserves the most one image of the model chain can cost (a fallback model may make it), so that
concurrent generations can never together overshoot the limit.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from airflow_provider_imagen._cloudflare.prices import PriceList, usd
from airflow_provider_imagen.exceptions import SpendLimitError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_imagen._task.durable import Ledger
    from airflow_provider_imagen._task.job import Outcome

#: Slack for binary floating point: 25 images at $0.04 fit a $1.00 limit.
_EPSILON = 1e-9


class Spend:
    """
    This try's and all tries' estimated cost, checked against ``max_cost_usd``.

    :param ledger: the records of this request, which count what earlier tries generated and spent.
    :param prices: the connection's price of one image of each model, over the catalog's defaults.
    :param chain: the model and its fallbacks: any of them may make an image.
    :param max_cost_usd: the most all tries of this task instance may spend, in US dollars, or ``None``.
    :raises SpendLimitError: with ``max_cost_usd`` set, when a model of ``chain`` has no known price.
    """

    def __init__(
        self,
        ledger: Ledger,
        prices: Mapping[str, float] | None,
        chain: tuple[str, ...],
        max_cost_usd: float | None = None,
    ) -> None:
        self.ledger = ledger
        self.prices = PriceList(prices or {})
        self.max_cost_usd = max_cost_usd
        self.first = self.prices.of(chain[0])
        self.each = self.prices.most(chain)  # the most one generation can cost
        self.this_try = 0.0
        self.unpriced = 0  # images this try generated with a model that has no price
        self._reserved = 0.0
        self._lock = threading.Lock()
        if max_cost_usd is not None and self.each is None:
            unknown = ", ".join(repr(model) for model in chain if self.prices.of(model) is None)
            raise SpendLimitError(
                f"max_cost_usd={max_cost_usd:g}: no price is known for {unknown}, so the cost cannot be capped. "
                'Set the connection\'s "prices" extra (US dollars per image), e.g. {"google/imagen-4": 0.04}'
            )

    def check(self, needed: int, *, reserve: bool = False) -> None:
        """
        Fail before generating ``needed`` more images could take all tries' cost over ``max_cost_usd``.

        :param reserve: hold their cost for generations about to start, until :meth:`release`: the most an image of
            the chain can cost. Without it, the check is of the known need: ``needed`` images of the first model.
        :raises SpendLimitError: naming the limit, what was spent, what is in flight and what is needed.
        """
        if self.max_cost_usd is None or needed <= 0 or self.each is None or self.first is None:
            return
        each = self.each if reserve else self.first
        cost = needed * each
        with self._lock:
            spent = self.ledger.spent[0]
            if spent + self._reserved + cost <= self.max_cost_usd + _EPSILON:
                self._reserved += cost if reserve else 0.0
                return
            reserved = self._reserved
        flight = f" and ${usd(reserved)} is in flight" if reserved else ""
        raise SpendLimitError(
            f"max_cost_usd={self.max_cost_usd:g}: this task instance's tries have spent an estimated ${usd(spent)}"
            f"{flight}; {needed} more image(s) at {'up to ' if reserve else ''}${usd(each)} each would need "
            f"${usd(cost)}, over the limit; not generating them"
        )

    def release(self) -> None:
        """Give back one generation's reservation: it failed (not billed), or its cost is now recorded."""
        if self.max_cost_usd is None or self.each is None:
            return
        with self._lock:
            self._reserved = max(0.0, self._reserved - self.each)

    def record(self, model: str) -> float | None:
        """Count one image ``model`` generated in this try; return what it cost (``None``: no price known)."""
        price = self.prices.of(model)
        with self._lock:
            if price is None:
                self.unpriced += 1
            else:
                self.this_try += price
        return price

    def cost_of(self, outcome: Outcome) -> float | None:
        """Return what ``outcome``'s image cost this try: 0 when reused, else its model's price (``None``: unknown)."""
        if outcome.reused or outcome.image is None:
            return 0.0
        return self.prices.of(outcome.image.model)

    def totals(self) -> dict[str, float | None]:
        """Return this try's and all tries' estimated cost, each ``None`` when an image had no price."""
        spent, unpriced = self.ledger.spent
        return {
            "estimated_cost_usd": None if self.unpriced else usd(self.this_try),
            "estimated_cost_usd_by_all_tries": None if unpriced else usd(spent),
        }
