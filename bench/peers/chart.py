"""docs/bench.png from bench/peers.json: Prometheus queries per minute and reaction p99 against the
number of flows, every system measured, log scales; and the README table of the same figures.

    python -m bench.peers.chart [bench/peers.json] [docs/bench.png]
redraws the chart, recomputes the ratios in the file from its figures, and prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.peers.figures import lookup, ratios

PANELS = (("idle.prometheus_queries_per_minute", "Prometheus queries per minute (idle)"),
          ("reaction_seconds.p99", "reaction p99, seconds (backlog step -> spec.replicas)"))
STYLE = {
    "flowkeeper": dict(color="tab:green", marker="o", linewidth=2.5),
    "keda-min0": dict(color="tab:blue", marker="s", linestyle="--"),
    "keda-min1": dict(color="tab:orange", marker="s", linestyle="--"),
    "keda-min0-raised": dict(color="tab:blue", marker="^", linestyle=":", markerfacecolor="none"),
    "keda-min1-raised": dict(color="tab:orange", marker="^", linestyle=":", markerfacecolor="none"),
}
LEGEND = {
    "flowkeeper": "Flowkeeper",
    "keda-min0": "KEDA, minReplicaCount 0, default API limit",
    "keda-min1": "KEDA, minReplicaCount 1, default API limit",
    "keda-min0-raised": "KEDA, minReplicaCount 0, raised API limit",
    "keda-min1-raised": "KEDA, minReplicaCount 1, raised API limit",
}


def series(doc: dict, path: str) -> dict[str, list[tuple[int, float]]]:
    """Per system, (N, figure) for the sizes where the figure was measured."""
    out: dict[str, list[tuple[int, float]]] = {}
    for n, size in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0])):
        for key, figures in size["systems"].items():
            value = lookup(figures, path)
            if isinstance(value, (int, float)) and value > 0:
                out.setdefault(key, []).append((int(n), value))
    return out


def draw(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (figure, title) in zip(axes, PANELS):
        for key, points in series(doc, figure).items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=LEGEND.get(key, key), **STYLE.get(key, dict(marker="s", linestyle="--")))
        ax.set_xscale("log")
        sizes = sorted(int(n) for n in doc["sizes"])
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("flows (N)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    failed = [f"{key} at {int(n):,}" for n, size in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0]))
              for key, f in size["systems"].items() if "failed" in f]
    if failed:  # a system that never served every flow has no point there: say so on the chart
        fig.text(0.5, 0.115, "not measured (the run failed; see bench/peers.json): " + ", ".join(failed),
                 ha="center", fontsize=7.5, color="dimgray")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    cores = doc.get("machine", {}).get("cores")
    fig.suptitle(f"Flowkeeper and KEDA side by side (make bench-peers, {cores} cores, pollInterval "
                 f"{doc['settings']['poll_interval_seconds']}s)", fontsize=11)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(value, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:g}{unit}" if isinstance(value, (int, float)) else str(value)


def _per_minute(value: float | None, minutes: float) -> str:
    return "-" if value is None else f"{round(value / minutes, 2):g}"


def table(doc: dict) -> str:
    """The README's table: one row per size and system."""
    rows = ["| flows | system | Prometheus queries/min | API requests/min (net) | API writes/min (net) "
            "| reaction p50 / p99 | burst (flows) | CPU s per idle min | RSS | kube-apiserver CPU s per idle min |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for n, size in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0])):
        for key, f in size["systems"].items():
            if "idle" not in f:
                rows.append(f"| {n} | {key} | failed: {f.get('failed', '?')[:120]} | | | | | | | |")
                continue
            idle, idle_min = f["idle"], f["idle"]["seconds"] / 60
            burst = f.get("burst", {})
            rows.append(
                f"| {n} | {key} | {_cell(idle['prometheus_queries_per_minute'])} "
                f"| {_cell(idle.get('api_requests_per_minute_net'))} | {_cell(idle.get('api_writes_per_minute_net'))} "
                f"| {_cell(lookup(f, 'reaction_seconds.p50'), ' s')} / {_cell(lookup(f, 'reaction_seconds.p99'), ' s')} "
                f"| {_cell(burst.get('seconds'), ' s')} ({burst.get('flows', '-')}) "
                f"| {_per_minute(idle['cpu_seconds_total'], idle_min)} | {_cell(idle['rss_mb_total'], ' MB')} "
                f"| {_per_minute(lookup(idle, 'control_plane_cpu_seconds.kube-apiserver'), idle_min)} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "peers.json"
    dst = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "docs" / "bench.png"
    doc = json.loads(src.read_text())
    doc["ratios_keda_to_flowkeeper"] = {n: ratios(size["systems"]) for n, size in doc["sizes"].items()}
    src.write_text(json.dumps(doc, indent=2) + "\n")
    draw(doc, dst)
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
