"""A real FTP server (pyftpdlib) on 127.0.0.1, for the FTP file API tests.

python -m tests.servers.ftp --port 2121 --root DIR --user kairos --password secret \
    [--readonly-user reader --readonly-password secret2] [--tls-cert server.pem --tls-key server.key]

- ``--user`` has every permission (``elradfmwMT``: list, retrieve, store, append, delete, rename,
  mkdir, chmod, mtime), ``--readonly-user`` only ``elr`` (a store is refused with 550). Anonymous
  login is off.
- With ``--tls-cert``/``--tls-key``: explicit FTPS (``AUTH TLS`` on the plain port), TLS required on
  the control channel before USER/PASS and on the data channel (``PROT P``) before PASV/EPSV.
  Needs pyOpenSSL (``pyftpdlib[ssl]``).
- Passive data ports are ephemeral (``passive_ports=None``: the kernel picks one per transfer) and
  are advertised as 127.0.0.1 (no masquerade address).
- A failed login is answered 530 after 0.1 s (pyftpdlib's default delay is 3 s).
- Logs to stderr at warning level.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.log import config_logging
from pyftpdlib.servers import FTPServer

FULL_PERMISSIONS = "elradfmwMT"
READ_ONLY_PERMISSIONS = "elr"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True, help="the directory every user sees as /")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--readonly-user")
    parser.add_argument("--readonly-password")
    parser.add_argument("--tls-cert", help="PEM certificate chain: turns on explicit FTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args()
    if (args.readonly_user is None) != (args.readonly_password is None):
        parser.error("--readonly-user and --readonly-password go together")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")

    config_logging(level=logging.WARNING)  # a StreamHandler on stderr

    authorizer = DummyAuthorizer()  # no add_anonymous(): anonymous login is refused
    authorizer.add_user(args.user, args.password, args.root, perm=FULL_PERMISSIONS)
    if args.readonly_user is not None:
        authorizer.add_user(args.readonly_user, args.readonly_password, args.root, perm=READ_ONLY_PERMISSIONS)

    handler: Any
    if args.tls_cert is not None:
        # Imported here: pyftpdlib.handlers only defines TLS_FTPHandler when pyOpenSSL is importable.
        from pyftpdlib.handlers import TLS_FTPHandler

        handler = TLS_FTPHandler
        handler.certfile = args.tls_cert
        handler.keyfile = args.tls_key
        handler.tls_control_required = True
        handler.tls_data_required = True
    else:
        handler = FTPHandler
    # Class attributes, as pyftpdlib is configured (this process runs one server).
    handler.authorizer = authorizer
    handler.passive_ports = None  # ephemeral ports, one per transfer
    handler.masquerade_address = None  # PASV advertises the address the control connection came in on
    handler.permit_foreign_addresses = False
    handler.banner = "Kairos test FTP server ready."
    handler.auth_failed_timeout = 0.1  # the 530 for a bad login after 0.1 s (pyftpdlib's default: 3 s)

    server = FTPServer(("127.0.0.1", args.port), handler)
    server.serve_forever(handle_exit=True)  # SIGTERM's default action ends the process


if __name__ == "__main__":
    main()
