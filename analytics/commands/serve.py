"""`python -m analytics serve`: the dashboard on one port, from one or several processes (analytics/serve.py).

Exit codes: 0 stopped by the operator, 1 a dashboard process exited, 2 bad arguments.
"""
from __future__ import annotations

import os
import sys

from .. import serve


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8501")), help="default $PORT or 8501")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default this machine only: put a TLS proxy in front for others, docs/security.md)")
    p.add_argument("--processes", type=int, default=None,
                   help=f"dashboard processes behind one port (default one per core, at most 4: {serve.default_processes()} here)")


def run(args) -> int:
    if args.processes is not None and args.processes < 1:
        print("serve: --processes must be 1 or more", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"serve: --port must be 1-65535, got {args.port}", file=sys.stderr)
        return 2
    if args.db:
        os.environ["OUTCOMES_DB"] = str(args.db)
    return serve.serve(args.port, args.address, args.processes)
