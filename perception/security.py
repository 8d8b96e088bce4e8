"""ZeroMQ CURVE for endpoints that leave the host: key folders, servers, clients, and the rule
that plain tcp is refused unless a launch file or a node says `insecure: true`.

A keys folder (`perception keys DIR`) holds one key pair per host (a launch without hosts is one
host, `local`):

    DIR/            0700
      public/       NAME.key         every member's public key: the clients a publisher accepts,
                                     and the key a subscriber expects from a publisher on host NAME
      secret/       NAME.key_secret  0600, this host's own key pair (copy it to NAME only)

Files are in pyzmq's certificate format (zmq.auth.load_certificate reads them). A node whose
publisher is on tcp is a CURVE server: every connection goes through a ZAP handler in the node
(zmq.auth's ThreadAuthenticator) that accepts only keys found in public/, and ZAP_ENFORCE_DOMAIN
makes a connection fail, not pass, if that handler is missing. A subscriber is a CURVE client with
its host's key pair and checks each publisher's public key, so a rogue publisher at a known
endpoint cannot inject anything. ipc:// stays plain: the run directory's 0700 already keeps other
users out.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

PUBLIC_DIR = "public"
SECRET_DIR = "secret"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
ZAP_DOMAIN = "perception"
LOCAL_KEY = "local"  # the key of the one host of a launch file without `hosts:`
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SecurityError(ValueError):
    """A key that is missing, unreadable or open to others, or a network endpoint without CURVE
    that nobody marked insecure. The message is one line naming the culprit."""


def is_network(endpoint: str) -> bool:
    """True for endpoints other hosts can reach (tcp://, ws://, ...): ipc and inproc stay on this host."""
    return endpoint.split("://", 1)[0] not in ("ipc", "inproc")


def require_secure(who: str, endpoint: str, curve: bool, insecure: bool) -> None:
    """Refuse a network endpoint that would run without CURVE unless `insecure` says so."""
    if is_network(endpoint) and not curve and not insecure:
        raise SecurityError(f"{who}: {endpoint} without CURVE keys: anyone on the network could read or forge "
                            f"its messages; give a keys folder (perception keys DIR) or set insecure: true")


def check_key_name(name: str) -> str:
    # A host's key name is also the clock name its messages carry: at most 64 characters (messages.py).
    if not _NAME.fullmatch(name) or len(name) > 64:
        raise SecurityError(f"key name {name[:80]!r} may hold only letters, digits, '.', '-' and '_' (at most 64)")
    return name


# -- the keys folder ---------------------------------------------------------------------------
def create_keys(keys_dir: Path, names: Sequence[str]) -> list[Path]:
    """Create a key pair per name in `keys_dir` (layout in the module docstring); returns the files
    written. Refuses, before writing anything, to replace a key that exists: other hosts may already
    hold its public half."""
    keys_dir = Path(keys_dir)
    names = [check_key_name(n) for n in names]
    if not names or len(set(names)) != len(names):
        raise SecurityError(f"give distinct key names, got {', '.join(names) or 'none'}")
    public, secret = keys_dir / PUBLIC_DIR, keys_dir / SECRET_DIR
    existing = [p for n in names for p in (public / f"{n}{PUBLIC_SUFFIX}", secret / f"{n}{SECRET_SUFFIX}") if p.exists()]
    if existing:
        raise SecurityError(f"{existing[0]} exists: not replacing a key other hosts may hold (remove it first)")
    for directory in (keys_dir, public, secret):
        directory.mkdir(mode=0o700, exist_ok=True)
        _check_owned(directory)
        directory.chmod(0o700)
    written = []
    for name in names:
        public_key, secret_key = zmq.curve_keypair()
        written.append(_write_key(secret / f"{name}{SECRET_SUFFIX}", name, public_key, secret_key))
        written.append(_write_key(public / f"{name}{PUBLIC_SUFFIX}", name, public_key))
    return written


def _write_key(path: Path, name: str, public_key: bytes, secret_key: bytes | None = None) -> Path:
    # O_EXCL: never replace a key, even one created between the check above and now.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret_key else 0o644)
    lines = [f"#   ZeroMQ CURVE {'secret' if secret_key else 'public'} key of {name!r} (perception keys)",
             "#   " + ("Copy only to host " + name + "; keep it 0600." if secret_key else "Copy to every host."),
             "metadata", "curve", f'    public-key = "{public_key.decode()}"']
    if secret_key:
        lines.append(f'    secret-key = "{secret_key.decode()}"')
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def _check_owned(path: Path) -> None:
    if path.stat().st_uid != os.geteuid():
        raise SecurityError(f"{path} belongs to uid {path.stat().st_uid}, not this user ({os.geteuid()})")


@dataclass(frozen=True)
class Identity:
    """A host's key pair, and the folder of public keys of every member of the launch."""

    name: str
    public_key: bytes  # z85
    secret_key: bytes
    public_dir: Path

    def server_key(self, name: str) -> bytes:
        """The public key that the publishers of host `name` must prove they hold."""
        return read_public_key(self.public_dir.parent, name)


def load_identity(keys_dir: Path, name: str) -> Identity:
    """This host's key pair from `keys_dir`; refuses a secret key or folder that others can read."""
    keys_dir, name = Path(keys_dir), check_key_name(name)
    path = keys_dir / SECRET_DIR / f"{name}{SECRET_SUFFIX}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SecurityError(f"{path}: no secret key for {name!r} (perception keys {keys_dir} --hosts {name}, "
                            f"or copy it from where the keys were made)") from None
    folder = (keys_dir / SECRET_DIR).stat()
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077 or stat.S_IMODE(folder.st_mode) & 0o077:
        raise SecurityError(f"{path}: a secret key must belong to this user and be private "
                            f"(chmod 700 {path.parent}; chmod 600 {path})")
    public_key, secret_key = _load(path)
    if secret_key is None:
        raise SecurityError(f"{path}: holds no secret key")
    return Identity(name, public_key, secret_key, keys_dir / PUBLIC_DIR)


def read_public_key(keys_dir: Path, name: str) -> bytes:
    path = Path(keys_dir) / PUBLIC_DIR / f"{check_key_name(name)}{PUBLIC_SUFFIX}"
    if not path.exists():
        raise SecurityError(f"{path}: no public key for {name!r} (copy it from where the keys were made)")
    return _load(path)[0]


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: not a CURVE key file ({exc})") from None
    if len(public_key) != 40 or (secret_key is not None and len(secret_key) != 40):
        raise SecurityError(f"{path}: not a CURVE key file (keys are 40 z85 characters)")
    return public_key, secret_key


# -- sockets ----------------------------------------------------------------------------------
class CurveServer:
    """A publisher's side of CURVE: the ZAP handler of its context, and the socket options.

    The handler (a thread of this process) only answers ZAP requests, which come once per
    connection, so it never touches a message's path."""

    def __init__(self, context: zmq.Context, identity: Identity) -> None:
        self.identity = identity
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger("perception.security.zap"))
        self._authenticator.start()
        # configure_curve logs (rather than raises) a folder it cannot read: check it ourselves.
        if not identity.public_dir.is_dir():
            self.stop()
            raise SecurityError(f"{identity.public_dir}: no folder of public keys (perception keys DIR)")
        self._authenticator.configure_curve(domain=ZAP_DOMAIN, location=str(identity.public_dir))
        self.authorized = len(zmq.auth.load_certificates(identity.public_dir))

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server; before it binds, since the mechanism is fixed then."""
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.identity.secret_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.identity.public_key)
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler: refuse rather than let anyone in

    def stop(self) -> None:
        self._authenticator.stop()


@dataclass(frozen=True)
class CurveClient:
    """A subscriber's side of CURVE: this host's key pair and, per endpoint, the publisher's key."""

    identity: Identity
    server_keys: Mapping[str, bytes] = field(default_factory=dict)  # endpoint URL -> publisher's public key

    def apply(self, socket: zmq.Socket, endpoint: str) -> bool:
        """Set up CURVE for the next connect to `endpoint` (ZeroMQ copies the options at connect,
        so each endpoint keeps its own server key); False for an endpoint that stays plain."""
        server_key = self.server_keys.get(endpoint)
        if server_key is None:
            return False
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.identity.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.identity.secret_key)
        socket.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        return True


def plain_first(endpoints: Sequence[str], curve: CurveClient | None) -> list[str]:
    """Endpoints in connect order: plain ones first, because once a socket has CURVE options set,
    every later connect uses CURVE (libzmq cannot set the mechanism back to NULL)."""
    keyed = set(curve.server_keys) if curve is not None else set()
    return [e for e in endpoints if e not in keyed] + [e for e in endpoints if e in keyed]
