"""``ka2er serve``: the server's command line (imports the web stack only when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_serve(args: argparse.Namespace) -> int:
    try:
        from ..server.app import Limits
        from ..server.serve import serve
    except ImportError as err:
        from ..errors import Ka2erError

        raise Ka2erError(f"the server needs its extra packages ({err.name} is missing): "
                         "pip install 'ka2er-segment[server]'") from None
    serve(args.bundle, args.host, args.port, args.token_file, args.insecure_local,
          args.ssl_certfile, args.ssl_keyfile, args.device, Limits.from_options(vars(args)),
          args.forwarded_allow_ips)
    return 0


def add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve a bundle to Slicer modules over HTTP(S)",
        description="Serve interactive segmentation sessions to the KA2ER Segment Slicer module. "
                    "Every request but /health needs the bearer token in --token-file. Every limit "
                    "must be a positive number.")
    serve.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: shipped)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 for the network)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token-file", type=Path, default=None,
                       help="file holding the bearer token clients must send (required)")
    serve.add_argument("--insecure-local", action="store_true",
                       help="no token, allowed only on a loopback address (for trying it out)")
    serve.add_argument("--ssl-certfile", type=Path, default=None, help="TLS certificate (PEM)")
    serve.add_argument("--ssl-keyfile", type=Path, default=None, help="TLS private key (PEM)")
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]: one server per GPU")
    serve.add_argument("--max-sessions", type=int, default=16,
                       help="sessions kept; the least recently used are evicted past it")
    serve.add_argument("--max-memory-gb", type=float, default=8.0,
                       help="memory of all sessions together (images, masks, undo copies, "
                            "embeddings); a session that alone would pass it gets 507")
    serve.add_argument("--max-targets", type=int, default=64,
                       help="targets (segments) per session; a new one past it gets 409")
    serve.add_argument("--idle-minutes", type=float, default=30.0, help="a session expires after this")
    serve.add_argument("--max-upload-mb", type=int, default=1024, help="largest image upload")
    serve.add_argument("--max-voxels", type=int, default=512 * 512 * 1024, help="largest image")
    serve.add_argument("--rate", type=float, default=50.0, help="requests per second per client")
    serve.add_argument("--read-timeout", type=float, default=20.0,
                       help="seconds a client has to send a request's headers, and the longest "
                            "pause in its body; then 408 and the connection is closed")
    serve.add_argument("--keep-alive", type=float, default=5.0,
                       help="seconds an idle kept-alive connection stays open")
    serve.add_argument("--forwarded-allow-ips", default="",
                       help="comma-separated addresses or networks of proxies whose X-Forwarded-For "
                            "names the client (default: none; the peer address is the client)")
    serve.set_defaults(run=run_serve)
