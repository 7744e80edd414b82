"""NATS connection options for real deployments, against nats-servers started with config
files: user/password, token, TLS with a CA and a client certificate, several URLs; and
the stream created or updated to match the config.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import ConfigError, FatalError
from bridge.publisher import Publisher
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port
from tests.test_relay import make_msgs, nats_cfg, read_all, running


@pytest.fixture
def server_with(tmp_path: Path) -> Iterator[Any]:
    started: list[NatsServer] = []

    def start(config: str) -> NatsServer:
        server = NatsServer(tmp_path / f"nats{len(started)}", config=config)
        server.start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


async def publish_some(tmp_path: Path, url: str | list[str], **cfg: Any) -> None:
    async with running(tmp_path / "o.db", nats_cfg(url, **cfg)) as r:
        await r.append(make_msgs(0, 50))
        await r.drained(timeout_s=30)
        assert r.relay.stats.published == 50


async def test_user_and_password(tmp_path: Path, server_with: Any) -> None:
    server = server_with('authorization { user: alice, password: "s3cr3t-pw" }\n')
    await publish_some(tmp_path, server.url, user="alice", password="s3cr3t-pw")
    with pytest.raises(FatalError, match="refused the credentials") as exc:
        await Publisher(nats_cfg(server.url, user="alice", password="wrong-pw")).connect()
    assert "wrong-pw" not in str(exc.value)


async def test_token(tmp_path: Path, server_with: Any) -> None:
    server = server_with('authorization { token: "t0k3n-abc" }\n')
    await publish_some(tmp_path, server.url, token="t0k3n-abc")
    with pytest.raises(FatalError):
        await Publisher(nats_cfg(server.url, token="nope")).connect()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (EC, one day)."""
    d = tmp_path / "certs"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca",
             "-days", "1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
                 f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext",
                 cwd=d)
    return d


async def test_tls_with_ca_and_client_certificate(tmp_path: Path, server_with: Any,
                                                  certs: Path) -> None:
    server = server_with(
        "tls {\n"
        f'  cert_file: "{certs / "server.pem"}"\n  key_file: "{certs / "server.key"}"\n'
        f'  ca_file: "{certs / "ca.pem"}"\n  verify: true\n  timeout: 2\n'
        "}\n")
    url = f"tls://127.0.0.1:{server.port}"
    await publish_some(tmp_path, url, tls={"ca_file": str(certs / "ca.pem"),
                                           "cert_file": str(certs / "client.pem"),
                                           "key_file": str(certs / "client.key")})
    # a client without its certificate is turned away (the server demands one)
    with pytest.raises(Exception):  # noqa: B017 - retryable or fatal, but never connected
        await Publisher(nats_cfg(url, tls={"ca_file": str(certs / "ca.pem")})).connect()
    # TLS is checked on reading back, too: the test reader needs the same material
    import ssl

    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    import nats

    nc = await nats.connect(url, tls=ctx)
    info = await nc.jetstream().stream_info("CDC")
    await nc.close()
    assert info.state.messages == 50


async def test_several_urls_first_one_dead(tmp_path: Path, nats_server: NatsServer) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    await publish_some(tmp_path, [dead, nats_server.url])
    assert len(await read_all(nats_server.url)) == 50


async def test_stream_created_then_updated_to_match_config(nats_server: NatsServer) -> None:
    import nats

    p = Publisher(nats_cfg(nats_server.url, storage="memory", max_age="1h",
                           max_bytes=10_000_000, max_msg_size=65536, duplicate_window="2m"))
    await p.connect()
    await p.close()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    cfg = (await js.stream_info("CDC")).config
    assert str(getattr(cfg.storage, "value", cfg.storage)) == "memory"
    assert (cfg.max_age, cfg.max_bytes, cfg.max_msg_size, cfg.duplicate_window) == (
        3600.0, 10_000_000, 65536, 120.0)
    assert cfg.subjects == ["cdc.>"]
    p = Publisher(nats_cfg(nats_server.url, storage="memory", max_age="2h",
                           max_bytes=20_000_000, duplicate_window="3m"))
    await p.connect()
    await p.close()
    cfg = (await js.stream_info("CDC")).config
    assert (cfg.max_age, cfg.max_bytes, cfg.duplicate_window) == (7200.0, 20_000_000, 180.0)
    assert cfg.max_msg_size in (None, -1)
    with pytest.raises(ConfigError, match="storage"):
        await Publisher(nats_cfg(nats_server.url, storage="file")).connect()
    await nc.close()
