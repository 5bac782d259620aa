"""The ``ka2er serve`` command line (imports the web stack only when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_serve(args: argparse.Namespace) -> int:
    try:
        from .app import Limits
        from .serve import serve
    except ImportError as err:
        from ..errors import Ka2erError

        raise Ka2erError(f"the server needs its extra packages ({err.name} is missing): "
                         "pip install 'ka2er-segment[server]'") from None
    limits = Limits(max_sessions=args.max_sessions, max_memory_bytes=int(args.max_memory_gb * 2**30),
                    idle_seconds=args.idle_minutes * 60, max_upload_bytes=args.max_upload_mb << 20,
                    max_voxels=args.max_voxels, rate_per_second=args.rate)
    serve(args.bundle, args.host, args.port, args.token_file, args.insecure_local,
          args.ssl_certfile, args.ssl_keyfile, args.device, limits)
    return 0


def add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve a bundle to Slicer modules over HTTP(S)",
        description="Serve interactive segmentation sessions to the KA2ER Segment Slicer module. "
                    "Every request but /health needs the bearer token in --token-file.")
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
                       help="memory of all sessions together (images, masks, embeddings)")
    serve.add_argument("--idle-minutes", type=float, default=30.0, help="a session expires after this")
    serve.add_argument("--max-upload-mb", type=int, default=1024, help="largest image upload")
    serve.add_argument("--max-voxels", type=int, default=512 * 512 * 1024, help="largest image")
    serve.add_argument("--rate", type=float, default=50.0, help="requests per second per client")
    serve.set_defaults(run=run_serve)
