"""The secret manager: the workload certificate from the CA, kept fresh, plus file secrets.

Unlike Istio, which clears its cache when the rotation timer fires and waits for
Envoy to ask again, this manager renews on the timer and swaps the certificate
only once the new one is in hand: the old one is served until then, and the
first certificate is requested at start instead of on Envoy's first request.
Istio's code: https://github.com/istio/istio/blob/master/security/pkg/nodeagent/cache/secretcache.go
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.mesh import pem, secret_files
from agent.mesh.keys import KeyOptions, WorkloadIdentity, generate_key_and_csr
from agent.mesh.secret_files import CertPaths
from agent.mesh.secrets import (IssuedCert, Resource, ResourceKind, RotationPolicy, SecretError, SecretItem,
                                WorkloadCache, content_version, merge_roots, parse_name)
from agent.sidecar import logs

log = logs.get("cache")


class CertificateIssuer(Protocol):
    """The CA (``ca_client.CAClient``): PEM chain, leaf first and root last, for a CSR."""

    async def create_certificate(self, csr_pem: bytes, validity_seconds: int) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with +-randomisation (Istio's warm-up: 0.5 s x1.5 up to 60 s)."""

    initial: float = 0.5
    multiplier: float = 1.5
    randomization: float = 0.5
    maximum: float = 60.0

    def wait(self, failures: int, u: float) -> float:
        # The exponent is capped: past the maximum it changes nothing, and a float power overflows
        # after a day or so of failures otherwise.
        base = min(self.initial * self.multiplier ** min(failures - 1, 64), self.maximum)
        return base * (1 + self.randomization * (2 * u - 1))


@dataclass(frozen=True, slots=True)
class SecretOptions:
    identity: WorkloadIdentity = WorkloadIdentity()  # TRUST_DOMAIN, POD_NAMESPACE, SERVICE_ACCOUNT
    key: KeyOptions = KeyOptions()  # ECC_SIGNATURE_ALGORITHM, ECC_CURVE, ...
    secret_ttl: float = 86400.0  # SECRET_TTL: the validity asked of the CA
    rotation: RotationPolicy = RotationPolicy()  # SECRET_GRACE_PERIOD_RATIO(_JITTER)
    files: CertPaths = CertPaths()  # see secret_files.cert_source()
    output_certs: str = ""  # OUTPUT_CERTS directory, "" = none
    output_file_mode: int = 0o600  # Istio: 0o644 when KUBERNETES_SERVICE_HOST is set
    retry: Backoff = Backoff()
    file_poll_interval: float = 1.0
    file_debounce: float = 0.1  # FILE_DEBOUNCE_DURATION: first wait for a half-written pair
    file_pair_timeout: float = 10.0  # then give up on the pair


@dataclass(slots=True)
class SecretStats:
    file_secret_failures: int = 0  # num_file_secret_failures_total
    certificates_issued: int = 0
    issue_failures: int = 0


@dataclass(slots=True)
class _Watched:
    resource: Resource
    signature: tuple
    version: str = ""


def _log_death(task: asyncio.Task) -> None:
    """These tasks run for the agent's life: one that ends by an error would stop renewals silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("secret manager task died", task=task.get_name(), error=repr(task.exception()))


class SecretManager:
    """Serves ``default``, ``ROOTCA``, ``file-cert:`` and ``file-root:`` (a SecretProvider).

    ``issuer`` is None when the certificates are file-mounted (no CA client).
    """

    def __init__(self, options: SecretOptions = SecretOptions(), issuer: CertificateIssuer | None = None, *,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.options, self.issuer, self._clock = options, issuer, clock
        self._rng = rng or random.Random()
        self.cache = WorkloadCache(options.rotation, self._rng)
        self.stats = SecretStats()
        self.last_error: str | None = None  # why there is no (fresh) certificate, for readiness
        self._issued = asyncio.Event()
        self._renew_now = asyncio.Event()
        self._subscribers: list[Callable[[str], None]] = []
        self._watched: dict[str, _Watched] = {}
        self._tasks: list[asyncio.Task] = []

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing (fetching the first certificate now) and watching served files."""
        if self.issuer is not None:
            self._tasks.append(asyncio.create_task(self._renew_loop(), name="workload-cert"))
        self._tasks.append(asyncio.create_task(self._poll_files(), name="secret-files"))
        for task in self._tasks:
            task.add_done_callback(_log_death)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # --- SecretProvider ----------------------------------------------------------------

    async def secret(self, name: str) -> SecretItem:
        """Wait until ``name`` is available (with the CA down: until it is back).

        SecretError at once for a name not served, or a file that cannot be read.
        """
        resource = parse_name(name)
        if resource.kind in (ResourceKind.WORKLOAD, ResourceKind.ROOT):
            return await self._workload_item(resource)
        return await self._file_item(resource)

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
        return unsubscribe

    # --- extra trust anchors (istiod's ProxyConfig.ca_certificates_pem) -----------------

    def update_trust_anchors(self, pems: list[str]) -> None:
        """A changed bundle re-serves ROOTCA and renews the workload certificate."""
        if self.cache.set_extra_roots(tuple(pems)):
            self._notify("ROOTCA")
            self._renew_now.set()

    def cert_expiry_seconds(self) -> float | None:
        """``cert_expiry_seconds{resource_name="default"}``."""
        return self.cache.expiry_seconds(self._clock())

    # --- the workload certificate --------------------------------------------------------

    def _is_output(self, path: str) -> bool:
        """Whether ``path`` is in OUTPUT_CERTS: the agent's own output must not be read
        back as mounted certificates, or it would never renew."""
        out = self.options.output_certs
        return bool(out) and os.path.abspath(os.path.dirname(path)) == os.path.abspath(out)

    def _default_from_files(self) -> bool:
        """A mounted cert + key pair serves ``default`` instead of the CA."""
        f = self.options.files
        return (not self._is_output(f.cert_chain) and secret_files.non_empty(f.cert_chain)
                and secret_files.non_empty(f.key))

    def _root_from_file(self) -> bool:
        f = self.options.files
        return not self._is_output(f.root) and secret_files.non_empty(f.root)

    async def _workload_item(self, resource: Resource) -> SecretItem:
        f = self.options.files
        if resource.kind is ResourceKind.WORKLOAD and self._default_from_files():
            return await self._file_item(Resource(resource.name, ResourceKind.FILE_CERT, f.cert_chain, f.key))
        if resource.kind is ResourceKind.ROOT and self._root_from_file():
            return await self._file_item(Resource(resource.name, ResourceKind.ROOT, root_path=f.root))
        if self.issuer is None:
            raise SecretError(f"{resource.name}: no CA client and no certificate files at "
                              f"{f.cert_chain}, {f.key}, {f.root}")
        if not self._tasks:
            raise SecretError(f"{resource.name}: the secret manager is not started")
        await self._issued.wait()
        item = self.cache.item(resource.name, resource.kind)
        assert item is not None  # _issued is set only once a certificate is cached
        return item

    async def _renew_loop(self) -> None:
        failures = 0
        while True:
            if self._default_from_files():  # mounted files win; look again later
                await asyncio.sleep(self.options.file_poll_interval)
                continue
            self._renew_now.clear()  # a trust-bundle change during the request renews again
            try:
                await self._issue()
            except Exception as err:  # CAError, CSRError, PEMError...: one logged line, then retried
                failures += 1
                await self._failed(str(err) or type(err).__name__, failures)
                continue
            failures = 0
            delay = self.cache.seconds_to_rotation(self._clock())
            try:
                await asyncio.wait_for(self._renew_now.wait(), delay)
            except TimeoutError:
                pass

    async def _failed(self, why: str, failures: int) -> None:
        self.stats.issue_failures += 1
        self.last_error = why
        wait = self.options.retry.wait(failures, self._rng.random())
        log.warning(f"failed to generate workload certificate: {why}", retry_in=f"{wait:.2f}s")
        await asyncio.sleep(wait)

    async def _issue(self) -> None:
        o = self.options
        started = time.monotonic()
        made = await asyncio.to_thread(generate_key_and_csr, o.key, o.identity)
        chain = await self.issuer.create_certificate(made.csr_pem, int(o.secret_ttl))
        cert_chain = pem.join_chain(chain)
        try:
            expires_at = pem.leaf_not_after(cert_chain)
        except pem.PEMError as err:
            raise SecretError(f"failed to extract expire time from server certificate in CSR response: {err}") \
                from None
        now = self._clock()
        if expires_at <= now:  # a broken CA or a skewed clock: renewing at once would loop on the CA
            raise SecretError(f"the CA returned a certificate that expired {now - expires_at:.0f}s ago")
        root = pem.join_chain(chain[-1:])
        issued = IssuedCert(cert_chain, made.private_key_pem, root, now, expires_at)
        changed = self.cache.accept(issued)
        self.stats.certificates_issued += 1
        self.last_error = None
        log.info("generated new workload certificate", resourceName="default",
                 latency=f"{time.monotonic() - started:.3f}s", ttl=f"{expires_at - issued.created_at:.0f}s")
        if "ROOTCA" in changed:
            log.info("Root cert has changed, start rotating root cert")
        self._write_output(issued)
        self._issued.set()
        for name in changed:
            self._notify(name)

    def _write_output(self, issued: IssuedCert) -> None:
        if self.options.output_certs:
            # The key stays 0600 even where Istio writes every file 0644 (KUBERNETES_SERVICE_HOST set):
            # the certificates are public, the key is not.
            secret_files.write_output(self.options.output_certs, {"key.pem": issued.private_key}, 0o600)
            secret_files.write_output(self.options.output_certs, {
                "cert-chain.pem": issued.cert_chain, "root-cert.pem": issued.root_cert}, self.options.output_file_mode)

    def _notify(self, name: str) -> None:
        for callback in list(self._subscribers):
            try:
                callback(name)
            except Exception as err:  # a subscriber's bug must not stop rotation
                log.error(f"secret change subscriber failed for {name}: {err!r}")

    # --- file secrets --------------------------------------------------------------------

    async def _file_item(self, resource: Resource) -> SecretItem:
        try:
            item = await self._read_file_item(resource)
        except SecretError as err:
            self.stats.file_secret_failures += 1
            log.error(f"resource:{resource.name} failed to generate secret for proxy from file: {err}")
            raise
        paths = (resource.cert_path, resource.key_path) if resource.kind is ResourceKind.FILE_CERT \
            else (resource.root_path,)
        self._watched[resource.name] = _Watched(resource, secret_files.signature(*paths), item.version)
        return item

    async def _read_file_item(self, r: Resource) -> SecretItem:
        if r.kind is ResourceKind.FILE_CERT:
            chain, key = await secret_files.read_pair(r.cert_path, r.key_path, self.options.file_debounce,
                                                     self.options.file_pair_timeout)
            try:
                expires_at = pem.leaf_not_after(chain)
            except pem.PEMError as err:
                raise SecretError(f"{r.cert_path}: {err}") from None
            return SecretItem(r.name, chain, key, None, content_version(chain, key), expires_at)
        root = secret_files.read_root(r.root_path)
        if r.kind is ResourceKind.ROOT:  # the mounted ROOTCA gets istiod's extra anchors too
            root = merge_roots(root, self.cache.extra_roots)
        return SecretItem(r.name, None, None, root, content_version(root), None)

    async def _poll_files(self) -> None:
        """Re-read served files whose stat changed; push the names whose content changed."""
        while True:
            await asyncio.sleep(self.options.file_poll_interval)
            for name, w in list(self._watched.items()):
                paths = (w.resource.cert_path, w.resource.key_path) if w.resource.kind is ResourceKind.FILE_CERT \
                    else (w.resource.root_path,)
                if secret_files.signature(*paths) == w.signature:
                    continue
                old = w.version
                try:
                    item = await self._file_item(w.resource)
                except SecretError:
                    self._watched.pop(name, None)  # watched again on the next request
                    continue
                if item.version != old:
                    self._notify(name)
