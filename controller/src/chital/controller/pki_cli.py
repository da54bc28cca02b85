"""``chital-controller pki``: create the fleet CA and issue the bundles of the controller, the agents
and the users (docs/pki.md).

Every command works on one PKI directory: ``--dir``, else ``$CHITAL_PKI_DIR``, else ``pki`` in the
controller's state directory. Each ``issue-*`` command replaces the bundle it names (rotation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from chital.controller.server import default_state_dir
from chital.errdefs import InvalidArgument
from chital.security.pki import PKI, ROLES, BundleInfo

__all__ = ["add_parser", "default_pki_dir", "run"]

# A certificate that expires sooner than this is flagged by `show`.
EXPIRY_WARNING = dt.timedelta(days=30)


def default_pki_dir() -> str:
    """``$CHITAL_PKI_DIR``, else ``<state dir>/pki``."""
    return os.environ.get("CHITAL_PKI_DIR") or os.path.join(default_state_dir(), "pki")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``pki`` command group to the parser's sub-commands (``add_subparsers()``' result)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=default_pki_dir(),
        help="the PKI directory (env CHITAL_PKI_DIR, default: <state dir>/pki)",
    )
    days = argparse.ArgumentParser(add_help=False)
    days.add_argument("--days", type=_positive_int, default=365, help="validity in days (default: 365)")

    pki: argparse.ArgumentParser = subparsers.add_parser(
        "pki", help="the fleet CA and the certificates of the controller, agents, users"
    )
    sub = pki.add_subparsers(dest="pki_command", required=True)

    init = sub.add_parser("init", parents=[common], help="create the CA (refuses to overwrite one)")
    init.add_argument("--name", default="chital fleet CA", help="the CA's common name")
    init.add_argument("--days", type=_positive_int, default=3650, help="validity in days (default: 3650)")

    ctl = sub.add_parser(
        "issue-controller", parents=[common, days], help="issue <dir>/controller: the controller's bundle"
    )
    ctl.add_argument("--name", default="controller", help="common name (default: controller)")
    ctl.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="IP address or DNS name clients dial (repeatable; default: 127.0.0.1 and localhost)",
    )

    agent = sub.add_parser(
        "issue-agent", parents=[common, days], help="issue <dir>/agents/<host>: an agent host's bundle"
    )
    agent.add_argument("host", help="the IP address or DNS name the controller dials (as registered)")
    agent.add_argument("--san", action="append", default=[], metavar="HOST", help="another name (repeatable)")

    user = sub.add_parser(
        "issue-user", parents=[common, days], help="issue <dir>/users/<name>: a client certificate"
    )
    user.add_argument("name", help="the user's or service's name (the certificate's CN)")
    user.add_argument("--role", required=True, choices=ROLES, help="the role (the certificate's OU)")

    renew = sub.add_parser(
        "renew",
        parents=[common, days],
        help="re-issue bundles with their names, roles and SANs, signed by the current CA",
    )
    renew.add_argument(
        "bundles", nargs="*", metavar="BUNDLE", help="e.g. controller, agents/HOST, users/NAME"
    )
    renew.add_argument("--all", action="store_true", help="every bundle of the PKI")

    show = sub.add_parser("show", parents=[common], help="list the CA certificates and the bundles")
    show.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")

    rotate = sub.add_parser(
        "rotate-ca",
        parents=[common],
        help="make a new CA the signer; the old one stays trusted until drop-old-ca",
    )
    rotate.add_argument("--name", default="", help="the new CA's common name (default: dated)")
    rotate.add_argument("--days", type=_positive_int, default=3650, help="validity in days (default: 3650)")

    drop = sub.add_parser(
        "drop-old-ca", parents=[common], help="trust only the current CA (after every bundle is re-issued)"
    )
    drop.add_argument(
        "--force", action="store_true", help="even if bundles still hold certificates of an old CA"
    )

    pki.set_defaults(handler=run)
    return pki


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``pki`` command. Errors are raised as ``chital.errdefs`` classes."""
    if args.pki_command == "init":
        pki = PKI.init(args.dir, common_name=args.name, days=args.days)
        print(f"CA created in {pki.directory / 'ca'}")
        print("keep ca/ca.key on this machine only; bundles to distribute are issued with `pki issue-*`")
        return 0
    command: Callable[[PKI, argparse.Namespace], int] = _COMMANDS[args.pki_command]
    return command(PKI(args.dir), args)


def _issue_controller(pki: PKI, args: argparse.Namespace) -> int:
    sans = args.san or ("127.0.0.1", "localhost")
    return _issued(pki, pki.issue_controller(args.name, sans=sans, days=args.days))


def _issue_agent(pki: PKI, args: argparse.Namespace) -> int:
    return _issued(pki, pki.issue_agent(args.host, sans=args.san, days=args.days))


def _issue_user(pki: PKI, args: argparse.Namespace) -> int:
    return _issued(pki, pki.issue_user(args.name, args.role, days=args.days))


def _renew(pki: PKI, args: argparse.Namespace) -> int:
    if args.all == bool(args.bundles):
        raise InvalidArgument("name the bundles to renew, or pass --all")
    targets = [b.path for b in pki.bundles() if b.kind != "ca"] if args.all else args.bundles
    for bundle in targets:
        _issued(pki, pki.renew(pki.directory / bundle, days=args.days))
    return 0


def _show_command(pki: PKI, args: argparse.Namespace) -> int:
    _show(pki.bundles(), as_json=args.output == "json")
    return 0


def _rotate_ca(pki: PKI, args: argparse.Namespace) -> int:
    pki.rotate_ca(common_name=args.name or None, days=args.days)
    print(f"new CA {_cn(pki)} signs from now on; both CAs are trusted in every bundle's ca.crt")
    print("next: distribute the ca.crt files, then `pki renew --all`, then `pki drop-old-ca`")
    return 0


def _drop_old_ca(pki: PKI, args: argparse.Namespace) -> int:
    dropped = pki.drop_old_cas(force=args.force)
    print(f"dropped {len(dropped)} old CA certificate(s); distribute the ca.crt files")
    return 0


_COMMANDS: dict[str, Callable[[PKI, argparse.Namespace], int]] = {
    "issue-controller": _issue_controller,
    "issue-agent": _issue_agent,
    "issue-user": _issue_user,
    "renew": _renew,
    "show": _show_command,
    "rotate-ca": _rotate_ca,
    "drop-old-ca": _drop_old_ca,
}


def _issued(pki: PKI, bundle: Path) -> int:
    info = next(b for b in pki.bundles() if b.path == bundle and b.kind != "ca")
    sans = f", SANs {', '.join(info.sans)}" if info.sans else ""
    print(f"{bundle}: {info.name} (role {info.role}{sans}), expires {_when(info.not_after)}")
    return 0


def _cn(pki: PKI) -> str:
    return str(pki.ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _status(info: BundleInfo, now: dt.datetime) -> str:
    if info.not_after <= now:
        return "EXPIRED"
    if info.not_before > now:
        return "not yet valid"
    if info.kind == "ca":
        return "signer" if info.signed_by_current_ca else "trusted (old)"
    if not info.signed_by_current_ca:
        return "old CA: re-issue"
    if info.not_after - now < EXPIRY_WARNING:
        return f"expires in {(info.not_after - now).days}d"
    return "ok"


def _show(infos: list[BundleInfo], *, as_json: bool) -> None:
    now = dt.datetime.now(dt.UTC)
    if as_json:
        rows = [
            {
                "path": str(b.path),
                "kind": b.kind,
                "name": b.name,
                "role": b.role,
                "sans": list(b.sans),
                "not_before": b.not_before.isoformat(),
                "not_after": b.not_after.isoformat(),
                "serial": f"{b.serial:x}",
                "issuer": b.issuer,
                "status": _status(b, now),
            }
            for b in infos
        ]
        print(json.dumps(rows, indent=2))
        return
    table = [("KIND", "NAME", "ROLE", "SANS", "EXPIRES", "STATUS", "PATH")]
    table += [
        (
            b.kind,
            b.name,
            b.role or "-",
            ",".join(b.sans) or "-",
            _when(b.not_after),
            _status(b, now),
            str(b.path),
        )
        for b in infos
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _when(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%MZ")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value
