"""`clipforge serve [--model MODEL] [--index DIR]`: the HTTP service and its search page.

Binds 127.0.0.1 unless told otherwise; another address needs a bearer token (``--token-file`` or
$CLIPFORGE_TOKEN) or an explicit ``--no-auth``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys

from clipforge.serve.limits import Limits
from clipforge.serve.security import TOKEN_ENV, FetchConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint (default: the model recorded in the index)")
    parser.add_argument("--index", help="index directory from `clipforge index` (enables search and the page)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token-file", help=f"file whose first line is the bearer token (else ${TOKEN_ENV})")
    parser.add_argument("--no-auth", action="store_true", help="allow a non-loopback --host without a token")
    parser.add_argument("--allow-url-fetch", action="store_true",
                        help="let requests name image URLs (public addresses only; never loopback/private)")
    parser.add_argument("--max-body-mb", type=float, default=Limits.max_body_bytes / 2**20)
    parser.add_argument("--max-batch", type=int, default=Limits.max_batch, help="texts/images per request")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="per image, from its header")
    parser.add_argument("--max-concurrency", type=int, default=Limits.max_concurrency,
                        help="requests computing at once")
    parser.add_argument("--max-queue", type=int, default=Limits.max_queue,
                        help="requests waiting; beyond it the service answers 429 at once")
    parser.add_argument("--threads", type=int, help="torch threads per request (default: cores / concurrency)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--print-openapi", action="store_true", help="print the OpenAPI description and exit")


def build_service(args: argparse.Namespace):
    from clipforge.serve.encoder import Encoder
    from clipforge.serve.index import VectorIndex
    from clipforge.serve.security import read_token
    from clipforge.serve.service import ServeConfig, Service

    index = VectorIndex.load(args.index) if args.index else None
    model = args.model or (index.info.get("model") if index else None)
    if not model:
        raise ValueError("give --model, or an --index that records its model")
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_batch=args.max_batch,
                    max_pixels=args.max_pixels, max_concurrency=args.max_concurrency, max_queue=args.max_queue)
    token = read_token(args.token_file)
    config = ServeConfig(limits=limits, token=token, allow_url_fetch=args.allow_url_fetch,
                         fetch=FetchConfig(max_bytes=limits.max_body_bytes))
    return Service(Encoder.load(model, device=args.device), index, config)


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from clipforge.serve.app import create_app
    from clipforge.serve.runner import uvicorn_config

    try:
        service = build_service(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    app = create_app(service)
    if args.print_openapi:
        print(json.dumps(app.openapi(), indent=1))
        return 0
    if service.config.token is None and not _is_loopback(args.host) and not args.no_auth:
        print(f"error: --host {args.host} exposes the service beyond this machine; set a token (--token-file or "
              f"${TOKEN_ENV}) or pass --no-auth", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // service.limits.max_concurrency))
    index = f", index of {len(service.index)}" if service.index else ", no index"
    print(f"clipforge serve: http://{args.host}:{args.port}/ (model {service.encoder.name}{index}; "
          f"auth {'on' if service.config.token else 'off'}; url fetch {'on' if args.allow_url_fetch else 'off'})",
          file=sys.stderr)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, service.limits, log_level="info")).run()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
