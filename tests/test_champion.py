"""The `champion` alias under a race the registry itself loses: two first writes at once."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.exceptions import MlflowException, RestException  # noqa: E402

from zeroi2v.engine.tracking.champion import ALIAS, SCORE_TAG, promote_champion  # noqa: E402

# What `mlflow server` (sqlite store) answered in CI when two processes created `champion` at once.
UNIQUE_FAILED = {
    "error_code": "BAD_REQUEST",
    "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases."
    "workspace, registered_model_aliases.name, registered_model_aliases.alias",
}


class LosesTheFirstWrite:
    """A registry client whose first alias write loses a race: `rival` (a version, or None for
    no rival) is written just before, and the write fails as the store's second insert does."""

    def __init__(self, client, rival: str | None, error: MlflowException) -> None:
        self.client, self.rival, self.error, self.raced = client, rival, error, False

    def __getattr__(self, attr):
        return getattr(self.client, attr)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if not self.raced:
            self.raced = True
            if self.rival is not None:
                self.client.set_registered_model_alias(name, alias, self.rival)
            raise self.error
        self.client.set_registered_model_alias(name, alias, version)


@pytest.fixture
def registry(tmp_path):
    """A local sqlite registry with model `m`: version 1 scored 0.5, version 2 scored 0.9."""
    client = mlflow.MlflowClient(registry_uri=f"sqlite:///{tmp_path / 'registry.db'}")
    client.create_registered_model("m")
    for score in ("0.5", "0.9"):
        client.create_model_version("m", source=str(tmp_path), tags={SCORE_TAG: score})
    return client


def test_a_rival_creating_the_alias_at_the_same_moment_is_reconciled(registry):
    """The rival's stale write (version 1) stands after our insert fails; the next round sees
    it and moves `champion` to the best version, 2."""
    racing = LosesTheFirstWrite(registry, rival="1", error=RestException(UNIQUE_FAILED))
    assert promote_champion(racing, "m") == "2"
    assert racing.raced and str(registry.get_model_version_by_alias("m", ALIAS).version) == "2"


def test_a_failed_write_that_leaves_no_alias_is_raised(registry):
    failing = LosesTheFirstWrite(registry, rival=None, error=RestException(UNIQUE_FAILED))
    with pytest.raises(RestException, match="UNIQUE constraint failed"):
        promote_champion(failing, "m")
