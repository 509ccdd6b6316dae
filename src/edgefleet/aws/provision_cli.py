"""The ``edgefleet provision`` command: arguments in, one env-file block out on stdout.

The output is ready to append to an env file: ``#`` lines say what was created, kept or
needs attention; the other lines are the settings of the agent (``EDGE_AGENT_*``) or of the
backend (``EDGE_BACKEND_*``). Amazon Root CA 1 is never downloaded or embedded: the user
passes ``--ca-file`` or puts it where the output says.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from edgefleet.aws.policies import THING_GROUP_NAME
from edgefleet.aws.provision import (
    ProvisionRequest,
    ProvisionResult,
    Role,
    iot_client,
    provision,
    revoke,
)

MQTT_PORT = 8883
AMAZON_ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"
AMAZON_ROOT_CA_FILE = "AmazonRootCA1.pem"


def check_ca_file(path: Path) -> str | None:
    """A note when ``path`` is missing or is not Amazon Root CA 1; None when it is."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not path.is_file():
        return (
            f"{path} is missing: download Amazon Root CA 1 from {AMAZON_ROOT_CA_URL} "
            "to that path, or pass --ca-file (edgefleet neither downloads nor embeds it)"
        )
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return f"{path} is not a PEM certificate; expected Amazon Root CA 1"
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return None if names == ["Amazon Root CA 1"] else f"{path} is {names}, not Amazon Root CA 1"


def settings_lines(
    result: ProvisionResult, *, role: Role, ca_file: Path, device_key: Path | None = None
) -> list[str]:
    """The ``EDGE_AGENT_*`` (or ``EDGE_BACKEND_*``) lines an env file needs."""
    backend = role == "backend"
    prefix = "EDGE_BACKEND_" if backend else "EDGE_AGENT_"
    ident = "CLIENT_ID" if backend else "THING_NAME"
    key = result.key_file.resolve() if result.key_file else device_key
    return [
        f"{prefix}{ident}={result.thing}",
        f"{prefix}ENDPOINT={result.endpoint}",
        f"{prefix}PORT={MQTT_PORT}",
        f"{prefix}CERT_FILE={result.cert_file.resolve()}",
        f"{prefix}KEY_FILE={key}" if key else f"# {prefix}KEY_FILE=<the key the CSR was made with>",
        f"{prefix}CA_FILE={ca_file.resolve()}",
    ]


def run(args: Any) -> int:
    """The ``edgefleet provision`` command (``args`` from its argparse sub-parser)."""
    iot = iot_client(args.region, args.profile)
    if args.revoke:
        ids = revoke(iot, args.thing, args.cert_id)
        done = ", ".join(i[:12] for i in ids) or "none attached"
        sys.stdout.write(f"# {args.thing}: revoked (INACTIVE, detached): {done}\n")
        return 0
    req = ProvisionRequest(
        thing=args.thing, out_dir=Path(args.out), role=args.role,
        group=args.group or THING_GROUP_NAME, rotate=args.rotate,
        csr_file=Path(args.csr) if args.csr else None,
    )
    result = provision(iot, req)
    ca_file = Path(args.ca_file) if args.ca_file else req.out_dir / AMAZON_ROOT_CA_FILE
    ca_note = check_ca_file(ca_file)
    device_key = Path(args.key_file) if args.key_file else None
    lines = [f"# {req.thing}: created {', '.join(result.created) or 'nothing (all existed)'}"]
    lines += [f"# note: {note}" for note in [*result.notes, *([ca_note] if ca_note else [])]]
    lines += settings_lines(result, role=req.role, ca_file=ca_file, device_key=device_key)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
