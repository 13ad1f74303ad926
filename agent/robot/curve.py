"""Who may talk to our sockets: ZeroMQ CURVE keys with a ZAP handler (pyzmq's `zmq.auth`).

CURVE (RFC 26, CurveZMQ) encrypts a connection and proves each side holds a secret key; the ZAP
handler (RFC 27) that `zmq.auth.thread.ThreadAuthenticator` runs decides which client public keys a
binding socket admits. Roles on our wire:

    socket                      side     its own key      checks the peer with
    trainer PULL (binds)        server   wire.secret_key  wire.authorized_keys (captures' public keys)
    capture PUSH (connects)     client   wire.secret_key  wire.trainer_key (the trainer's public key)
    capture PUB (binds)         server   wire.secret_key  wire.authorized_keys (subscribers' public keys)
    zmq+tcp:// source SUB       client   wire.secret_key  wire.publisher_key (the capture's public key)

Key files are the ones `byol-agent keys` writes (`zmq.auth.create_certificates`): `NAME.key`
holds a public key, `NAME.key_secret` the pair. Loopback and ipc:// endpoints need no keys (the
README's commands run key-free); any other address without keys is refused unless
`wire.insecure: true`, which warns at every start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from agent.core.backoff import worth_logging
from agent.core.errors import ConfigError, EndpointError

if TYPE_CHECKING:
    from agent.core.config import WireConfig

log = logging.getLogger(__name__)

# tcp://HOST:PORT (HOST a name, an IPv4 address or a bracketed IPv6 one; PORT a number or '*'):
# the one parser of tcp endpoints, shared with agent/robot/endpoints.validate_endpoint.
TCP_ENDPOINT = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\*|\d+)$")
# Handshake failures a server socket reports: no/foreign mechanism (a sender without keys), or ZAP said no.
REFUSED_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def is_loopback(endpoint: str) -> bool:
    """True when `endpoint` cannot be reached from another machine: ipc://, inproc://, or a loopback tcp host.

    `tcp://*:PORT` and `tcp://0.0.0.0:PORT` bind every interface, so they are not loopback.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    match = TCP_ENDPOINT.match(endpoint)
    if match is None:
        return False
    host = match["host"].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # any other host name: libzmq re-resolves it at each reconnect, so it may not stay local
        return False


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, z85-encoded (40 bytes each), as zmq.auth reads it from `NAME.key_secret`."""

    public: bytes
    secret: bytes = b""


def read_public_key(path: str | Path, what: str) -> bytes:
    """The public key in a `NAME.key` (or `NAME.key_secret`) file; ConfigError (one line) if unusable."""
    return _load(path, what).public


def read_key_pair(path: str | Path, what: str) -> KeyPair:
    """The key pair in a `NAME.key_secret` file; ConfigError (one line) if it lacks the secret half."""
    pair = _load(path, what)
    if not pair.secret:
        raise ConfigError(f"{what} {str(path)!r} holds no secret key (use the NAME.key_secret file)")
    return pair


def _load(path: str | Path, what: str) -> KeyPair:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} is not a file; make keys with `byol-agent keys --out DIR`")
    try:
        public, secret = _read_keys(path)
    except ValueError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not a CURVE key file ({exc})") from None
    return KeyPair(public=public, secret=secret or b"")


def _read_keys(path: Path) -> tuple[bytes, Optional[bytes]]:
    """(public, secret or None) from a zmq.auth certificate file; ValueError for anything unusable.

    zmq.auth.load_certificate raises IndexError, KeyError, ... on half-written files and accepts
    keys that are not valid z85, which only fail later when set on a socket: checked here.
    """
    try:
        public, secret = zmq.auth.load_certificate(path)
    except Exception as exc:  # a damaged file raises many types; none of them may escape as a traceback
        raise ValueError(f"{type(exc).__name__}: {str(exc)[:100]}") from None
    for key in (public, secret):
        if key is None:
            continue
        try:
            if len(z85.decode(key)) != 32:
                raise ValueError
        except Exception:
            raise ValueError("a key is not a 40-character z85 CURVE key") from None
    if public is None:
        raise ValueError("no public key")
    return public, secret


def create_keys(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair as OUT/NAME.key (public, share it) and OUT/NAME.key_secret (mode 0600).

    Raises ConfigError for a bad name or when either file exists (keys are never overwritten).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' or '-'")
    out = Path(out_dir).expanduser()
    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} already exists; keys are never overwritten (pick another --name or --out)")
    previous_umask = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        out.mkdir(parents=True, exist_ok=True)
        made_public, made_secret = zmq.auth.create_certificates(out, name)
        os.chmod(made_public, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write keys in {out}: {exc.strerror}") from None
    finally:
        os.umask(previous_umask)
    return Path(made_public), Path(made_secret)


class _AuthorizedKeys:
    """ZAP credentials provider: admits the public keys in a directory (re-read when it changes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.refused = 0
        self._lock = threading.Lock()
        self._stamp: Optional[tuple] = None
        self._keys: frozenset[bytes] = frozenset()
        self._reload()
        if not self._keys:
            raise ConfigError(f"wire.authorized_keys {str(directory)!r} holds no public key files (*.key)")

    def _reload(self) -> None:
        try:
            files = sorted(self.directory.glob("*.key"))
            stamp = tuple((p.name, p.stat().st_mtime_ns) for p in files)
        except OSError:
            return  # keep the keys we have
        if stamp == self._stamp:
            return
        keys = set()
        for path in files:
            try:
                public, _ = _read_keys(path)
            except ValueError as exc:
                log.warning("ignoring public key file %s: %s", path, exc)
                continue
            keys.add(public)
        self._keys, self._stamp = frozenset(keys), stamp

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP decision for one connecting client: runs on the authenticator's thread, so it never raises."""
        with self._lock:
            try:
                self._reload()
            except Exception:  # keep the last good key set: a dead ZAP thread would hang every handshake
                log.exception("could not re-read %s; keeping the previous key set", self.directory)
            allowed = key in self._keys
            if not allowed:
                self.refused += 1
                if worth_logging(self.refused):
                    log.warning(
                        "refused %d connection(s) with an unknown CURVE key; latest %s", self.refused, key.decode()
                    )
        return allowed


@dataclass(frozen=True)
class WireSecurity:
    """What a process applies to its sockets: its key pair, the servers' public keys, whom it admits."""

    pair: Optional[KeyPair] = None
    trainer_key: Optional[bytes] = None
    publisher_key: Optional[bytes] = None
    authorized_dir: Optional[Path] = None
    insecure: bool = False

    @classmethod
    def from_config(cls, wire: "WireConfig") -> "WireSecurity":
        """Load the key files named in the wire section; ConfigError (one line) for a missing or bad file."""
        pair = read_key_pair(wire.secret_key, "wire.secret_key") if wire.secret_key else None
        authorized = Path(wire.authorized_keys).expanduser() if wire.authorized_keys else None
        if authorized is not None and not authorized.is_dir():
            raise ConfigError(f"wire.authorized_keys {str(authorized)!r} is not a directory of public keys")
        return cls(
            pair=pair,
            trainer_key=read_public_key(wire.trainer_key, "wire.trainer_key") if wire.trainer_key else None,
            publisher_key=read_public_key(wire.publisher_key, "wire.publisher_key") if wire.publisher_key else None,
            authorized_dir=authorized,
            insecure=wire.insecure,
        )

    def serve(self, ctx: zmq.Context, sock: zmq.Socket, endpoint: str) -> Optional[ThreadAuthenticator]:
        """Make `sock` (about to bind `endpoint`) a CURVE server admitting the authorised keys.

        Returns the running authenticator (stop it when the context closes), or None when the
        socket stays plain: loopback without keys, or `insecure`. Raises EndpointError for a
        non-loopback bind without keys, ConfigError for an unusable key directory.
        """
        if self.pair is None or self.authorized_dir is None:
            self._plain(endpoint, "bind", "wire.secret_key and wire.authorized_keys")
            return None
        keys = _AuthorizedKeys(self.authorized_dir)
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("agent.robot.curve.zap"))
        auth.start()
        auth.configure_curve_callback("*", credentials_provider=keys)
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.curve_server = True
        return auth

    def connect_to(self, sock: zmq.Socket, endpoint: str, server_key: Optional[bytes], key_name: str) -> None:
        """Make `sock` (about to connect to `endpoint`) a CURVE client of the server holding `server_key`.

        Raises EndpointError for a non-loopback connect without keys (unless `insecure`).
        """
        if self.pair is None or server_key is None:
            self._plain(endpoint, "connect to", f"wire.secret_key and {key_name}")
            return
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.curve_serverkey = server_key

    def _plain(self, endpoint: str, verb: str, needed: str) -> None:
        if is_loopback(endpoint):
            return
        if not self.insecure:
            raise EndpointError(
                f"refusing to {verb} {endpoint} without CURVE keys (it is reachable from other machines): "
                f"set {needed} (make keys with `byol-agent keys --out DIR`), use a loopback address, "
                "or set wire.insecure=true"
            )
        log.warning(
            "wire.insecure: %s %s unauthenticated and unencrypted; anyone who reaches it can send frames",
            verb,
            endpoint,
        )
