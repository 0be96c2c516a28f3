"""The errors a user can cause and fix, at the bottom of the package so every layer can raise them.

Each carries one sentence naming the file, field or server at fault; the launch scripts turn
them into ``error: <sentence>`` and a non-zero exit instead of a traceback. They are also
importable where they are raised (e.g. ``zeroi2v.config.ConfigError``).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the field."""


class FrozenBackboneError(ConfigError):
    """A checkpoint was trained on another frozen backbone than the one its reader builds."""


class CorruptVideoError(RuntimeError):
    """The bytes cannot be opened or decoded as a video; the pipeline skips such samples."""


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint is left untouched."""


class TrackingServerError(RuntimeError):
    """The configured MLflow server cannot be used."""


class LostRankError(RuntimeError):
    """A collective failed because ranks stopped answering; the message names them."""


class CheckpointDamagedError(RuntimeError):
    """No checkpoint can be resumed from (or the newest is damaged and the config says stop)."""


# What the launch scripts report as one sentence (`zeroi2v.redact.run_cli`); anything else is a
# bug and keeps its traceback.
USER_ERRORS = (
    ConfigError,
    CheckpointDamagedError,
    NonFiniteLossError,
    TrackingServerError,
    LostRankError,
    FileNotFoundError,
)
