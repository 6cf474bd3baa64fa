"""How to reach a Prometheus: its settings, which servers flows may name, and the credentials (the
operator's token file, the flows' own Secrets and CA files). Credentials never reach a log line or a
message: `redact()` removes them from every text the adapter produces."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from flowkeeper.api.v1alpha1 import PrometheusServer, SecretKeyRef
from flowkeeper.domain.errors import ErrorClass, FlowkeeperError
from flowkeeper.domain.signals import SignalsFailure

SecretReader = Callable[[str, SecretKeyRef], str]

SECRET_CACHE_SECONDS = 60.0  # how long a Secret read for a flow's own server is reused


@dataclass(frozen=True)
class ServerSettings:
    """How to reach one Prometheus. Flows whose settings are equal share one batch."""

    url: str  # never with userinfo: that is moved to `auth` by `settings_for`, so the URL can be logged
    headers: tuple[tuple[str, str], ...] = ()
    auth: tuple[str, str] | None = None
    verify: str | bool = True  # a CA bundle path, or default verification
    from_flow: bool = False  # credentials came from the flow's Secrets: a refusal is the flow's problem

    def __repr__(self) -> str:  # never log credentials
        return f"ServerSettings({self.url!r})"


def settings_for(
    url: str, headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None, verify: str | bool = True, *, from_flow: bool = False
) -> ServerSettings:
    """Settings with any `user:password@` of the URL turned into basic auth, unless other credentials
    are given (they win: they were written for this purpose)."""
    parts = urlsplit(url)
    if parts.username is not None or "@" in parts.netloc:
        if auth is None and "Authorization" not in (headers or {}) and parts.username is not None:
            auth = (parts.username, parts.password or "")
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=host))
    return ServerSettings(url.rstrip("/"), tuple(sorted((headers or {}).items())), auth, verify, from_flow)


# ------------------------------------------------------------------------------------- allow-list


def base_url(url: str) -> str | None:
    """scheme://host:port/path, lower-cased where URLs are case-blind, with the default port written
    out and no userinfo or trailing slash: the form allowed servers are compared in. None for what is
    not an http(s) base URL (no host, a query or a fragment)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}{parts.path.rstrip('/')}"


class AllowedServers:
    """The Prometheus servers flows may name in spec.metrics.server: the operator's own, and those of
    --allowed-prometheus-server."""

    def __init__(self, default_url: str, allowed: Iterable[str] = ()) -> None:
        self._allowed: set[str] = set()
        for url in (default_url, *allowed):
            normal = base_url(url)
            if normal is None:
                raise ValueError(f"not an http(s) base URL: {redact(url)}")
            self._allowed.add(normal)

    def allows(self, url: str) -> bool:
        return base_url(url) in self._allowed


# ------------------------------------------------------------------------------------- redaction

_USERINFO = re.compile(r"(?<=://)[^/?#@\s]+@")
_MIN_SECRET = 4  # shorter values would blank ordinary words; no real token is that short


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text without URL userinfo and without any of the secret values in it."""
    text = _USERINFO.sub("***@", text)
    for secret in secrets:
        # Until none is left: "***" may complete a secret made of stars; each round shortens the text.
        while len(secret) >= _MIN_SECRET and secret in text:
            text = text.replace(secret, "***")
    return text


# ----------------------------------------------------------------------------------- credentials


class TokenFile:
    """The operator's bearer token file, read on every pass: projected ServiceAccount tokens rotate.
    When a read fails, the last token read is used (a rotation swaps the file; a failed read between
    two passes must not cost a pass)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._token: str | None = None

    def token(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as f:
                self._token = f.read().strip()
        except OSError as exc:
            if self._token is None:
                raise OSError(f"cannot read the Prometheus bearer token file {self.path}: {exc.strerror or exc}") from None
        return self._token


# The Kubernetes adapter's reasons, said of a Secret.
_SECRET_REASONS = {"NotFound": "SecretNotFound", "Forbidden": "SecretForbidden"}


class FlowProblem(Exception):
    """A flow that cannot be read at all (a Secret it names, a server it may not use): its failure."""

    def __init__(self, failure: SignalsFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class FlowServers:
    """Settings of the servers flows name in spec.metrics.server, from the flows' Secrets (read through
    the operator's Secret reader, cached) and CA files written for them (removed on close())."""

    def __init__(self, secret_reader: SecretReader | None) -> None:
        self.secret_reader = secret_reader
        self._secrets: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._ca_dir: str | None = None
        self._finalizer: weakref.finalize | None = None

    def settings_of(self, namespace: str, server: PrometheusServer) -> ServerSettings:
        headers: dict[str, str] = {}
        auth = None
        verify: str | bool = True
        if server.bearer_token_secret is not None:
            headers["Authorization"] = f"Bearer {self._secret(namespace, server.bearer_token_secret).strip()}"
        if server.basic_auth is not None:
            auth = (self._secret(namespace, server.basic_auth.username_secret), self._secret(namespace, server.basic_auth.password_secret))
        if server.ca_secret is not None:
            verify = self._ca_file(self._secret(namespace, server.ca_secret))
        return settings_for(server.address, headers, auth, verify, from_flow=True)

    def secret_values(self) -> list[str]:
        """Every Secret value in use, for redaction."""
        return [value for _, value in self._secrets.values()]

    def forget_expired(self) -> None:
        if self._secrets:
            now = time.monotonic()
            self._secrets = {key: entry for key, entry in self._secrets.items() if entry[0] > now}

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def _secret(self, namespace: str, ref: SecretKeyRef) -> str:
        where = f"Secret {namespace}/{ref.name} key {ref.key!r}"
        if self.secret_reader is None:
            raise FlowProblem(SignalsFailure(ErrorClass.transient, "SecretsUnavailable", f"{where}: the operator reads no Secrets"))
        cache_key = (namespace, ref.name, ref.key)
        cached = self._secrets.get(cache_key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            value = self.secret_reader(namespace, ref)
            # Cached for a while: a GET per flow and pass would throttle the API server at scale.
            self._secrets[cache_key] = (time.monotonic() + SECRET_CACHE_SECONDS, value)
            return value
        except FlowkeeperError as exc:
            if exc.error_class == ErrorClass.configuration:
                # NotFound / Forbidden / a missing key: the flow points at a Secret it cannot use.
                reason = exc.reason if exc.reason.startswith("Secret") else _SECRET_REASONS.get(exc.reason, "SecretNotFound")
                raise FlowProblem(SignalsFailure(ErrorClass.configuration, reason, f"{where}: {exc}")) from exc
            raise FlowProblem(SignalsFailure(exc.error_class, exc.reason, f"{where}: {exc}")) from exc
        except LookupError as exc:
            raise FlowProblem(SignalsFailure(ErrorClass.configuration, "SecretNotFound", f"{where}: not found")) from exc
        except Exception as exc:  # noqa: BLE001 - an API hiccup is not the flow's fault
            raise FlowProblem(SignalsFailure(ErrorClass.transient, "SecretUnreadable", f"{where}: {exc}")) from exc

    def _ca_file(self, pem: str) -> str:
        """TLS verifies against a file: each distinct CA is written once, removed on close()."""
        if self._ca_dir is None:
            self._ca_dir = tempfile.mkdtemp(prefix="flowkeeper-ca-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._ca_dir, True)
        path = f"{self._ca_dir}/{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
        try:
            with open(path, "x") as out:
                out.write(pem)
        except FileExistsError:
            pass
        return path
