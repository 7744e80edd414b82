"""NATS test identities: NKey seeds, signed JWTs, ``.creds`` files and server configs.

Pure helpers (no server, no network) that mint what a NATS deployment hands a client:

- :func:`nkey_user` - a user NKey and the ``authorization`` block that admits it
  (plain NKey auth: the server knows the public key, the client proves the seed).
- :class:`Trust` - decentralised (JWT) auth: an operator, one account signed by it
  with JetStream enabled and no limits (plus the system account, without which
  nats-server in operator mode cannot start JetStream), and :meth:`Trust.write_creds` for user
  ``.creds`` files signed by that account (or by an account the server never heard
  of). :meth:`Trust.server_config` is operator mode with the in-memory resolver
  preloaded with the account.

A NATS JWT is ``base64url(header).base64url(claims).base64url(signature)`` without
padding; the header says ``{"typ":"JWT","alg":"ed25519-nkey"}`` and the signature is the
issuer's ed25519 signature over ``header.claims``. The claims carry ``jti`` (a hash of
the other claims), ``iat``, ``iss`` (the signer's public key), ``sub`` (the subject's
public key), ``name`` and a ``nats`` object with ``type`` and ``version: 2``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = -1


@dataclass(frozen=True)
class NKey:
    """An NKey pair, kept as its seed (``S...``) and public key (``U...``/``A...``/``O...``)."""

    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))


def new_nkey(prefix: int) -> NKey:
    """A fresh NKey of the kind ``prefix`` (``nkeys.PREFIX_BYTE_USER``, ...)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    public = nkeys.from_seed(bytearray(seed)).public_key
    return NKey(seed.decode(), public.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_jwt(subject: str, name: str, nats_claims: dict[str, Any], issuer: NKey) -> str:
    """A JWT about ``subject`` (a public key) signed by ``issuer``."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name,
                              "sub": subject}
    claims["jti"] = base64.b32encode(hashlib.sha256(_json(claims)).digest()).decode().rstrip("=")
    claims["nats"] = {**nats_claims, "version": 2}
    signed = f"{_b64(_json(_HEADER))}.{_b64(_json(claims))}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def nkey_user() -> tuple[NKey, str]:
    """A user NKey and the server config text that admits exactly that public key."""
    user = new_nkey(nkeys.PREFIX_BYTE_USER)
    return user, f"authorization {{\n  users = [ {{ nkey: {user.public} }} ]\n}}\n"


def creds_text(user_jwt: str, user_seed: str) -> str:
    """A ``.creds`` file: the user JWT and its seed between the standard markers."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "# Test credentials minted by tests/services/nats_jwt.py; the seed below is secret.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
    )


def _account_claims(*, jetstream: bool) -> dict[str, Any]:
    """An account with no limits; with ``jetstream`` its memory and disk are unlimited too
    (an account whose ``mem_storage`` and ``disk_storage`` are both 0 has no JetStream)."""
    limits: dict[str, Any] = {
        "subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED,
        "imports": _UNLIMITED, "exports": _UNLIMITED, "wildcards": True,
        "conn": _UNLIMITED, "leaf": _UNLIMITED,
    }
    if jetstream:
        limits.update({"mem_storage": _UNLIMITED, "disk_storage": _UNLIMITED,
                       "streams": _UNLIMITED, "consumer": _UNLIMITED})
    return {"type": "account", "limits": limits,
            "default_permissions": {"pub": {}, "sub": {}}}


def _user_claims() -> dict[str, Any]:
    return {"type": "user", "pub": {}, "sub": {},
            "subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED}


@dataclass
class Trust:
    """An operator and one JetStream-enabled account it signed, the server trusting both."""

    operator: NKey = field(default_factory=lambda: new_nkey(nkeys.PREFIX_BYTE_OPERATOR))
    account: NKey = field(default_factory=lambda: new_nkey(nkeys.PREFIX_BYTE_ACCOUNT))
    system: NKey = field(default_factory=lambda: new_nkey(nkeys.PREFIX_BYTE_ACCOUNT))

    @property
    def operator_jwt(self) -> str:
        return encode_jwt(self.operator.public, "test-operator",
                          {"type": "operator", "system_account": self.system.public},
                          self.operator)

    @property
    def account_jwt(self) -> str:
        return encode_jwt(self.account.public, "cdc", _account_claims(jetstream=True),
                          self.operator)

    @property
    def system_jwt(self) -> str:
        return encode_jwt(self.system.public, "SYS", _account_claims(jetstream=False),
                          self.operator)

    def server_config(self) -> str:
        """nats-server config: operator mode, the account preloaded in a MEMORY resolver."""
        return (
            f"operator: {self.operator_jwt}\n"
            f"system_account: {self.system.public}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {self.account.public}: {self.account_jwt}\n"
            f"  {self.system.public}: {self.system_jwt}\n"
            "}\n"
        )

    def write_creds(self, path: Path, account: NKey | None = None) -> Path:
        """A ``.creds`` file for a new user signed by ``account`` (default: the trusted one)."""
        user = new_nkey(nkeys.PREFIX_BYTE_USER)
        user_jwt = encode_jwt(user.public, "cdc-bridge", _user_claims(), account or self.account)
        path.write_text(creds_text(user_jwt, user.seed))
        path.chmod(0o600)
        return path
