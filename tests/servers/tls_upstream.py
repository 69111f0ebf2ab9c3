"""The test upstream (tests/servers/upstream.py) served over TLS.

python -m tests.servers.tls_upstream --port 9443 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse
import ssl

from aiohttp import web

from tests.servers.upstream import make_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--name", default="tls")
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    web.run_app(
        make_app(args.name),
        host="127.0.0.1",
        port=args.port,
        ssl_context=context,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
