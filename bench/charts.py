"""One SVG bar chart per results table of ``bench.run``: plain SVG text, no
plotting library.  ``python -m bench.charts RESULTS.json DIR`` redraws them
from a saved run."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from xml.sax.saxutils import escape

COLOURS = {"gateway": "#1f77b4", "bare autobahn": "#7f7f7f", "mosquitto": "#2ca02c", "amqtt": "#d62728"}
WIDTH, LABEL, ROW, TOP = 720, 200, 22, 54


def bars(title: str, subtitle: str, groups: list[tuple[str, list[tuple[str, float, str]]]], unit: str,
         marks: list[tuple[str, float]] = ()) -> str:
    """Horizontal bars: ``groups`` of (label, value, colour key); ``marks``
    are dashed vertical lines (label, value), e.g. a floor."""
    values = [v for _, rows in groups for _, v, _ in rows if v is not None] + [v for _, v in marks]
    top = max(values) * 1.15 if values else 1.0
    span = WIDTH - LABEL - 70
    y = TOP
    out = []
    for group, rows in groups:
        out.append(f'<text x="8" y="{y + 14}" font-weight="bold">{escape(group)}</text>')
        y += ROW
        for label, value, key in rows:
            out.append(f'<text x="{LABEL - 8}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
            if value is not None:
                w = max(1.0, span * value / top)
                out.append(f'<rect x="{LABEL}" y="{y + 3}" width="{w:.1f}" height="{ROW - 6}" '
                           f'fill="{COLOURS.get(key, "#9467bd")}"/>')
                out.append(f'<text x="{LABEL + w + 4:.1f}" y="{y + 14}">{value:,.1f} {escape(unit)}</text>')
            else:
                out.append(f'<text x="{LABEL + 4}" y="{y + 14}" fill="#999">not measured</text>')
            y += ROW
        y += 6
    for label, value in marks:
        x = LABEL + span * value / top
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{y}" stroke="#000" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x + 3:.1f}" y="{y + 14}">{escape(label)}</text>')
    height = y + 28
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">'
            f'<rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="8" y="20" font-size="15" font-weight="bold">{escape(title)}</text>'
            f'<text x="8" y="38" fill="#555">{escape(subtitle)}</text>')
    return head + "".join(out) + "</svg>\n"


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def relay_chart(results: dict) -> str:
    relay = results["relay"]
    runs = [r for r in relay["runs"] if "rate" in r]
    groups = []
    for size in sorted({r["size"] for r in runs}):
        rows = []
        for name in relay["targets"]:
            us = [r["server_us_per_rt"] for r in runs if r["target"] == name and r["size"] == size]
            rows.append((name, statistics.median(us) if us else None, name))
        groups.append((f"payload {_size(size)}", rows))
    return bars("Relay: server CPU per round trip (lower is better)",
                f"K = 64 in flight, QoS 0, median of {results['args']['reps']} x {results['args']['duration']:g} s; "
                f"commit {results['env']['commit']}", groups, "us")


def memory_chart(results: dict) -> str:
    memory = results["memory"]
    rows = [(r["server"], r["kib_per_session"], r["server"]) for r in memory["results"]]
    return bars(f"Idle session: RSS growth per session, {memory['sessions']} sessions (lower is better)",
                f"commit {results['env']['commit']}", [("", rows)], "KiB")


def storm_chart(results: dict) -> str:
    storm = results["storm"]
    groups = []
    for cfg in storm["configs"]:
        groups.append((cfg["label"], [(f"{kind}: all accepted", cfg[kind]["all_accepted_s"], "gateway")
                                      for kind in ("cold", "warm")]))
    return bars(f"Connect storm: {storm['devices']} devices at once (lower is better)",
                f"dashed: {storm['devices']} x PBKDF2 / {storm['cores']} cores; commit {results['env']['commit']}",
                groups, "s", marks=[("PBKDF2 floor", storm["ideal_s"])])


def _e2e_chart(results: dict, title: str, what: str, relay_direct: tuple[str, float, float],
               cpu: tuple[str, dict], unit: str) -> str:
    """Relay against direct, then the CPU of each process, all in ``unit``."""
    label, relay, direct = relay_direct
    return bars(f"End to end: {title} (lower is better)", f"{what}; CPU read from /proc; commit {results['env']['commit']}",
                [(label, [("through the relay", relay, "gateway"), ("direct to the app", direct, "bare autobahn")]),
                 (cpu[0], [(name, value, "gateway") for name, value in cpu[1].items()])], unit)


def e2e_request_chart(results: dict) -> str:
    e2e = results["e2e"]
    trip = e2e["round_trip_ms"]
    return _e2e_chart(results, "one small request", f"median of {e2e['requests']} GET /api/whoami",
                      ("round trip", trip["relay"] * 1000, trip["direct"] * 1000),
                      ("CPU per relayed request", e2e["cpu_us_per_request"]), "us")


def e2e_download_chart(results: dict) -> str:
    e2e = results["e2e"]
    rate = e2e["mib_per_s"]
    return _e2e_chart(results, "a download", f"{e2e['download_mib']:.0f} MiB, one device session",
                      ("time per MiB", 1000 / rate["relay"], 1000 / rate["direct"]),
                      ("CPU per relayed MiB", e2e["cpu_ms_per_mib"]), "ms")


CHARTS = (("relay", "relay", relay_chart), ("memory", "memory", memory_chart), ("storm", "storm", storm_chart),
          ("e2e", "e2e-request", e2e_request_chart), ("e2e", "e2e-download", e2e_download_chart))


def write_all(results: dict, directory: Path) -> list[Path]:
    """Every chart ``results`` has the figures for (a bench.run results file,
    or the demo's ``--results``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for key, name, draw in CHARTS:
        if results.get(key):
            path = directory / f"{name}.svg"
            path.write_text(draw(results))
            written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(path)
