"""The operator's log lines: JSON (kopf's formatter) or plain text, both with the same fields.

A plain line is the time, level, logger and message, then every structured field of the record as
`key=value` in the order the code gave them, quoted like JSON strings where needed:

    2026-03-01 12:00:00,000 INFO flowkeeper.controller.loop scaled flow=shop/orders pass_id=3f2a stage=scale replicas=4 reason="backlog 620 > 4 x 100" outcome=applied

`flow` and `namespace` are written together as `flow=namespace/name`, the way people name a flow.
Values that are not strings are written as JSON (`true`, `null`, `0.25`, `{"a":1}`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

try:  # python-json-logger >= 3.1
    from pythonjsonlogger.core import RESERVED_ATTRS
except ImportError:  # pragma: no cover - older python-json-logger
    from pythonjsonlogger.jsonlogger import RESERVED_ATTRS  # type: ignore[no-redef]

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REFKEY = "k8s"  # where kopf puts the object a record is about, in both formats
# The JSON lines leave these out too: the LogRecord's own attributes and kopf's internals.
_NOT_FIELDS = frozenset(RESERVED_ATTRS) | {"taskName", "k8s_skip", "k8s_ref", "settings"}
_BARE = re.compile(r"[^\s\"=\\]+")


class PlainFormatter(logging.Formatter):
    """Plain text lines that carry the structured fields the JSON lines carry."""

    def __init__(self, refkey: str = REFKEY) -> None:
        super().__init__(PLAIN_FORMAT)
        self.refkey = refkey

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # Here rather than in format(): a traceback, which format() appends, comes after the fields.
        line = super().formatMessage(record)
        fields = " ".join(f"{key}={_value(value)}" for key, value in self.fields(record).items())
        return f"{line} {fields}" if fields else line

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields = {key: value for key, value in record.__dict__.items() if key not in _NOT_FIELDS}
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            fields = {self.refkey: "/".join(str(p) for p in (ref.get("namespace"), ref.get("name")) if p), **fields}
        if "flow" in fields and "namespace" in fields:
            namespace = fields.pop("namespace")
            fields["flow"] = f"{namespace}/{fields['flow']}"
        return fields


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if _BARE.fullmatch(text) and text.isprintable() else json.dumps(text)


def configure(log_format: str, *, verbose: bool, level: str = "info") -> None:
    """Sets up logging through kopf (its handler on the root logger, levels, asyncio kept quiet);
    `log_format` is "json" or "plain"; `level` "debug" shows Flowkeeper's own routine lines (one per
    pass) without kopf's debug output."""
    import kopf

    json_lines = log_format == "json"
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_lines else kopf.LogFormat.PLAIN, log_refkey=REFKEY)
    if not json_lines:
        # kopf.configure appends its handler last; kopf's plain format is the bare message.
        logging.getLogger().handlers[-1].setFormatter(PlainFormatter())
    if level == "debug":
        logging.getLogger("flowkeeper").setLevel(logging.DEBUG)
    if not verbose:
        # kopf logs every watch event it hands to a handler; with thousands of flows that drowns
        # Flowkeeper's own lines. Its warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
