"""10,000 simulated devices through K = 4 backend connections, end to end (issue 16).

Run: ``python bench/bench_fleet_k4.py [--devices 10000] [--connections 4]`` (about 6
minutes): ``bench_dashboard.py`` with 10,000 simulated device identities (each its own
certificate and MQTT5 mTLS connection to Mosquitto), one sample every 10 s each (1,000
messages/s), and the backend subscribed through 4 connections sharing the fleet's
subscription (``EDGE_BACKEND_CONNECTIONS=4``). Reported as by bench_dashboard.py: connect
time, the page with every device (Chromium), end-to-end latency from the sample's ``ts`` to
a WebSocket client (p50/p99), the backend's CPU, and the loss figure (samples lost and
messages rejected at the end, messages per connection). On AWS IoT Core one connection
carries about 100 messages/s, so this load needs K >= 10 there; on loopback Mosquitto K = 4
shows that the shares are fair and nothing is lost.
"""

from __future__ import annotations

import sys

import bench_dashboard

DEFAULTS = ["--devices", "10000", "--interval", "10", "--connections", "4",
            "--connect-timeout", "300", "--phase-s", "20", "--clients", "10"]

if __name__ == "__main__":
    sys.argv = [sys.argv[0], *DEFAULTS, *sys.argv[1:]]
    sys.exit(bench_dashboard.main())
