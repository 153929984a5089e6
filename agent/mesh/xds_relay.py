"""One Envoy ADS stream relayed to one istiod stream (the xDS proxy's unit of work).

Three tasks per stream, as in Istio's agent: Envoy's requests into an unbounded queue, the queue
to istiod, and istiod's responses to Envoy or to the agent's own handlers. The first of them to
end, or a stop(), ends all three; the stream's end is then classified (expected or not) for the
counters and logs, and the upstream status is what Envoy sees.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from agent.mesh import upstream, wire
from agent.sidecar import logs

if TYPE_CHECKING:
    from agent.mesh.xds_proxy import XdsProxy

log = logs.get("xdsproxy")

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
NAME_TABLE_TYPE = "type.googleapis.com/istio.networking.nds.v1.NameTable"
PROXY_CONFIG_TYPE = "type.googleapis.com/istio.mesh.v1alpha1.ProxyConfig"
HEALTH_TYPE = "type.googleapis.com/istio.v1.HealthInformation"
WORKLOAD_TYPE = "type.googleapis.com/istio.workload.Workload"

#: Status texts of terminations that are part of normal operation (istiod's max connection age,
#: Envoy going away), after Istio's pilot/pkg/grpc/grpc.go; Go's and grpcio's wordings both.
_EXPECTED_TEXT = ("stream terminated by RST_STREAM with error code: NO_ERROR",
                  "received prior goaway: code: NO_ERROR", "GOAWAY received", "Received RST_STREAM with error code 0")
_EXPECTED_UNAVAILABLE = ("client disconnected", "error reading from server: EOF", "transport is closing")


_SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"


def method_path(delta: bool) -> str:
    return _SERVICE + ("DeltaAggregatedResources" if delta else "StreamAggregatedResources")


def _serialize(message) -> bytes:
    return message.SerializeToString()


#: Responses at least this big are followed by release_freed_memory().
_LARGE_RESPONSE = 1 << 20


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_freed_memory() -> None:
    """Hand memory freed after a large push back to the kernel.

    grpcio receives a message into many small buffers and copies it out; glibc keeps those freed
    buffers in the heap, so each multi-megabyte push would otherwise leave the agent about twice
    the push size bigger for good. malloc_trim returns them (about a millisecond)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def forwardable(type_url: str) -> bool:
    """Only Envoy's own types (and ztunnel's Workload) go to Envoy; anything else is dropped."""
    return type_url.startswith("type.googleapis.com/envoy.") or type_url == WORKLOAD_TYPE


def expected(code: grpc.StatusCode, details: str) -> bool:
    if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    if code is grpc.StatusCode.UNAVAILABLE and any(t in details for t in _EXPECTED_UNAVAILABLE):
        return True
    return any(t in details for t in _EXPECTED_TEXT)


@dataclass(frozen=True, slots=True)
class End:
    """How a relayed stream ended: which side, and the gRPC status it ended with."""

    side: str  # "connect" (no upstream stream) | "upstream" | "downstream" | "stopped"
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""


class Relay:
    def __init__(self, proxy: XdsProxy, delta: bool, requests, context: grpc.aio.ServicerContext) -> None:
        self.proxy = proxy
        self.delta = delta
        self._requests = requests
        self._context = context
        self._queue: asyncio.Queue = asyncio.Queue()  # unbounded on purpose: see the module docstring
        self._stopped = asyncio.Event()
        self._lds_seen = False
        self.id = 0

    def _request(self, **fields):
        if self.delta:
            fields.pop("version_info", None)
            return discovery_pb2.DeltaDiscoveryRequest(**fields)
        return discovery_pb2.DiscoveryRequest(**fields)

    def stop(self) -> None:
        self._stopped.set()

    def send_health(self, healthy: bool, message: str) -> None:
        error = None if healthy else status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=message)
        self._queue.put_nowait(self._request(type_url=HEALTH_TYPE, error_detail=error))

    # -- the stream -----------------------------------------------------------------------------------

    async def run(self) -> None:
        self.id = self.proxy.register(self)
        try:
            end = await self._connect_and_relay()
        except asyncio.CancelledError:  # Envoy went away: grpc cancels the handler
            self.proxy.counters.envoy_connection_terminations["cancelled"] += 1
            raise
        finally:
            self.proxy.unregister(self)
        self._account(end)
        if end.side in ("upstream", "connect") and end.code is not grpc.StatusCode.OK:
            await self._context.abort(end.code, end.details)

    async def _connect_and_relay(self) -> End:
        proxy, opts = self.proxy, self.proxy.upstream
        try:
            metadata = upstream.metadata(opts)  # first: a token that cannot be read leaves no channel open
            channel = upstream.channel(opts)
        except upstream.UpstreamError as e:
            return self._failed(f"failed to connect to upstream {opts.address}: {e}")
        try:
            call = channel.stream_stream(method_path(self.delta), request_serializer=_serialize,
                                         response_deserializer=None)(metadata=metadata)
            try:
                await asyncio.wait_for(call.wait_for_connection(), opts.connect_timeout)
            except asyncio.TimeoutError:
                return self._failed(f"failed to connect to upstream {opts.address}: timed out after "
                                    f"{opts.connect_timeout:g}s")
            except grpc.aio.AioRpcError as e:
                return self._failed(f"failed to connect to upstream {opts.address}: {e.code().name}: {e.details()}",
                                    e.code())
            kind = "delta upstream" if self.delta else "upstream"
            log.info(f"connected to {kind} XDS server: {opts.address}", id=self.id)
            if proxy.is_current(self):
                proxy.state.connected, proxy.state.since, proxy.state.last_error = True, proxy.clock(), ""
            try:
                return await self._relay(call)
            finally:
                call.cancel()
        finally:
            await channel.close(grace=None)

    def _failed(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> End:
        log.error(message, id=self.id)
        self.proxy.counters.istiod_connection_failures += 1
        self.proxy.state.last_error = message
        return End("connect", code, message)

    async def _relay(self, call) -> End:
        tasks = [asyncio.create_task(coro) for coro in
                 (self._from_envoy(), self._to_istiod(call), self._from_istiod(call), self._stop_wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            if first.exception() is not None:  # a defect here must not leak a traceback to Envoy
                log.error(f"xds proxy stream failed: {first.exception()!r}", id=self.id)
                return End("upstream", grpc.StatusCode.INTERNAL, "xds proxy internal error")
            return first.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_wait(self) -> End:
        await self._stopped.wait()
        return End("stopped")

    async def _from_envoy(self) -> End:
        try:
            async for request in self._requests:
                self._queue.put_nowait(request)
                if not self._lds_seen and request.type_url == LISTENER_TYPE:
                    self._inject()
        except grpc.aio.AioRpcError as e:
            return End("downstream", e.code(), e.details() or "")
        return End("downstream")  # Envoy closed its side

    def _inject(self) -> None:
        """After Envoy's first LDS request: NDS, ProxyConfig, the last health report."""
        self._lds_seen = True
        for type_url in (NAME_TABLE_TYPE, PROXY_CONFIG_TYPE):
            if type_url in self.proxy.local_types():
                self._queue.put_nowait(self._request(type_url=type_url))
        if self.proxy.health_request is not None:
            self.send_health(*self.proxy.health_request)

    async def _to_istiod(self, call) -> End:
        while True:
            request = await self._queue.get()
            if request.type_url == HEALTH_TYPE and not self._lds_seen:
                continue  # health goes only after the first LDS request, as in Istio
            self.proxy.counters.xds_proxy_requests += 1
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                # The call ended under the write. Its status is istiod's, unless grpcio saw the write
                # fail before the status arrived: it then reports INTERNAL "Internal error from Core"
                # and istiod's own status (e.g. a refused token) is lost.
                return End("upstream", await call.code(), await call.details() or "")

    async def _from_istiod(self, call) -> End:
        """istiod's responses stay serialized (see agent/mesh/wire.py): only their type URL is read."""
        while True:
            try:
                data = await call.read()
            except grpc.aio.AioRpcError as e:
                return End("upstream", e.code(), e.details() or "")
            if data is grpc.aio.EOF:
                return End("upstream", await call.code(), await call.details() or "")
            self.proxy.counters.xds_proxy_responses += 1
            try:
                type_url = wire.string_field(data, wire.TYPE_URL_FIELD)
            except ValueError as e:
                return End("upstream", grpc.StatusCode.INTERNAL, f"malformed response from istiod: {e}")
            if type_url in self.proxy.local_types():
                self._answer_locally(data)
            elif not forwardable(type_url):
                log.error(f"Skipping forwarding type url {type_url} to Envoy as is not a valid Envoy type",
                          id=self.id)
            elif (end := await self._to_envoy(data, type_url)) is not None:
                return end
            if len(data) >= _LARGE_RESPONSE:
                release_freed_memory()

    def _answer_locally(self, data: bytes) -> None:
        """Consume an NDS/PCDS response and ACK it (NACK when it does not decode). Empty responses are
        ACKed too, so istiod does not keep waiting on them (Istio ignores them)."""
        response = (discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse)()
        response.ParseFromString(data)
        value = None
        if response.resources:
            first = response.resources[0]
            value = first.resource.value if self.delta else first.value
        error = self.proxy.handle_local(response.type_url, value)
        version = "" if self.delta else response.version_info
        self._queue.put_nowait(self._request(type_url=response.type_url, response_nonce=response.nonce,
                                             version_info=version, error_detail=error))

    async def _to_envoy(self, data: bytes, type_url: str) -> End | None:
        started = time.monotonic()
        try:
            await self._context.write(data)
        except Exception as e:  # noqa: BLE001 (Envoy gone mid-write: end the stream, never crash)
            return End("downstream", grpc.StatusCode.CANCELLED, f"send error for type url {type_url}: {e}")
        if (took := time.monotonic() - started) > self.proxy.options.slow_send_warning:
            log.warning(f"sending {type_url} to Envoy took {took:.1f}s", id=self.id)
        return None

    # -- accounting -----------------------------------------------------------------------------------

    def _account(self, end: End) -> None:
        counters, state = self.proxy.counters, self.proxy.state
        if end.side in ("connect", "stopped"):
            return
        kind = "cancelled" if expected(end.code, end.details) else "error"
        status = f"{end.code.name}: {end.details}" if end.code is not grpc.StatusCode.OK else "EOF"
        if end.side == "upstream":
            counters.istiod_connection_terminations[kind] += 1
            if kind == "error":
                state.last_error = status
                log.warning(f"upstream terminated with unexpected error {status}", id=self.id)
            else:
                log.debug(f"upstream terminated with status {status}", id=self.id)
        else:
            counters.envoy_connection_terminations[kind] += 1
            if kind == "error":
                log.warning(f"downstream terminated with unexpected error {status}", id=self.id)
            else:
                log.debug(f"downstream terminated with status {status}", id=self.id)
