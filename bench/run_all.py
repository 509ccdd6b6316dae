"""Run every ``bench/bench_*.py`` and rewrite ``docs/benchmarks.md`` from their output.

Run: ``python bench/run_all.py [--only NAME ...] [--timeout 900] [--output docs/benchmarks.md]``.

Each benchmark runs as its own process, one after the other (never in parallel: they would
measure each other), in its own process group so that a timeout can stop it together with
the broker and agent it started. A benchmark prints its figures and ends with one line
``RESULT {json}``: ``{"bench": name, "figures": [{"figure", "value", "unit", "target",
"met"}, ...]}``. A script that fails, times out or prints no RESULT line is reported as such
in the document; the others still run. ``bench/notes.md``, when present, is copied into the
document as hand-written notes (this file is regenerated, the notes are not).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NOTES = BENCH / "notes.md"
RESULT_PREFIX = "RESULT "
STDERR_TAIL = 40


@dataclass
class Outcome:
    """What one benchmark script did."""

    script: Path
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and bool(self.results)

    @property
    def status(self) -> str:
        if self.timed_out:
            return f"TIMED OUT after {self.seconds:.0f} s"
        if self.returncode != 0:
            return f"FAILED (exit code {self.returncode}) after {self.seconds:.0f} s"
        if not self.results:
            return f"no RESULT line, figures in its output only; {self.seconds:.0f} s"
        return f"ok, {self.seconds:.0f} s"


# --- machine ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# --- running ----------------------------------------------------------------------------------


def _pump(stream: IO[str], sink: list[str], echo: IO[str] | None) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        if echo is not None:
            echo.write(line)
            echo.flush()


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group (it cleans up), SIGKILL it after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
        if proc.poll() is not None:
            return


def run_one(script: Path, timeout: float) -> Outcome:
    out = Outcome(script)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print(f"=== {script.relative_to(ROOT)}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, env=env, text=True, errors="replace",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out.stdout, sys.stdout), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, out.stderr, None), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        out.timed_out = True
        _stop_group(proc)
    except BaseException:
        _stop_group(proc)
        raise
    for pump in pumps:
        pump.join(10)
    out.returncode = proc.returncode
    out.seconds = time.monotonic() - started
    for line in out.stdout:
        if line.startswith(RESULT_PREFIX):
            try:
                out.results.append(json.loads(line[len(RESULT_PREFIX):]))
            except json.JSONDecodeError as exc:
                out.parse_errors.append(f"unreadable RESULT line: {exc}")
    print(f"=== {script.name}: {out.status}", flush=True)
    if not out.ok and out.stderr:
        print("\n".join(out.stderr[-STDERR_TAIL:]), file=sys.stderr)
    return out


# --- the document -------------------------------------------------------------------------------


def _value(fig: dict[str, Any]) -> str:
    value = fig.get("value")
    unit = fig.get("unit") or ""
    if isinstance(value, float) and not value.is_integer():
        text = f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
    elif isinstance(value, int | float):
        text = f"{int(value):,}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def _met(fig: dict[str, Any]) -> str:
    met = fig.get("met")
    return "—" if met is None else ("yes" if met else "**no**")


def _rows(outcome: Outcome) -> list[tuple[str, str, str, str]]:
    rows = []
    for result in outcome.results:
        for fig in result.get("figures", []):
            target = fig.get("target")
            rows.append((str(fig.get("figure", "?")), _value(fig),
                         "—" if target is None else f"{target} {fig.get('unit') or ''}".strip(),
                         _met(fig)))
    return rows


def _describe(script: Path) -> str:
    try:
        return ast.get_docstring(ast.parse(script.read_text())) or ""
    except (OSError, SyntaxError) as exc:
        return f"(docstring unreadable: {exc})"


def render(outcomes: list[Outcome], started: str, load_start: str, load_end: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/run_all.py` (it runs every `bench/bench_*.py` in turn and "
        "rewrites this file); do not edit by hand. Hand-written notes live in "
        "`bench/notes.md` and are copied in below.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| date (UTC) | {started} |",
        f"| platform | {platform.platform()} |",
        f"| CPU model | {_cpu_model()} |",
        f"| cores | {os.cpu_count()} |",
        f"| memory | {_memory()} |",
        f"| Python | {platform.python_version()} ({platform.python_implementation()}) |",
        f"| load average 1/5/15 min, start | {load_start} |",
        f"| load average 1/5/15 min, end | {load_end} |",
        "",
        "This is a 2-core virtual machine shared with other work (other engineers' test runs "
        "can overlap a benchmark), so figures vary between runs; each benchmark's own output "
        "below says what it measured and how.",
        "",
        "## Summary",
        "",
        "| benchmark | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        name = outcome.script.stem
        if not outcome.ok:
            failed = outcome.timed_out or outcome.returncode != 0
            lines.append(f"| {name} | {outcome.status} | — | — | {'**no**' if failed else '—'} |")
        for figure, value, target, met in _rows(outcome):
            lines.append(f"| {name} | {figure} | {value} | {target} | {met} |")
    if NOTES.exists():
        lines += ["", "## Notes", "", NOTES.read_text().strip()]
    for outcome in outcomes:
        rel = outcome.script.relative_to(ROOT)
        lines += ["", f"## {outcome.script.stem}", "", f"`python {rel}`: {outcome.status}.", ""]
        doc = _describe(outcome.script)
        if doc:
            lines += [doc, ""]
        shown = [line for line in outcome.stdout if not line.startswith(RESULT_PREFIX)]
        lines += ["Output:", "", "```text", *(shown or ["(nothing on stdout)"]), "```"]
        rows = _rows(outcome)
        if rows:
            lines += ["", "| figure | value | target | met |", "|---|---|---|---|"]
            lines += [f"| {f} | {v} | {t} | {m} |" for f, v, t, m in rows]
        if not outcome.ok or outcome.parse_errors:
            tail = outcome.parse_errors + outcome.stderr[-STDERR_TAIL:]
            lines += ["", f"stderr (last {STDERR_TAIL} lines):", "", "```text",
                      *(tail or ["(empty)"]), "```"]
    return "\n".join(lines) + "\n"


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only scripts whose name contains one of these words")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit)  # so that a running benchmark is stopped too
    scripts = sorted(BENCH.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if any(word in s.name for word in args.only)]
    if not scripts:
        print("no benchmark scripts matched", file=sys.stderr)
        return 1
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = _load()
    outcomes = [run_one(script, args.timeout) for script in scripts]
    args.output.write_text(render(outcomes, started, load_start, _load()))
    print(f"wrote {args.output}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
