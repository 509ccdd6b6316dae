"""Helpers shared by every layer: structured logs, settings conventions, file checks, SQLite
transactions, the generic Greengrass configuration check. The wire contract is in
``edgefleet.wire``, transports in ``edgefleet.transport``; nothing here imports an upper layer."""
