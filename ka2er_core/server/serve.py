"""``ka2er serve``: start the server, refusing unsafe configurations."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from pathlib import Path
from typing import Optional

from ..errors import Ka2erError
from .app import Limits, create_app

MIN_TOKEN_LENGTH = 16


class ServerConfigError(Ka2erError):
    """The server would start in an unsafe or impossible configuration."""


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
        token = path.read_text().strip()
    except OSError as err:
        raise ServerConfigError(f"cannot read the token file ({err.strerror})", path=path,
                                field="--token-file") from None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ServerConfigError(f"the token must be one word of at least {MIN_TOKEN_LENGTH} "
                                "characters (e.g. python -c \"import secrets; "
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


def serve(bundle_path: Optional[Path], host: str, port: int, token_file: Optional[Path],
          insecure_local: bool = False, certfile: Optional[Path] = None,
          keyfile: Optional[Path] = None, device: str = "auto", limits: Limits = Limits()) -> None:
    """Load the bundle and serve until interrupted."""
    import uvicorn

    from ..bundle import load_bundle

    token = check_config(host, token_file, insecure_local, certfile, keyfile)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(load_bundle(bundle_path), token, limits, device)
    uvicorn.run(app, host=host, port=port, log_level="info", workers=1,
                ssl_certfile=None if certfile is None else str(certfile),
                ssl_keyfile=None if keyfile is None else str(keyfile))


class BackgroundServer:
    """``app`` served by uvicorn on a free port of ``host``, in a daemon thread (tests, benchmarks,
    a server inside another program). ``url`` is where it listens; :meth:`stop` ends it."""

    def __init__(self, app, host: str = "127.0.0.1", start_timeout: float = 20.0, **config):
        import socket
        import threading
        import time

        import uvicorn

        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
        # every response on a kept-alive connection waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((host, 0))
        self.host, self.port = host, sock.getsockname()[1]
        self.secure = "ssl_certfile" in config
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
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
