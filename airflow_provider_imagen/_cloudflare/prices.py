"""
What an image costs: the connection's ``prices`` extra, checked as untrusted input, over the catalog's defaults.

A price is US dollars per image. The connection's own price of a model wins; else the catalog's default, derived
from Cloudflare's published unit prices (``text_to_image_models.json``, ``docs/cost.md``); else there is no
estimate (``None``), never a made-up 0. Cheap to import (no httpx, no Airflow).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: The most models a ``prices`` extra may price: far more than Workers AI serves, far fewer than a pasted dump.
MAX_PRICED_MODELS = 200
#: The highest price per image accepted: a typo (cents for dollars) is refused rather than obeyed.
MAX_PRICE_USD = 100.0


def parse_prices(value: Any) -> Mapping[str, float]:
    """
    Read a ``prices`` extra: a JSON object (or its text) of model id to US dollars per image.

    :raises ValueError: saying what is wrong (the caller names the connection and the field).
    """
    from airflow_provider_imagen._cloudflare.rules import check_model_id
    from airflow_provider_imagen.exceptions import InvalidInputError

    if value is None or value == "":
        return MappingProxyType({})
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"must be a JSON object of model id to USD per image ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(
            'must be a JSON object of model id to USD per image, such as {"google/imagen-4": 0.04}, '
            f"got {type(value).__name__}"
        )
    if len(value) > MAX_PRICED_MODELS:
        raise ValueError(f"prices at most {MAX_PRICED_MODELS} models, got {len(value)}")
    prices = {}
    for model, price in value.items():
        try:
            check_model_id(model, field="model id")
        except InvalidInputError as err:
            raise ValueError(f"key {str(model)[:80]!r}: {err}") from None
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price):
            raise ValueError(f"{model!r}: the price must be a number of US dollars per image, got {price!r}")
        if not 0 <= price <= MAX_PRICE_USD:
            raise ValueError(f"{model!r}: the price must be from 0 to {MAX_PRICE_USD:g} USD per image, got {price!r}")
        prices[model] = float(price)
    return MappingProxyType(prices)


def check_max_cost(max_cost_usd: object) -> None:
    """
    Check a spend limit in US dollars: a finite number above 0.

    :raises InvalidInputError: naming ``max_cost_usd`` and what is allowed.
    """
    from airflow_provider_imagen.exceptions import InvalidInputError

    if max_cost_usd is None:
        return
    # NaN is refused too: it compares false.
    if isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, (int, float)) or not 0 < max_cost_usd < math.inf:
        raise InvalidInputError(f"Invalid max_cost_usd: must be a number of US dollars above 0, got {max_cost_usd!r}")


def default_price(model: str) -> float | None:
    """Return the catalog's default price of one image of ``model``, or ``None`` where none is published."""
    from airflow_provider_imagen._cloudflare.catalog import TEXT_TO_IMAGE_MODELS

    entry = TEXT_TO_IMAGE_MODELS.get(model)
    return entry.price.usd_per_image if entry is not None and entry.price is not None else None


@dataclass(frozen=True)
class PriceList:
    """
    The price of one image of each model: the connection's ``prices``, then the catalog's defaults.

    :param prices: the connection's ``prices`` extra, parsed by :func:`parse_prices`.
    """

    prices: Mapping[str, float] = field(default_factory=dict)

    def of(self, model: str) -> float | None:
        """Return what one image of ``model`` costs, in US dollars, or ``None`` when there is no estimate."""
        price = self.prices.get(model)
        return price if price is not None else default_price(model)

    def most(self, models: Iterable[str]) -> float | None:
        """Return the most one image can cost when any of ``models`` may make it; ``None`` if one has no price."""
        found = [self.of(model) for model in models]
        return None if not found or any(price is None for price in found) else max(p for p in found if p is not None)


def usd(amount: float | None) -> float | None:
    """Round a dollar figure for people and XComs: sums of prices carry binary floating-point noise."""
    return None if amount is None else round(amount, 8)
