"""The fence around aiohttp's CA-store-free import (agent.sidecar.http): after it, in the same
process, a verified HTTPS request still verifies (a real TLS server with a certificate from a test
root), and a server the root did not sign is refused."""
import datetime
import ssl
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.sidecar.http import import_aiohttp, verified_connector


def _cert(subject, issuer_key, issuer_name, key, *, ca):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path):
    def pem(obj, name):
        path = tmp_path / name
        if isinstance(obj, x509.Certificate):
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(path)

    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    root = _cert(root_name, root_key, root_name, root_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), root_key, root_name, leaf_key, ca=False)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other root")])
    other = _cert(other_name, other_key, other_name, other_key, ca=True)
    return {"root": pem(root, "root.pem"), "other": pem(other, "other.pem"),
            "cert": pem(leaf, "leaf.pem"), "key": pem(leaf_key, "leaf.key")}


async def _https_server(aiohttp_server, pki):
    app = web.Application()
    async def hello(_request):
        return web.Response(text="verified")

    app.router.add_get("/", hello)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    return await aiohttp_server(app, ssl=ctx)


async def test_verified_request_after_the_fenced_import(aiohttp_server, pki):
    import_aiohttp()  # a no-op here (aiohttp is imported already); the subprocess test below covers a first import
    server = await _https_server(aiohttp_server, pki)
    url = f"https://localhost:{server.port}/"
    async with aiohttp.ClientSession(connector=verified_connector(pki["root"])) as session:
        async with session.get(url) as resp:
            assert await resp.text() == "verified"
    async with aiohttp.ClientSession(connector=verified_connector(pki["other"])) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(url)


def test_first_import_is_fenced_and_verification_still_works(pki):
    """In a fresh interpreter: import_aiohttp() restores the environment, and verified_connector()
    reads the CA store named by SSL_CERT_FILE (the test root) after the import."""
    code = f"""
import asyncio, os, ssl
from agent.sidecar.http import import_aiohttp, verified_connector
os.environ["SSL_CERT_FILE"] = {pki["root"]!r}
os.environ.pop("SSL_CERT_DIR", None)
before = dict(os.environ)
import_aiohttp()
assert dict(os.environ) == before
import aiohttp
from aiohttp import web

async def main():
    app = web.Application()
    async def hello(_request):
        return web.Response(text="ok")
    app.router.add_get("/", hello)
    runner = web.AppRunner(app); await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); ctx.load_cert_chain({pki["cert"]!r}, {pki["key"]!r})
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx); await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(connector=verified_connector()) as s:
        async with s.get(f"https://localhost:{{port}}/") as r:
            print(await r.text())
    await runner.cleanup()
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
