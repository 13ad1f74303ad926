"""`byol-agent keys`: make a CURVE key pair for the wire (agent/robot/curve.py explains who holds which key).

Writes OUT/NAME.key (the public key: copy it to the peers that must admit or reach this process)
and OUT/NAME.key_secret (stays on this machine, mode 0600). Never overwrites existing keys.
"""

from __future__ import annotations

import argparse
import socket


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for NAME.key and NAME.key_secret")
    parser.add_argument("--name", default=None, help="key name, e.g. trainer or robot7 (default: this host's name)")


def main(args: argparse.Namespace) -> int:
    from agent.robot.curve import create_keys

    name = args.name or socket.gethostname().split(".")[0] or "byol-agent"
    public, secret = create_keys(args.out, name)
    print(
        f"public key: {public}  (give it to peers: a trainer's wire.authorized_keys dir, or a capture's "
        "wire.trainer_key)"
    )
    print(f"secret key: {secret}  (this process's wire.secret_key; keep it here, mode 0600)")
    return 0
