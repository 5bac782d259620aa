"""``ka2er serve``: start the server, refusing unsafe configurations."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from pathlib import Path
from typing import Optional

from .app import Limits, ServerConfigError, create_app

MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in ``path`` (one line, >= 16 characters); warns when others may read the file."""
    try:
        token = path.read_bytes().decode("ascii").strip()
    except OSError as err:
        raise ServerConfigError(f"cannot read the token file ({err.strerror})", path=path,
                                field="--token-file") from None
    except UnicodeDecodeError:
        token = ""  # binary: refused below like any other unusable token
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or any(c.isspace() for c in token):
        raise ServerConfigError(f"the token must be one word of at least {MIN_TOKEN_LENGTH} printable "
                                "ASCII characters (e.g. python -c \"import secrets; "
                                "print(secrets.token_urlsafe(32))\")", path=path, field="--token-file")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logging.getLogger("ka2er.server").warning("%s is readable by other users; chmod 600 it", path)
    return token


def check_config(host: str, token_file: Optional[Path], insecure_local: bool,
                 certfile: Optional[Path], keyfile: Optional[Path]) -> Optional[str]:
    """The token to require (None only for ``--insecure-local`` on a loopback address)."""
    if (certfile is None) != (keyfile is None):
        raise ServerConfigError("TLS needs both --ssl-certfile and --ssl-keyfile", field="--ssl-keyfile")
    for path in (certfile, keyfile):
        if path is not None and not path.is_file():
            raise ServerConfigError("no such file", path=path)
    if token_file is not None:
        return read_token(token_file)
    if not insecure_local:
        raise ServerConfigError("refusing to start without a token: give --token-file (or, on a "
                                "loopback address only, --insecure-local)", field="--token-file")
    if not is_loopback(host):
        raise ServerConfigError(f"--insecure-local only binds a loopback address, not {host!r}",
                                field="--host")
    return None


def check_proxies(forwarded_allow_ips: str) -> str:
    """``forwarded_allow_ips`` if every comma-separated item is an IP address or network."""
    for item in filter(None, (part.strip() for part in forwarded_allow_ips.split(","))):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ServerConfigError(f"{item!r} is not an IP address or network",
                                    field="--forwarded-allow-ips") from None
    return forwarded_allow_ips


def serve(bundle_path: Optional[Path], host: str, port: int, token_file: Optional[Path],
          insecure_local: bool = False, certfile: Optional[Path] = None,
          keyfile: Optional[Path] = None, device: str = "auto", limits: Limits = Limits(),
          forwarded_allow_ips: str = "") -> None:
    """Load the bundle and serve until interrupted. ``forwarded_allow_ips``: the proxies whose
    ``X-Forwarded-For`` is believed (comma-separated addresses or networks; empty: none)."""
    import uvicorn

    from ..bundle import load_bundle
    from .connection import uvicorn_config

    token = check_config(host, token_file, insecure_local, certfile, keyfile)
    check_proxies(forwarded_allow_ips)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(load_bundle(bundle_path), token, limits, device)
    server = uvicorn.Server(uvicorn_config(
        app, limits, forwarded_allow_ips, host=host, port=port, log_level="info",
        ssl_certfile=None if certfile is None else str(certfile),
        ssl_keyfile=None if keyfile is None else str(keyfile)))
    server.run()
    if not server.started:
        raise ServerConfigError(f"could not serve on {host}:{port} (the log above says why)",
                                field="--port")


class BackgroundServer:
    """``app`` served by uvicorn on a free port of ``host``, in a daemon thread (tests, benchmarks,
    a server inside another program), configured as ``ka2er serve`` configures it from the app's
    limits. ``url`` is where it listens; :meth:`stop` ends it."""

    def __init__(self, app, host: str = "127.0.0.1", start_timeout: float = 20.0,
                 forwarded_allow_ips: str = "", **config):
        import socket
        import threading
        import time

        import uvicorn

        from .connection import uvicorn_config

        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
        # every response on a kept-alive connection waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((host, 0))
        self.host, self.port = host, sock.getsockname()[1]
        self.secure = "ssl_certfile" in config
        options = {"log_level": "warning", **config}
        self.server = uvicorn.Server(uvicorn_config(app, app.state.limits,
                                                    check_proxies(forwarded_allow_ips), **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on {host}:{self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
