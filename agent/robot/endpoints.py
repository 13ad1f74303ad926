"""ZeroMQ endpoints: checked before use (one-line `EndpointError`s), and sockets bound or connected to them.

A bad endpoint is refused before any process starts (`validate_endpoint`, `check_bindable`); IPv6 literals get
ZMQ_IPV6 (`allow_ipv6`). Used by the wire (agent/robot/transport.py), the latest-frame subscriber and the
commands that start trainers and captures.
"""

from __future__ import annotations

import socket
from typing import Sequence, Union

import zmq

from agent.core.errors import EndpointError
from agent.robot.curve import TCP_ENDPOINT


def validate_endpoint(endpoint: str, *, bind: bool) -> None:
    """Raise EndpointError (one line) for an endpoint ZeroMQ would reject or could never reach.

    libzmq resolves a connecting socket's host lazily and retries forever, so an unresolvable host
    would otherwise look like a trainer that is merely absent; resolve it here instead.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        if endpoint.split("://", 1)[1]:
            return
        raise EndpointError(f"endpoint {endpoint!r} has an empty path")
    match = TCP_ENDPOINT.match(endpoint)
    if match is None:
        raise EndpointError(f"malformed endpoint {endpoint!r}: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    host, port = match["host"].strip("[]"), match["port"]
    if port == "*":
        if not bind:
            raise EndpointError(f"endpoint {endpoint!r}: a connecting socket needs a port number, not '*'")
        return
    if not 0 < int(port) < 65536:
        raise EndpointError(f"endpoint {endpoint!r}: port {port} is out of range 1-65535")
    if bind or host == "*":
        return
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EndpointError(f"endpoint {endpoint!r}: cannot resolve host {host!r} ({exc.strerror})") from None


def validate_endpoints(endpoints: Union[str, Sequence[str]], *, bind: bool) -> tuple[str, ...]:
    """The endpoints as a tuple, each checked by `validate_endpoint`; one endpoint may be given as a str.

    Raises EndpointError (one line) for an empty list, an endpoint listed twice, or the first bad one.
    """
    listed = (endpoints,) if isinstance(endpoints, str) else tuple(endpoints)
    if not listed:
        raise EndpointError("no endpoint given: name at least one trainer endpoint (tcp://HOST:PORT)")
    for i, endpoint in enumerate(listed):
        if endpoint in listed[:i]:
            raise EndpointError(f"endpoint {endpoint!r} is listed twice: each trainer rank has its own, name it once")
        validate_endpoint(endpoint, bind=bind)
    return listed


def check_bindable(endpoint: str) -> None:
    """EndpointError (one line) unless `endpoint` can be bound now (tried with a throw-away socket and
    released at once): catches a port in use before several processes are started to bind it."""
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    try:
        bind_socket(sock, endpoint)
    finally:
        sock.close(linger=0)


def is_ipv6(endpoint: str) -> bool:
    """True for a tcp endpoint whose host is a bracketed IPv6 address (`tcp://[::1]:5555`, `tcp://[fe80::1%eth0]:*`)."""
    match = TCP_ENDPOINT.match(endpoint)
    return match is not None and match["host"].startswith("[")


def allow_ipv6(sock: zmq.Socket, endpoint: str) -> None:
    """Set ZMQ_IPV6 on `sock` for an IPv6 endpoint, before it binds or connects.

    libzmq resolves addresses as IPv4 only unless the socket has ZMQ_IPV6: binding `tcp://[::1]:P` then
    fails ("No such device") and connecting to it never succeeds, so a sender with ZMQ_IMMEDIATE drops
    every frame without an error. Only IPv6 literals get it: with ZMQ_IPV6 a host name such as
    `localhost` may resolve to ::1 while the peer listens on 127.0.0.1.
    """
    if is_ipv6(endpoint):
        sock.setsockopt(zmq.IPV6, 1)


def bind_socket(sock: zmq.Socket, endpoint: str) -> str:
    """Bind `sock` to a checked `endpoint`; the endpoint it got (a `*` port resolved). EndpointError (one line)."""
    validate_endpoint(endpoint, bind=True)
    allow_ipv6(sock, endpoint)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot bind {endpoint}: {exc.strerror}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_socket(sock: zmq.Socket, endpoint: str) -> None:
    """Connect `sock` to a checked `endpoint`. EndpointError (one line)."""
    validate_endpoint(endpoint, bind=False)
    allow_ipv6(sock, endpoint)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot connect to {endpoint}: {exc.strerror}") from None
