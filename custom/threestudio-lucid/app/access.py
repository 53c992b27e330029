"""Who gets in, and which files the page may read.

- :func:`exposure_error`: the app binds 127.0.0.1; any other address needs credentials.
- :class:`Credentials`: one ``USER:PASS`` (from ``--auth`` or the first line of ``--auth-file``),
  checked as HTTP basic auth in constant time.
- :func:`same_origin`: a request that changes something (POST) must come from the app's own page: a
  web page on another site can make the browser send a request to 127.0.0.1, but not with our Origin.
- :func:`resolve_under`: the one place that turns a requested path into a file, and only into a file
  under a given folder (``--outputs``, or the app's own assets). ``..``, absolute paths, backslashes,
  NUL bytes, dot-files and symlinks that lead out of the folder are all refused.
"""
import base64
import binascii
import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import Optional


class AccessError(ValueError):
    """A bad ``--host``/``--auth`` combination or credential file; the message is one line."""


LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the app on this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    @classmethod
    def parse(cls, text: str, source: str) -> "Credentials":
        user, sep, password = text.strip().partition(":")
        if not sep or not user or not password:
            raise AccessError(f"{source} must be USER:PASS with a non-empty user and password")
        return cls(user, password)

    @classmethod
    def from_file(cls, path: str) -> "Credentials":
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
        except OSError as e:
            raise AccessError(f"--auth-file {path!r} cannot be read ({e.strerror}): give a file whose first line is USER:PASS")
        return cls.parse(first, f"the first line of --auth-file {path!r}")

    def check(self, header: Optional[str]) -> Optional[str]:
        """The user name when ``header`` (an ``Authorization`` value) holds these credentials."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        return user if ok_user and ok_password else None


def exposure_error(host: str, credentials: Optional[Credentials]) -> Optional[str]:
    """The one line to print when ``host`` would open the app to other machines without credentials."""
    if is_loopback(host) or credentials is not None:
        return None
    return (f"--host {host} serves the app to other machines: give --auth USER:PASS or --auth-file FILE "
            "(or leave --host at 127.0.0.1)")


def same_origin(origin: Optional[str], referer: Optional[str], host: Optional[str], scheme: str = "http") -> bool:
    """A state-changing request must come from a page of this app: its ``Origin`` (or, without one,
    its ``Referer``) names the host the request was sent to. Requests with neither (curl, scripts)
    pass; browsers always send ``Origin`` on cross-site POSTs."""
    if not host:
        return False
    for value in (origin, referer):
        if value:
            if value == "null":
                return False
            allowed = (f"http://{host}", f"https://{host}")
            return any(value == a or value.startswith(a + "/") for a in allowed)
    return True


def _inside(root: str, requested: str) -> Optional[str]:
    if not requested or "\x00" in requested or "\\" in requested or requested.startswith("/"):
        return None
    parts = requested.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, *parts))
    try:
        if os.path.commonpath([base, path]) != base or path == base:
            return None
    except ValueError:
        return None
    return path


def resolve_under(root: str, requested: str) -> Optional[str]:
    """The real path of ``requested`` (a ``/``-separated path relative to ``root``, already
    percent-decoded once by the server) when it names an existing regular file inside ``root``;
    else None. Refused: empty or absolute paths, ``..``, ``.`` or empty segments, dot-files and
    dot-folders, backslashes and NUL, and anything whose real path (symlinks followed) leaves
    ``root``. A name that still holds ``%`` after decoding is looked up literally, never decoded again."""
    path = _inside(root, requested)
    return path if path is not None and os.path.isfile(path) else None


def resolve_folder_under(root: str, requested: str) -> Optional[str]:
    """As :func:`resolve_under`, for a folder (a run folder named in a URL)."""
    path = _inside(root, requested)
    return path if path is not None and os.path.isdir(path) else None


def relative_inside(root: str, path: str) -> Optional[str]:
    """``path`` relative to ``root`` (``/``-separated) when its real path is inside ``root``, else
    None: how the server names a run folder or file in a URL."""
    base = os.path.realpath(root)
    real = os.path.realpath(path)
    try:
        if os.path.commonpath([base, real]) != base:
            return None
    except ValueError:
        return None
    rel = os.path.relpath(real, base)
    return "" if rel == "." else rel.replace(os.sep, "/")


def host_allowed(host_header: Optional[str], protected: bool) -> bool:
    """Without credentials the app answers only requests addressed to a loopback name: a web page
    whose domain is made to resolve to 127.0.0.1 (DNS rebinding) sends its own name as ``Host``."""
    if protected:
        return True
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return is_loopback(host)
