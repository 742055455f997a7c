"""Answer deadlines per privacy regime.

GDPR art. 12(3): one month from receipt, extendable by two further months when necessary.
CCPA 1798.130(a)(2): 45 days, extendable once by a further 45 days.
A calendar month ends on the same day of the month, or on the month's last day when that day does not
exist (received 31 January -> due 29 February in a leap year).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.requests.models import Regime
from app.settings import Settings

# Extensions the law allows on top of the first deadline.
GDPR_EXTENSION_MONTHS = 2
CCPA_EXTENSION_DAYS = 45


@dataclass(frozen=True)
class Deadline:
    due_at: datetime
    latest_due_at: datetime  # the furthest an extension may push due_at


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` plus whole calendar months, clamped to the last day of the target month."""
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def deadline_for(regime: Regime | str, received_at: datetime, settings: Settings) -> Deadline:
    """The first due date of a request and the furthest date an extension may reach."""
    regime = Regime(regime)
    if regime is Regime.GDPR:
        return Deadline(
            due_at=add_months(received_at, settings.gdpr_months),
            latest_due_at=add_months(received_at, settings.gdpr_months + GDPR_EXTENSION_MONTHS),
        )
    first = received_at + timedelta(days=settings.ccpa_days)
    return Deadline(due_at=first, latest_due_at=first + timedelta(days=CCPA_EXTENSION_DAYS))


def extended_due_at(
    regime: Regime | str,
    received_at: datetime,
    current_due_at: datetime,
    settings: Settings,
    days: int | None = None,
) -> datetime:
    """The due date after an extension of `days` (None: as far as the regime allows).

    Raises ValueError when the extension would pass the regime's limit or nothing is left to extend.
    """
    latest = deadline_for(regime, received_at, settings).latest_due_at
    if current_due_at >= latest:
        raise ValueError(f"the deadline is already at the {Regime(regime).value.upper()} maximum")
    if days is None:
        return latest
    proposed = current_due_at + timedelta(days=days)
    if proposed > latest:
        allowed = (latest - current_due_at).days
        raise ValueError(
            f"{days} days would pass the {Regime(regime).value.upper()} maximum; at most {allowed} more days"
        )
    return proposed


def days_left(due_at: datetime, at: datetime | None = None) -> int:
    """Calendar days (UTC) from `at` (default: now) to the due date; 0 on the due day, negative once late."""
    at = at or datetime.now(UTC)
    return (due_at.astimezone(UTC).date() - at.astimezone(UTC).date()).days


def is_overdue(due_at: datetime, at: datetime | None = None) -> bool:
    return due_at < (at or datetime.now(UTC))
