"""Runs combined into one summary, written as JSON, a Markdown table and a plot."""

from __future__ import annotations

import shutil
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.scenarios import DELIVERY_SCENARIOS, Result

FLOOR = "floor"
# Counts where one bad run is the truth: the worst run is reported, not the median.
WORST_OF_RUNS = frozenset(
    {
        "lost",
        "duplicates",
        "outOfOrder",
        "unexpected",
        "incompleteWatchers",
        "refusedPublishes",
        "failed",
    }
)
# Tallies by name (close codes, error codes, failure texts): summed over runs.
SUMMED = frozenset({"closes", "errors", "failures"})
LATENCIES = ("p50", "p90", "p99", "max")
TIMES = "\N{MULTIPLICATION SIGN}"


def combine(results: Sequence[Result]) -> Result:
    """One scenario's runs as one result: medians, the worst losses, errors kept."""
    good = [result for result in results if "error" not in result]
    errors = [result["error"] for result in results if "error" in result]
    if not good:
        return {"error": errors[0] if errors else "not run", "runs": 0}
    combined: Result = {"runs": len(good)}
    if errors:
        combined["failedRuns"] = errors
    for key, first in good[0].items():
        values = [result[key] for result in good if key in result]
        if key in SUMMED:
            combined[key] = dict(sum((Counter(value) for value in values), Counter()))
        elif isinstance(first, dict):
            combined[key] = {
                name: _median_or_worst(name, [v.get(name) for v in values]) for name in first
            }
        elif _is_number(first):
            combined[key] = _median_or_worst(key, values)
        else:
            combined[key] = first
    return combined


def _median_or_worst(key: str, values: list[Any]) -> float | int | None:
    numbers: list[float] = [value for value in values if _is_number(value)]
    if not numbers:
        return None
    if key in WORST_OF_RUNS:
        return max(numbers)
    middle = statistics.median(numbers)
    counts = all(isinstance(number, int) for number in numbers)
    return int(middle) if counts and float(middle).is_integer() else middle


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


Summary = dict[str, dict[str, Result]]


def summarize(runs: Sequence[dict[str, Any]], servers: Sequence[str]) -> Summary:
    """server -> scenario -> combined result, with ratios to the floor when it ran."""
    summary: Summary = {}
    for server in servers:
        per_scenario: dict[str, list[Result]] = {}
        for run in runs:
            if run["server"] == server:
                for scenario, result in run["results"].items():
                    per_scenario.setdefault(scenario, []).append(result)
        summary[server] = {name: combine(results) for name, results in per_scenario.items()}
    _add_ratios(summary)
    return summary


def _add_ratios(summary: Summary) -> None:
    floor = summary.get(FLOOR, {})
    for scenario in DELIVERY_SCENARIOS:
        base = floor.get(scenario, {})
        base_cpu = base.get("cpuUsPerDelivery")
        base_p99 = (base.get("latencyMs") or {}).get("p99")
        for results in summary.values():
            result = results.get(scenario)
            if not result or "error" in result:
                continue
            if base_cpu:
                result["ratioToFloor"] = result["cpuUsPerDelivery"] / base_cpu
            p99 = (result.get("latencyMs") or {}).get("p99")
            if base_p99 is not None and p99 is not None:
                result["p99AboveFloorMs"] = p99 - base_p99


def write(directory: Path, document: dict[str, Any]) -> list[Path]:
    """results.json, results.md and plot.png in `directory`; copies as latest.* beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "results.json"
    json_path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    md_path = directory / "results.md"
    md_path.write_text(markdown(document))
    png_path = directory / "plot.png"
    plot(document["summary"], document["meta"], png_path)
    latest = []
    for path in (json_path, md_path, png_path):
        target = directory.parent / f"latest{path.suffix}"
        shutil.copyfile(path, target)
        latest.append(target)
    return [json_path, md_path, png_path, *latest]


def markdown(document: dict[str, Any]) -> str:
    """The summary table of the issue, then every figure per scenario and server."""
    meta, summary = document["meta"], document["summary"]
    lines = [f"# Fan-out benchmark, {meta['started']}", "", _describe(meta), ""]
    lines += _main_table(meta, summary)
    lines += ["", "## Every scenario", ""]
    lines += _detail_table(summary)
    failures = _failures(summary)
    if failures:
        lines += ["", "## Failures", "", *failures]
    return "\n".join(lines) + "\n"


def _describe(meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    runs = "median of 2 runs" if meta["runs"] == 2 else f"median of {meta['runs']} runs"
    if meta["runs"] == 1:
        runs = "1 run"
    return (
        f"`{meta['command']}` — {meta['mode']} mode, {runs}; {machine['cpus']} CPUs "
        f"({machine['cpuModel']}), Linux {machine['kernel']}, Python {machine['python']}. "
        "Server CPU time per delivered message, all threads and worker processes, read from "
        f"/proc; {TIMES} is the ratio to the floor server measured in the same run. Latency is "
        "publish to receipt."
    )


def _main_table(meta: dict[str, Any], summary: Summary) -> list[str]:
    sizes = meta["sizes"]
    headers = [
        "server",
        f"paced, {sizes['paced_watchers']:,} watchers",
        f"burst, {sizes['burst_watchers']:,} watchers",
        f"routing, {sizes['routing_events']:,} events {TIMES} {sizes['routing_watchers']}",
        "idle KiB/connection",
        "connects/s",
        "lost",
    ]
    rows = [_row(headers), _row(["---"] * len(headers))]
    for server, results in summary.items():
        cells = [server]
        cells += [_cpu_cell(results.get(scenario)) for scenario in DELIVERY_SCENARIOS]
        cells.append(_number(results.get("idle", {}).get("kibPerConnection"), 1))
        cells.append(_number(results.get("connect", {}).get("connectsPerSecond"), 0))
        cells.append(_lost_cell(results))
        rows.append(_row(cells))
    return rows


def _detail_table(summary: Summary) -> list[str]:
    headers = [
        "scenario",
        "server",
        "deliveries",
        "deliveries/s",
        "CPU µs/delivery",
        "kernel",
        f"{TIMES} floor",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "lost",
        "dup",
        "out of order",
        "closes",
        "client CPU µs/delivery",
    ]
    rows = [_row(headers), _row(["---"] * len(headers))]
    for scenario in DELIVERY_SCENARIOS:
        for server, results in summary.items():
            result = results.get(scenario)
            if result is None or "error" in result:
                continue
            latency = result.get("latencyMs") or {}
            rows.append(
                _row(
                    [
                        scenario,
                        server,
                        f"{_number(result['delivered'], 0)}"
                        f" / {_number(result['expectedDeliveries'], 0)}",
                        _number(result.get("deliveriesPerSecond"), 0),
                        _number(result["cpuUsPerDelivery"], 1),
                        f"{result['kernelShare']:.0%}",
                        _number(result.get("ratioToFloor"), 2),
                        *(_number(latency.get(name), 1) for name in LATENCIES),
                        str(result["lost"]),
                        str(result["duplicates"]),
                        str(result["outOfOrder"]),
                        _tally(result.get("closes", {})),
                        _number(result["clientCpuUsPerDelivery"], 1),
                    ]
                )
            )
    return rows


def _failures(summary: Summary) -> list[str]:
    lines = []
    for server, results in summary.items():
        for scenario, result in results.items():
            for error in [result.get("error"), *result.get("failedRuns", [])]:
                if error:
                    lines.append(f"- {server}, {scenario}: {error}")
    return lines


def _cpu_cell(result: Result | None) -> str:
    if result is None:
        return "—"
    if "error" in result:
        return "failed"
    cell = f"{result['cpuUsPerDelivery']:.1f} µs"
    if "ratioToFloor" in result:
        cell += f" ({result['ratioToFloor']:.2f}{TIMES})"
    if result.get("failedRuns"):
        cell += f", {len(result['failedRuns'])} run(s) failed"
    return cell


def _lost_cell(results: dict[str, Result]) -> str:
    lost = [results[s].get("lost") for s in DELIVERY_SCENARIOS if s in results]
    numbers = [n for n in lost if isinstance(n, int)]
    return str(sum(numbers)) if numbers else "—"


def _tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{code}{TIMES}{count}" for code, count in sorted(counts.items())) or "—"


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def plot(summary: Summary, meta: dict[str, Any], path: Path) -> None:
    """Per delivery scenario: server CPU per delivery (bars), latency percentiles (lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(DELIVERY_SCENARIOS), figsize=(16, 9), squeeze=False)
    for column, scenario in enumerate(DELIVERY_SCENARIOS):
        measured = {
            server: results[scenario]
            for server, results in summary.items()
            if scenario in results and "error" not in results[scenario]
        }
        _cpu_bars(axes[0][column], scenario, measured)
        _latency_lines(axes[1][column], scenario, measured)
    figure.suptitle(f"seatcast fan-out, {meta['mode']} mode, {meta['started']}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _cpu_bars(axis: Any, scenario: str, measured: dict[str, Result]) -> None:
    names = list(measured)
    values = [measured[name]["cpuUsPerDelivery"] for name in names]
    bars = axis.bar(range(len(names)), values, color="tab:blue")
    axis.bar_label(bars, fmt="%.1f", fontsize="small")
    if FLOOR in measured:
        axis.axhline(measured[FLOOR]["cpuUsPerDelivery"], color="gray", linestyle="--", linewidth=1)
    axis.set_title(f"{scenario}: server CPU per delivery")
    axis.set_ylabel("µs")
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(names, rotation=20, ha="right", fontsize="small")


def _latency_lines(axis: Any, scenario: str, measured: dict[str, Result]) -> None:
    for name, result in measured.items():
        latency = result.get("latencyMs") or {}
        points = [(label, latency.get(label)) for label in LATENCIES]
        shown = [(label, value) for label, value in points if value]
        if shown:
            axis.plot(
                [label for label, _ in shown], [value for _, value in shown], marker="o", label=name
            )
    axis.set_yscale("log")
    axis.set_title(f"{scenario}: publish-to-receipt latency")
    axis.set_ylabel("ms")
    axis.grid(True, which="both", alpha=0.3)
    if measured:
        axis.legend(fontsize="small")
