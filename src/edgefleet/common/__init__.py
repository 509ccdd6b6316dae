"""Helpers shared by every layer: structured logs, settings conventions, file checks, SQLite
transactions. The wire contract is in ``edgefleet.wire``, transports in ``edgefleet.transport``."""
