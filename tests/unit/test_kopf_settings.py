"""kopf as Flowkeeper runs it: paged initial LISTs, no scanning, restarted watches."""

from __future__ import annotations

import kopf

from flowkeeper.adapters.kubernetes import LIST_PAGE
from flowkeeper.handlers.operator import apply_kopf_settings


def test_kopf_lists_in_pages_and_scans_nothing() -> None:
    settings = kopf.OperatorSettings()
    assert settings.watching.chunk_size is None  # kopf's default: one LIST response for everything

    apply_kopf_settings(settings)

    assert settings.watching.chunk_size == LIST_PAGE == 500
    assert settings.scanning.disabled is True
    # a worker per object ends soon after its last event: a LIST of 20,000 objects is not 20,000
    # workers held for kopf's default 5 s
    assert settings.queueing.idle_timeout <= 0.5 < kopf.OperatorSettings().queueing.idle_timeout
    assert settings.watching.server_timeout == 600 < settings.watching.client_timeout
