"""The test istiod (tests/mesh/istiod.py) as a process for the mesh tests, with what they need on top:

- resources per node: `mesh.json` maps a `<pod>.<namespace>` key (as it appears in the node id
  `sidecar~<ip>~<pod>.<namespace>~...`) to `{type_url: [JSON resources]}`, with `*` for any other node;
  it is re-read and pushed again on SIGHUP;
- a PKI kept in files (`pki.json`), so an istiod restarted mid-test is the same CA with the same
  serving certificate and token key, as a restarted istiod pod is;
- an event log (`events.jsonl`, one JSON object a line) of what a test asserts on from outside:
  ADS streams opened (node, flavour, ClusterID, whether a token came), streams and CSRs refused,
  certificates issued (identity, serial).

    python -m tests.mesh_e2e.mesh_istiod --dir D [--host H] [--port P] [--validity S]

Prints `ready <port>` once serving; SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.mesh.ca_server import CAServicer, TestPKI, _key_pem, _pem
from tests.mesh.istiod import TestIstiod, messages_from_json
from tests.mesh_e2e.resources import PROTO_MODULES

PKI_FILE, MESH_FILE, EVENTS_FILE = "pki.json", "mesh.json", "events.jsonl"


def save_pki(pki: TestPKI, directory: Path) -> None:
    data = {"root_key": _key_pem(pki.root_key).decode(), "root": pki.root_pem.decode(),
            "server_key": pki.server_key_pem.decode(), "server_cert": pki.server_cert_pem.decode(),
            "token_key": _key_pem(pki.token_key).decode()}
    path = directory / PKI_FILE
    path.write_text(json.dumps(data))
    path.chmod(0o600)


def load_pki(directory: Path) -> TestPKI:
    """The TestPKI saved by save_pki, without generating new keys."""
    data = json.loads((directory / PKI_FILE).read_text())
    pki = TestPKI.__new__(TestPKI)
    pki.root_key = serialization.load_pem_private_key(data["root_key"].encode(), None)
    pki.root = x509.load_pem_x509_certificate(data["root"].encode())
    pki.root_pem = _pem(pki.root)
    pki.server_key = serialization.load_pem_private_key(data["server_key"].encode(), None)
    pki.server_key_pem = data["server_key"].encode()
    pki.server_cert = x509.load_pem_x509_certificate(data["server_cert"].encode())
    pki.server_cert_pem = data["server_cert"].encode()
    pki.token_key = serialization.load_pem_private_key(data["token_key"].encode(), None)
    return pki


class Events:
    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1)

    def __call__(self, event: str, **fields) -> None:
        self._file.write(json.dumps({"event": event, "at": time.time(), **fields}) + "\n")


class LoggingCA(CAServicer):
    events: Events

    async def CreateCertificate(self, request, context):  # noqa: N802 (gRPC name)
        try:
            response = await super().CreateCertificate(request, context)
        finally:
            seen = self.calls[-1]
            self.events("csr", identity=seen.identity, refused=seen.refused,
                        clusterid=seen.metadata.get("clusterid"))
        leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
        self.events("issued", identity=seen.identity, serial=leaf.serial_number)
        return response


class MeshIstiod(TestIstiod):
    """TestIstiod whose resources depend on the node that asked."""

    def __init__(self, pki: TestPKI, events: Events, **kw) -> None:
        super().__init__(pki, **kw)
        self.events = events
        self.ca = LoggingCA(pki, self.ca.validity)
        self.ca.events = events
        self.by_node: dict[str, dict[str, dict]] = {}

    def load(self, spec: dict[str, dict[str, list[dict]]]) -> None:
        saved = self.resources
        by_node = {}
        for key, types in spec.items():
            for type_url, resources in types.items():
                self.set(type_url, messages_from_json(type_url, resources))
            by_node[key] = self.resources
            self.resources = {}
        self.resources = saved
        self.by_node = by_node
        for stream in self.open_streams():  # set() pushed already; this covers types only some nodes have
            for type_url in stream.subscribed:
                stream.inbox.put_nowait(("push", type_url))

    def _for(self, node_id: str) -> dict:
        for key, resources in self.by_node.items():
            if key != "*" and f"~{key}~" in node_id:
                return resources
        return self.by_node.get("*", {})

    def _response(self, stream, type_url):
        saved, self.resources = self.resources, self._for(stream.node_id)
        try:
            return super()._response(stream, type_url)
        finally:
            self.resources = saved

    def _record(self, stream, request):
        known = bool(stream.node_id)
        types = super()._record(stream, request)
        if not known and stream.node_id:
            self.events("stream", node=stream.node_id, delta=stream.delta,
                        clusterid=stream.metadata.get("clusterid"),
                        token="authorization" in stream.metadata)
        return types

    async def _serve(self, delta, request_iterator, context):
        refused = len(self.refused)
        try:
            await super()._serve(delta, request_iterator, context)
        finally:
            if len(self.refused) > refused:
                self.events("stream-refused", reason=self.refused[-1])


async def serve(args: argparse.Namespace) -> None:
    for module in PROTO_MODULES:
        importlib.import_module(module)
    directory = Path(args.dir)
    events = Events(directory / EVENTS_FILE)
    istiod = MeshIstiod(load_pki(directory), events, port=args.port, host=args.host, validity=args.validity)

    def load() -> None:
        path = directory / MESH_FILE
        istiod.load(json.loads(path.read_text()) if path.exists() else {})

    load()
    await istiod.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, load)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    events("started", port=istiod.port, pid=os.getpid())
    print(f"ready {istiod.port}", flush=True)
    await stop.wait()
    await istiod.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mesh_e2e.mesh_istiod")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=15012)
    ap.add_argument("--validity", type=float, default=30.0)
    asyncio.run(serve(ap.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
