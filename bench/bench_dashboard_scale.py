"""The dashboard at 1,000 and 10,000 devices, one after the other (issue 19).

Run: ``python bench/bench_dashboard_scale.py [--render-s 30] [--loads 3]``: the same as
``python bench/bench_dashboard.py --scale`` (see bench/_dashboard_scale.py for what is
measured: the backend is fed in-process, without a broker, because 10,000 mTLS connections
do not fit on this machine; the page is Debian's Chromium); a script of its own so that
``bench/run_all.py`` records it.
"""

from __future__ import annotations

import sys

import bench_dashboard

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "--scale", *sys.argv[1:]]
    sys.exit(bench_dashboard.main())
