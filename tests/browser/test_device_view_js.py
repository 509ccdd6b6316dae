"""The device view's pure modules in Chromium without a backend (served as in
test_dashboard_js.py): the chart catalogue (families.js), time ranges and the URL
(timerange.js), and which alert marks land on a chart (board.js)."""

from __future__ import annotations

import pytest

# the page fixture and run() are shared with test_dashboard_js.py
from test_dashboard_js import CHROMIUM, Page, page, run  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]

PACKAGE = "temp.celsius[coretemp/Package id 0]"


async def test_the_hottest_sensor_is_charted_first_whatever_its_name(page: Page) -> None:
    got = await run(page, """
        const f = await load("families.js");
        const known = [];
        const latest = {};
        for (let i = 0; i < 24; i += 1) {
          known.push(`temp.celsius[coretemp/Core ${i}]`);
          latest[`temp.celsius[coretemp/Core ${i}]`] = 40 + i / 10;
        }
        known.push(arg);
        latest[arg] = 71;
        const groups = f.catalogue(known, latest);
        const temp = groups.find((g) => g.id === "temp").charts[0];
        return { first: temp.keys[0], drawn: f.defaultKeys(groups), hottest: f.hottestKey(known, latest),
                 label: temp.names[arg] };
    """, PACKAGE)
    assert got["first"] == PACKAGE and got["hottest"] == PACKAGE
    assert PACKAGE in got["drawn"] and len(got["drawn"]) == 16  # capped, the hottest kept
    assert got["label"] == "coretemp/Package id 0"


async def test_new_families_get_a_generic_group_and_lo_is_off_by_default(page: Page) -> None:
    got = await run(page, """
        const f = await load("families.js");
        const groups = f.catalogue(["cpu.percent", "cpu.iowait_percent", "cpu.steal_percent",
          "systemd.failed_units", "systemd.unit_active[ssh.service]", "textfile.queue_depth",
          "exec.status.exit_code[backup]", "net.rx_bytes_per_s[lo]", "net.rx_drops_per_s[eth0]",
          "net.rx_errors_per_s[eth0]", "vitals.reboots", "uptime.seconds"]);
        return { groups: groups.map((g) => [g.id, g.charts.map((c) => c.id)]),
                 cpu: groups[0].charts[0].keys.map((k) => groups[0].charts[0].names[k]),
                 drawn: f.defaultKeys(groups) };
    """)
    assert got["groups"] == [
        ["cpu", ["cpu"]], ["net", ["net:lo", "net-errors"]], ["system", ["uptime", "reboots"]],
        ["systemd", ["f:systemd.failed_units", "f:systemd.unit_active"]],
        ["textfile", ["f:textfile.queue_depth"]], ["exec", ["f:exec.status.exit_code"]],
    ]
    assert got["cpu"] == ["total", "iowait", "steal"]
    assert "net.rx_bytes_per_s[lo]" not in got["drawn"]
    assert "net.rx_drops_per_s[eth0]" in got["drawn"]


async def test_ranges_zoom_pan_and_the_hash_round_trip(page: Page) -> None:
    got = await run(page, """
        const t = await load("timerange.js");
        const now = 1_000_000;
        const view = { range: { kind: "fixed", from: 990_000, to: 996_000 },
                       keys: ["cpu.percent", "disk.used_percent[/mnt/a,b]"] };
        const q = t.formatView(view);
        return {
          q, back: t.parseView(q), preset: t.parseView("range=6h"), junk: t.parseView("from=9&to=x"),
          fitNew: t.resolve(t.FIT, now, now - 20), fitOld: t.resolve(t.FIT, now, now - 86400),
          fitSilent: t.resolve(t.FIT, now, now - 86400, now - 7200),
          zoomIn: t.zoom(990_000, 996_000, 0.5, now), pan: t.pan(990_000, 996_000, -0.25, now),
          panPastNow: t.pan(990_000, 996_000, 2, now), tiny: t.fixed(5, 6, now),
        };
    """)
    assert got["q"] == "from=990000&to=996000&keys=cpu.percent,disk.used_percent%5B/mnt/a,b%5D"
    assert got["back"] == {"range": {"kind": "fixed", "from": 990000, "to": 996000},
                           "keys": ["cpu.percent", "disk.used_percent[/mnt/a,b]"]}
    assert got["preset"] == {"range": {"kind": "preset", "preset": "6h"}, "keys": None}
    assert got["junk"]["range"] == {"kind": "fit"}
    new = got["fitNew"]  # 20 s of data: they start at the left, not as a sliver on the right
    assert new["from"] == 1_000_000 - 22 and new["to"] == new["from"] + 60 and new["live"]
    assert got["fitOld"] == {"from": 1_000_000 - 3600, "to": 1_000_000, "live": True}
    assert got["fitSilent"] == {"from": 1_000_000 - 7200 + 60 - 3600,
                                "to": 1_000_000 - 7200 + 60, "live": False}
    assert got["zoomIn"] == {"kind": "fixed", "from": 991_500, "to": 994_500}
    assert got["pan"] == {"kind": "fixed", "from": 988_500, "to": 994_500}
    assert got["panPastNow"] == {"kind": "fixed", "from": 994_000, "to": 1_000_000}
    assert got["tiny"]["to"] - got["tiny"]["from"] == 30


async def test_alert_marks_land_on_the_charts_of_their_keys(page: Page) -> None:
    got = await run(page, """
        const { chartMarks } = await load("board.js");
        const { UNITS } = await load("families.js");
        const marks = {
          thresholds: [{ rule: "hot", op: ">", threshold: 80, severity: "critical", keys: [arg] }],
          periods: [
            { rule: "hot", metric: arg, instance: "coretemp/Package id 0", severity: "critical",
              state: "resolved", start: 100, fired_at: 130, end: 200 },
            { rule: "hot", metric: arg, instance: null, severity: "critical", state: "pending",
              start: 300, fired_at: null, end: null },
            { rule: "offline", metric: null, instance: null, severity: "critical",
              state: "firing", start: 400, fired_at: 460, end: null },
          ] };
        const onTemp = chartMarks([arg], marks, UNITS.celsius, 500);
        const onCpu = chartMarks(["cpu.percent"], marks, UNITS.percent, 500);
        const strip = (m) => ({ th: m.thresholds.map((t) => [t.rule, t.value, t.label]),
          bands: m.bands.map((b) => [b.state, b.from, b.to]) });
        return { temp: strip(onTemp), cpu: strip(onCpu) };
    """, PACKAGE)
    assert got["temp"]["th"] == [["hot", 80, "hot > 80 °C"]]
    assert got["temp"]["bands"] == [["pending", 100, 130], ["firing", 130, 200],
                                    ["pending", 300, 500], ["pending", 400, 460],
                                    ["firing", 460, 500]]
    assert got["cpu"] == {"th": [], "bands": [["pending", 400, 460], ["firing", 460, 500]]}
