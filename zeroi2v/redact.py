"""Secrets never reach output: one function masks credentials in any text we print or log.

Tracking URIs (``http://user:password@host``), shard URLs with signed queries
(``?X-Amz-Signature=...``) and ``pipe:`` commands carrying keys (``curl -u user:pass``,
``-H "Authorization: Bearer ..."``, ``AWS_SECRET_ACCESS_KEY=...``) are masked by
`mask_secrets` wherever they could surface: log lines (`install` masks every log record of
the process, third-party loggers included, and uncaught tracebacks), the entry points'
one-sentence errors, MLflow params and the printed config. The config itself keeps the real
values: the run still needs them.

`run_cli` is the `__main__` of every launch script: masking on, and the errors a user can
cause (`zeroi2v.errors`, missing files) end the process with ``error: <one sentence>``.
This module imports only `zeroi2v.errors`, so every layer can use it.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from zeroi2v.errors import USER_ERRORS

MASK = "***"
# A name that says "secret": password, token, signature, sig, credential, api_key, access-key...
_SECRET = (
    r"[\w-]*(?:passw(?:or)?d|secret|token|signature|sig|credential|api[_-]?key|access[_-]?key"
    r"|auth)[\w-]*"
)
_VALUE = r"[^\s'\"&]+"


def _userinfo(match: re.Match[str]) -> str:
    """scheme://user:password@ → scheme://user:***@; scheme://token@ → scheme://***@."""
    if match["password"] is None:
        return f"{match['scheme']}{MASK}@"
    return f"{match['scheme']}{match['user']}:{MASK}@"


_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (
        re.compile(
            r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^\s:/@'\"]+)(?P<password>:[^\s/@'\"]*)?@",
            re.I,
        ),
        _userinfo,
    ),
    (  # Authorization: Bearer xyz / X-Api-Key: xyz
        re.compile(
            rf"(?P<head>\b(?:proxy-)?authorization|x-api-key|api-key)(?P<sep>\s*:\s*)(?P<kind>(?:bearer|basic|token)\s+)?{_VALUE}",
            re.I,
        ),
        lambda m: f"{m['head']}{m['sep']}{m['kind'] or ''}{MASK}",
    ),
    (  # curl -u user:pass / --user=user:pass
        re.compile(rf"(?P<flag>(?:^|\s)(?:-u|--user)[\s=]+)(?P<user>[^\s:'\"]+):{_VALUE}"),
        rf"\g<flag>\g<user>:{MASK}",
    ),
    (  # --password xyz / --token=xyz / --aws-secret-access-key xyz
        re.compile(rf"(?P<flag>--?{_SECRET}(?:\s+|=))(?!-){_VALUE}", re.I),
        rf"\g<flag>{MASK}",
    ),
    (  # key=value in queries and environment assignments: ?sig=..., AWS_SECRET_ACCESS_KEY=...
        re.compile(rf"(?P<key>(?<![-\w]){_SECRET}=){_VALUE}", re.I),
        rf"\g<key>{MASK}",
    ),
]


def mask_secrets(text: str) -> str:
    """`text` with passwords, tokens and keys replaced by ``***`` (user names stay readable)."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def mask_config(data: Any) -> Any:
    """A copy of JSON-like `data` (a config dict) with every string masked."""
    if isinstance(data, dict):
        return {key: mask_config(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [mask_config(value) for value in data]
    return mask_secrets(data) if isinstance(data, str) else data


def install() -> None:
    """Mask every log record of this process, and uncaught tracebacks. Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "masks_secrets", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report
            return record
        record.msg, record.args = mask_secrets(message), None
        return record

    masked_record.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)

    def excepthook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        sys.stderr.write(mask_secrets("".join(traceback.format_exception(kind, error, tb))))

    sys.excepthook = excepthook


def run_cli(main: Callable[[], Any]) -> NoReturn:
    """Run a launch script's `main` with masking installed; an expected failure exits with
    its masked one-sentence message (status 1) instead of a traceback."""
    install()
    try:
        result = main()
    except USER_ERRORS as error:
        sys.exit(f"error: {mask_secrets(str(error))}")
    sys.exit(result if isinstance(result, int) else 0)
