"""``edgefleet silence add|list|expire``: silences through the running backend's API.

Like ``edgefleet device`` (:mod:`~edgefleet.backend.web.admin_client`): ``--url``, default
``EDGE_BACKEND_URL`` or ``http://127.0.0.1:8080``, the token from
``EDGE_BACKEND_AUTH_TOKEN``. ``add`` shows the preview first (what the silence would hide
now); a silence covering more than the backend's confirm share of the fleet needs ``--yes``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from edgefleet.backend.web.admin_client import AdminClient, AdminError, quote_part

SEVERITIES = ("critical", "warning", "info")


class SilenceClient(AdminClient):
    """``/api/silences`` requests (docs/api.md, "Silences")."""

    def listing(self) -> dict[str, Any]:
        """Every silence, newest first."""
        return self._call("GET", "/api/silences", None)

    def preview(self, doc: dict[str, Any]) -> dict[str, Any]:
        """What ``doc`` would hide now."""
        return self._call("POST", "/api/silences/preview", doc)

    def add(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Create it; ``{"silence", "preview"}``."""
        return self._call("POST", "/api/silences", doc)

    def expire(self, silence_id: str) -> dict[str, Any]:
        """End it now."""
        return self._call("DELETE", f"/api/silences/{quote_part(silence_id)}", None)


def _silence_doc(args: argparse.Namespace) -> dict[str, Any]:
    matchers: dict[str, Any] = {k: getattr(args, k) for k in ("device", "group", "rule",
                                                               "severity") if getattr(args, k)}
    labels = {}
    for item in args.label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AdminError(f"--label {item[:40]!r}: expected key=value")
        labels[key] = value
    if labels:
        matchers["labels"] = labels
    author = args.author or getpass.getuser()
    return {"matchers": matchers, "duration": args.duration, "author": author,
            "comment": args.comment or ""}


def _describe(preview: dict[str, Any]) -> str:
    firing, pending = preview.get("firing", []), preview.get("pending", [])
    lines = [f"would hide {len(firing)} firing and {len(pending)} pending alerts now; covers "
             f"{preview.get('devices')} of {preview.get('fleet')} devices"]
    lines += [f"  firing  {a['rule']} on {a['device']}: {a['summary']}" for a in firing[:20]]
    lines += [f"  pending {p['rule']} on {p['device']}" for p in pending[:20]]
    if len(firing) + len(pending) > 40:
        lines.append("  ...")
    return "\n".join(lines) + "\n"


def _cmd_add(client: SilenceClient, args: argparse.Namespace) -> int:
    doc = _silence_doc(args)
    preview = client.preview(doc)
    sys.stdout.write(_describe(preview))
    if preview.get("needs_confirm") and not args.yes:
        sys.stderr.write(f"edgefleet silence: that is more than "
                         f"{preview.get('confirm_share', 0):.0%} of the fleet; "
                         "add --yes to create it anyway\n")
        return 1
    made = client.add({**doc, "confirm": bool(args.yes)})["silence"]
    sys.stdout.write(f"silence {made['id']} until {_when(made['ends_at'])}\n")
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _cmd_list(client: SilenceClient, args: argparse.Namespace) -> int:
    for s in client.listing()["silences"]:
        if s["state"] == "expired" and not args.all:
            continue
        match = " ".join(f"{k}={v}" for k, v in sorted(s["matchers"].items()))
        sys.stdout.write(f"{s['id']}  {s['state']:<8} until {_when(s['ends_at'])}  {match}  "
                         f"by {s['author']}: {s['comment']}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """``edgefleet silence ...``."""
    client = SilenceClient(args.url)
    if args.action == "add":
        return _cmd_add(client, args)
    if args.action == "list":
        return _cmd_list(client, args)
    done = client.expire(args.id)["silence"]
    sys.stdout.write(f"silence {done['id']}: expired\n")
    return 0


def add_parser(sub: Any) -> None:
    """The ``silence`` sub-command."""
    cmd = sub.add_parser("silence", help="silence alerts (through the backend)")
    cmd.add_argument("--url", help="backend URL (EDGE_BACKEND_URL, else "
                     "http://127.0.0.1:8080); token from EDGE_BACKEND_AUTH_TOKEN")
    acts = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = acts.add_parser("add", help="preview, then create a silence")
    add.add_argument("--device", help="device id or glob")
    add.add_argument("--group", help="rules-file group")
    add.add_argument("--rule", help="rule name or glob")
    add.add_argument("--severity", choices=SEVERITIES)
    add.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")
    add.add_argument("--duration", default="1h", help="like 30m, 2h, 1d (default 1h)")
    add.add_argument("--author", help="who (default: the login name)")
    add.add_argument("--comment", help="why")
    add.add_argument("--yes", action="store_true", help="confirm a silence of a large share")
    listing = acts.add_parser("list", help="active and pending silences")
    listing.add_argument("--all", action="store_true", help="expired ones too")
    expire = acts.add_parser("expire", help="end a silence now")
    expire.add_argument("id", help="silence id (from list)")
    cmd.set_defaults(func=run)
