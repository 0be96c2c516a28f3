"""The `champion` alias: the registered version with the best val top-1, safe under concurrency.

MLflow's registry has no compare-and-set for aliases, so two trainings that register the same
model name at once could both read the old champion and the slower write would win, even when
it is the worse model. Instead of "compare with the current champion, then set", every
registering process *reconciles*: it computes the best version over all versions (score tag
`val_top1`, the earliest version on ties, so an equal score never moves the alias), sets the
alias if it differs, and re-reads until the alias and the best version agree. The registry's
own race, two processes creating the alias at once, fails the slower write: the rival's alias
stands and the next round reconciles with it (`_set_alias`).

Guarantee: once every registering process has returned, `champion` is the best-scored version
and no version is lost (MLflow numbers versions in one transaction per version). While two
registrations race, a stale write can point the alias for one request's time at the lower of
two new versions; its writer sees that on its re-read and repairs it. A manual move of
`champion` to a lower-scored version lasts until the next registration: pin hand-picked
versions under another alias (e.g. `production`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

ALIAS = "champion"
SCORE_TAG = "val_top1"
MAX_ROUNDS = 20  # each round is one read + at most one write; rivals converge in a few


def score_tag(val_top1: float) -> str:
    """The tag text; `repr` round-trips the float exactly, so equal scores compare equal."""
    return repr(float(val_top1))


def _score(version: Any) -> float | None:
    try:
        value = float(version.tags.get(SCORE_TAG, "nan"))
    except ValueError:
        return None
    return None if math.isnan(value) else value


def best_version(client: Any, name: str) -> str | None:
    """The version with the highest score tag (the earliest on ties); None if none is scored."""
    scored = [
        (score, -int(v.version), str(v.version))
        for v in client.search_model_versions(f"name='{name}'")
        if (score := _score(v)) is not None
    ]
    return max(scored)[2] if scored else None


def _current(client: Any, name: str) -> str | None:
    from mlflow.exceptions import MlflowException  # lazy: MLflow ([train]/[serve] extra)

    try:
        return str(client.get_model_version_by_alias(name, ALIAS).version)
    except MlflowException:  # no champion yet
        return None


def promote_champion(client: Any, name: str) -> str | None:
    """Point `champion` at the best-scored version of `name`; returns that version."""
    for _ in range(MAX_ROUNDS):
        best = best_version(client, name)
        if best is None or _current(client, name) == best:
            return best
        if _set_alias(client, name, best):
            log.info("Model %s version %s is the champion.", name, best)
    raise RuntimeError(
        f"the '{ALIAS}' alias of model {name} kept changing under {MAX_ROUNDS} concurrent "
        f"updates; run the registration again"
    )


def _set_alias(client: Any, name: str, version: str) -> bool:
    """Set `champion`; False when a rival created it at the same moment.

    The registry creates an alias with an INSERT under a unique key: when two processes set a
    model's first `champion` at once, the slower insert fails (the server answers BAD_REQUEST,
    sqlite's "UNIQUE constraint failed"). The rival's alias then stands and the next round
    reconciles with it; a failure that leaves no alias behind is a real error and is raised.
    """
    from mlflow.exceptions import MlflowException  # lazy: MLflow ([train]/[serve] extra)

    try:
        client.set_registered_model_alias(name, ALIAS, version)
    except MlflowException:
        if _current(client, name) is None:
            raise
        return False
    return True
