"""``oniwm keys``: CURVE key pairs for ONI security.

``oniwm keys generate --out DIR --name NAME`` writes ``NAME.key`` (public: give it to the peers that must
allow-list you) and ``NAME.key_secret`` (secret, mode 0600: keep it on this machine) and prints the public
key. ``oniwm keys show FILE...`` prints the public key of key files, never a secret.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oni.errors import SecurityError
from oni.security import KeyPair, load_public_keys

log = logging.getLogger("oni.cli.keys")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("keys", help="CURVE key pairs: generate and show")
    keys_sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    generate = keys_sub.add_parser("generate", help="write a new key pair NAME.key / NAME.key_secret")
    generate.add_argument("--out", required=True, metavar="DIR", help="directory for the key files (created 0700)")
    generate.add_argument("--name", required=True, help="file name stem, e.g. the node's name")
    generate.add_argument("--force", action="store_true", help="replace existing key files (peers must re-allow-list)")
    generate.set_defaults(func=run_generate)

    show = keys_sub.add_parser("show", help="print the public key of key files (.key or .key_secret)")
    show.add_argument("files", nargs="+", metavar="FILE")
    show.set_defaults(func=run_show)


def run_generate(args: argparse.Namespace) -> int:
    """Generate and save a key pair; prints the public key on stdout. Exit 1 if the files exist (no --force)."""
    keys = KeyPair.generate()
    try:
        public_path, secret_path = keys.save(args.out, args.name, overwrite=args.force)
    except FileExistsError as exc:
        log.error("%s: use --force to replace (peers that allow-listed the old public key must then be updated)", exc)
        return 1
    except (ValueError, OSError) as exc:
        log.error("cannot write keys: %s", exc)
        return 1
    log.info("wrote %s (public: share it) and %s (secret, 0600: keep it here)", public_path, secret_path)
    print(keys.public.decode())
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print ``PUBLIC_KEY  FILE`` per file (just the key for one file). Exit 1 if any file is not a key."""
    status = 0
    for path in args.files:
        if not Path(path).is_file():
            log.error("%s: no such key file", path)
            status = 1
            continue
        try:
            (public,) = load_public_keys([path])
        except SecurityError as exc:
            log.error("%s", exc)
            status = 1
            continue
        print(public.decode() if len(args.files) == 1 else f"{public.decode()}  {path}")
    return status
