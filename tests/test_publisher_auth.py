"""NATS connection options for real deployments, against nats-servers started with config
files: user/password, token, NKey seed, ``.creds`` (operator mode, JWT), TLS with a CA
and a client certificate, several URLs; and the stream created or updated to match the
config.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import orjson
import pytest
import yaml

from cdc_bridge.kernel.errors import ConfigError, FatalError, PublishUnavailable
from cdc_bridge.relay.publisher import Publisher, connect_options
from tests.helpers import BridgeProcess, read_raw, wait_for, write_config
from tests.services.nats_jwt import Trust, new_nkey, nkey_user
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port
from tests.test_relay import make_msgs, nats_cfg, read_all, running
from tests.test_skeleton_e2e import bridge_config, insert_rows, make_source


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

    nc = await nats.connect(url, tls=ctx)
    info = await nc.jetstream().stream_info("CDC")
    await nc.close()
    assert info.state.messages == 50


async def test_several_urls_first_one_dead(tmp_path: Path, nats_server: NatsServer) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    await publish_some(tmp_path, [dead, nats_server.url])
    assert len(await read_all(nats_server.url)) == 50


async def test_stream_created_then_updated_to_match_config(nats_server: NatsServer) -> None:

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


# -- NKey seed and .creds (JWT) -----------------------------------------------------------


def _write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


async def read_all_as(url: str, **auth: Any) -> list[bytes]:
    """Every message body of stream CDC, read with the given nats-py credentials."""
    return [m.data for m in await read_raw(url, allow_reconnect=False, **auth)]


async def test_nkey_seed_file(tmp_path: Path, server_with: Any) -> None:
    user, config = nkey_user()
    server = server_with(config)
    seed_file = _write_secret(tmp_path / "user.nk", user.seed)
    await publish_some(tmp_path, server.url, nkey_seed_file=str(seed_file))
    assert len(await read_all_as(server.url, nkeys_seed=str(seed_file))) == 50
    # a seed the server does not know is turned away for good, and never echoed
    stranger = nkey_user()[0]
    other = _write_secret(tmp_path / "other.nk", stranger.seed)
    with pytest.raises(FatalError, match="refused the credentials") as exc:
        await Publisher(nats_cfg(server.url, nkey_seed_file=str(other))).connect()
    assert stranger.seed not in str(exc.value)
    # the server's own word: it refused that very key
    assert f'authentication error - Nkey "{stranger.public}"' in (
        server.store_dir / "server.log").read_text()


async def test_creds_file_operator_mode_with_jetstream(tmp_path: Path,
                                                       server_with: Any) -> None:
    trust = Trust()
    server = server_with(trust.server_config())
    creds = trust.write_creds(tmp_path / "bridge.creds")
    # the relay creates the stream and gets PubAcks: JetStream works for the account
    await publish_some(tmp_path, server.url, creds_file=str(creds))
    assert len(await read_all_as(server.url, user_credentials=str(creds))) == 50
    # without credentials an operator-mode server admits nobody
    with pytest.raises(FatalError, match="refused the credentials"):
        await Publisher(nats_cfg(server.url)).connect()
    # a user signed by an account the operator never signed is refused
    rogue = new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    bad = trust.write_creds(tmp_path / "rogue.creds", account=rogue)
    rogue_seed = bad.read_text().split("-----BEGIN USER NKEY SEED-----\n")[1].split()[0]
    with pytest.raises(FatalError, match="refused the credentials") as exc:
        await Publisher(nats_cfg(server.url, creds_file=str(bad))).connect()
    assert rogue_seed not in str(exc.value)
    # the server's own word: it could not find the user's account
    assert "Account fetch failed: account missing" in (
        server.store_dir / "server.log").read_text()


async def test_malformed_key_files_are_config_errors(tmp_path: Path,
                                                     server_with: Any) -> None:
    """Files nats-py would choke on are refused before connecting, naming no secret: a
    ``.creds`` file without its JWT block would make nats-py loop forever."""
    trust = Trust()
    server = server_with(trust.server_config())
    good = trust.write_creds(tmp_path / "good.creds").read_text()
    jwt_block, seed_block = good.split("------END NATS USER JWT------\n")
    seed = seed_block.split("-----BEGIN USER NKEY SEED-----\n")[1].split()[0]
    bad_creds = {
        "seed block only": seed_block,
        "JWT block only": jwt_block + "------END NATS USER JWT------\n",
        "a bare seed": seed,
        "empty": "",
    }
    for what, text in bad_creds.items():
        path = _write_secret(tmp_path / "bad.creds", text)
        with pytest.raises(ConfigError, match=r"not a \.creds file") as exc:
            connect_options(nats_cfg(server.url, creds_file=str(path)))
        assert seed not in str(exc.value), what
    not_a_seed = _write_secret(tmp_path / "bad.nk", "SU-this-is-not-a-seed")
    with pytest.raises(ConfigError, match="nkey_seed_file"):
        await Publisher(nats_cfg(server.url, nkey_seed_file=str(not_a_seed))).connect()
    # a file that is not there (yet) stays a retryable connect failure
    with pytest.raises(PublishUnavailable):
        await Publisher(nats_cfg(server.url, creds_file=str(tmp_path / "absent.creds"))
                        ).connect()


def test_daemon_end_to_end_with_creds_file(tmp_path: Path, server_with: Any) -> None:
    """``cdc-bridge run`` with only a ``.creds`` file: the events reach the stream."""
    trust = Trust()
    server = server_with(trust.server_config())
    creds = trust.write_creds(tmp_path / "bridge.creds")
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, 300)
    path = bridge_config(tmp_path, server.url, db)
    config = yaml.safe_load(path.read_text())
    config["nats"]["creds_file"] = str(creds)
    bridge = BridgeProcess(write_config(path, config), tmp_path / "bridge.log")
    bridge.start()
    try:
        bodies = wait_for(lambda: (b := asyncio.run(read_all_as(
            server.url, user_credentials=str(creds)))) and len(b) >= 300 and b,
            what="300 events", timeout_s=60)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    ids = [orjson.loads(b)["data"]["after"]["id"] for b in bodies]
    assert ids == list(range(1, 301))
