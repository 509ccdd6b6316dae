"""Per-device metrics for Prometheus and Grafana (/metrics/devices): the text a real
Prometheus scrapes, its names and labels, offline devices without stale values, and a
PromQL query over Prometheus's HTTP API that returns a device's CPU."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backendproc import BackendProc
from conftest import ClientFactory
from devices import Device
from edgefleet.backend.web.exposition import DeviceSeries, groups_of, render
from edgefleet.dev.broker import Mosquitto, free_port

T = 1_700_000_000.0
TOKEN = "s3cret-token-for-scrapes"


def test_names_labels_and_escaping() -> None:
    text = render([
        DeviceSeries("dev-1", True, "0.1.0", T - 2.5, {
            "cpu.percent": 37.5, "disk.used_percent[/data]": 81.0,
            'temp.celsius[Package id 0 "hot"]': 71.0, "net.rx_bytes_per_s[eth0]": 10.0,
            "textfile.jobs[a\\b]": 3.0, "up": 1.0}, groups=["lab"]),
        DeviceSeries("dev-2", False, None, T - 999, {"cpu.percent": 99.0}),
    ], T)
    lines = text.splitlines()
    assert 'edgefleet_device_cpu_percent{device="dev-1"} 37.5' in lines
    assert 'edgefleet_device_disk_used_percent{device="dev-1",mountpoint="/data"} 81.0' in lines
    assert ('edgefleet_device_temp_celsius{device="dev-1",sensor="Package id 0 \\"hot\\""} 71.0'
            in lines)
    assert 'edgefleet_device_net_rx_bytes_per_s{device="dev-1",interface="eth0"} 10.0' in lines
    assert 'edgefleet_device_textfile_jobs{device="dev-1",item="a\\\\b"} 3.0' in lines
    assert 'edgefleet_device_up_value{device="dev-1"} 1.0' in lines  # not the state metric
    assert 'edgefleet_device_up{device="dev-1"} 1' in lines
    assert 'edgefleet_device_up{device="dev-2"} 0' in lines
    assert 'edgefleet_device_info{agent_version="0.1.0",device="dev-1"} 1' in lines
    assert 'edgefleet_device_group{device="dev-1",group="lab"} 1' in lines
    assert 'edgefleet_device_sample_age_seconds{device="dev-1"} 2.500' in lines
    # an offline device's last values would be stored as fresh at every scrape: left out
    assert not [x for x in lines if 'device="dev-2"' in x and "up" not in x and "info" not in x]
    # one HELP/TYPE per metric name, series under it
    assert text.count("# TYPE edgefleet_device_cpu_percent gauge") == 1
    assert all(x.startswith(("#", "edgefleet_device_")) for x in lines)


def test_groups_from_the_rules_file_match_ids_and_globs() -> None:
    groups = {"lab": ["dev-1", "lab-*"], "site-a": ["a-*"], "all": ["*"]}
    assert groups_of("lab-7", groups) == ["lab", "all"]
    assert groups_of("dev-1", groups) == ["lab", "all"]
    assert groups_of("b-1", {"site-a": ["a-*"]}) == []


# --- a real Prometheus scrapes the backend -----------------------------------------------------


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping the backend every second."""

    def __init__(self, workdir: Path, target: str, token: str) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{
                "job_name": "edgefleet", "metrics_path": "/metrics/devices",
                "authorization": {"credentials": token},
                "static_configs": [{"targets": [target]}],
            }],
        }))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [str(shutil.which("prometheus")), f"--config.file={config}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log,
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc = json.loads(resp.read())
        except OSError:
            return []  # not listening yet
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    made: list[Prometheus] = []

    def make(target: str, token: str) -> Prometheus:
        made.append(Prometheus(tmp_path / "prometheus", target, token))
        return made[-1]

    yield make
    for prom in made:
        prom.stop()


async def wait_for(query: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Ask until Prometheus has scraped what the query wants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(query)
        if result:
            return list(result)
        await asyncio.sleep(0.25)
    raise AssertionError("no result in time")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
async def test_a_real_prometheus_scrapes_a_devices_cpu(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path, prometheus_for: Any,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\ngroups:\n  lab: [dev-*]\nrules: []\n")
    backend = BackendProc(broker, tmp_path / "backend", auth_token=TOKEN,
                          rules_file=rules).start()
    try:
        backend.wait_healthy()
        dev = await Device.connect(mqtt_client, "dev-1")
        await dev.sample(time.time(), cpu_percent=37.5)
        prom = prometheus_for(f"127.0.0.1:{backend.http_port}", TOKEN)
        [cpu] = await wait_for(lambda: prom.query('edgefleet_device_cpu_percent{device="dev-1"}'))
        assert float(cpu["value"][1]) == 37.5
        assert cpu["metric"]["job"] == "edgefleet"  # Prometheus's own target labels kept
        [group] = await wait_for(lambda: prom.query("edgefleet_device_group"))
        assert group["metric"]["group"] == "lab" and group["metric"]["device"] == "dev-1"
        status, _ = backend.get("/metrics/devices", token="wrong")
        assert status == 401  # the token guards it like /metrics
    finally:
        backend.stop()


def test_the_grafana_dashboard_queries_metrics_the_backend_exposes() -> None:
    """Every metric name in grafana/edgefleet-devices.json is one /metrics/devices renders
    for a default agent's keys, with the labels the legends use."""
    dash = json.loads((Path(__file__).parents[2] / "grafana/edgefleet-devices.json").read_text())
    keys = {"cpu.percent": 1.0, "memory.used_percent": 1.0, "disk.used_percent[/]": 1.0,
            "temp.celsius[cpu]": 1.0, "net.rx_bytes_per_s[eth0]": 1.0,
            "net.tx_bytes_per_s[eth0]": 1.0, "load.load1_per_core": 1.0,
            "diskio.read_bytes_per_s[sda]": 1.0, "diskio.write_bytes_per_s[sda]": 1.0}
    text = render([DeviceSeries("d", True, "v", T, keys, groups=["g"])], T)
    exposed = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
    labels = {part.split("=")[0] for line in text.splitlines() if "{" in line
              for part in line.split("{")[1].split("}")[0].split(",")}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"edgefleet_device_[a-z0-9_]+", e)}
    assert used and used <= exposed, used - exposed
    legends = [t.get("legendFormat", "") for p in dash["panels"] for t in p["targets"]]
    assert {m for lf in legends for m in re.findall(r"{{(\w+)}}", lf)} <= labels
    assert dash["templating"]["list"][1]["query"]["query"] == (
        "label_values(edgefleet_device_up, device)")
