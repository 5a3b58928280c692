#!/usr/bin/env python3
"""CPU per request against body size, one line per target, from a results file of
`BODIES=... benches/load.sh` (its raw-runs CSV block): an SVG, log-log, standard library only.

    python3 benches/plot_sizes.py benches/results/sizes-2026-12-05.md [OUT.svg]

Responses are lines over their sizes; uploads are hollow squares at (just right of) their size. The first mode
in the file is drawn (pinned, in the usual size run), at each body's first connection count.
"""
import csv
import math
import re
import statistics
import sys
from collections import defaultdict

COLOURS = {"lb-mio": "#d62728", "lb-mio-nosplice": "#ff7f0e", "nginx": "#2ca02c",
           "haproxy": "#1f77b4", "haproxy-splice": "#17becf"}
W, H, LEFT, RIGHT, TOP, BOTTOM = 760, 460, 70, 190, 40, 60


def body_bytes(body):
    """13, 4k, 1m, up1m -> bytes."""
    n, unit = re.fullmatch(r"(?:up)?(\d+)([km]?)", body).groups()
    return int(n) * {"": 1, "k": 1024, "m": 1 << 20}[unit]


def body_label(body):
    size = re.sub(r"^up", "", body).replace("k", " KiB").replace("m", " MiB")
    return size if size.endswith("B") else size + " B"


def read_runs(path):
    """The raw-runs CSV block -> (rows as dicts, clock ticks per second)."""
    text = open(path, encoding="utf-8").read()
    block = text.split("<summary>Raw runs (CSV)</summary>", 1)[1].split("```", 2)[1]
    lines = block.strip().split("\n\n")[0].splitlines()
    tck = int(re.search(r"cpu_ticks\(1/(\d+) s\)", lines[0]).group(1))
    header = [re.sub(r"\(.*\)", "", h) for h in lines[0].split(",")]
    return list(csv.DictReader(lines[1:], fieldnames=header)), tck


def cpu_medians(rows, tck):
    """(body, target) -> median CPU µs per request, for the first mode and each body's first conns."""
    mode = rows[0]["mode"]
    first_conns, per_run = {}, defaultdict(list)
    for r in rows:
        if r["mode"] != mode or r["body"] == "demo" or int(r["requests"]) == 0:
            continue
        if first_conns.setdefault(r["body"], r["conns"]) != r["conns"]:
            continue
        per_run[r["body"], r["target"]].append(int(r["cpu_ticks"]) / tck / int(r["requests"]) * 1e6)
    return {k: statistics.median(v) for k, v in per_run.items()}, mode


def nice(v, up):
    """The nearest of 1, 2, 5 times a power of ten below v (up: above v), and its log10."""
    e = math.floor(math.log10(v))
    steps = [m * 10.0 ** k for k in (e, e + 1) for m in (1, 2, 5)]
    return math.log10(min(s for s in steps if s >= v) if up else max(s for s in steps if s <= v))


class Axes:
    """Log-log mapping of the data's range, widened to 1-2-5 steps, onto the plot area."""

    def __init__(self, xs, ys):
        self.x0, self.x1 = nice(min(xs), False), nice(max(xs), True)
        self.y0, self.y1 = nice(min(ys), False), nice(max(ys), True)

    def x(self, v):
        return LEFT + (math.log10(v) - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def y(self, v):
        return H - BOTTOM - (math.log10(v) - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)


def svg(medians, mode, source):
    bodies = sorted({b for b, _ in medians}, key=lambda b: (body_bytes(b), b.startswith("up")))
    targets = list(dict.fromkeys(t for _, t in medians))
    ax = Axes([body_bytes(b) for b in bodies], list(medians.values()))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{LEFT}" y="22" font-size="14">CPU per request against body size '
           f'({mode}, medians; {source})</text>']
    for e in range(math.floor(ax.y0), math.ceil(ax.y1) + 1):  # y grid: 1, 2, 5 per decade
        for m in (1, 2, 5):
            v = m * 10 ** e
            if not ax.y0 - 1e-9 <= math.log10(v) <= ax.y1 + 1e-9:
                continue
            y = ax.y(v)
            out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="{"#bbb" if m == 1 else "#eee"}"/>')
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for b in bodies:  # x grid: the measured sizes
        if b.startswith("up"):
            continue
        x = ax.x(body_bytes(b))
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{body_label(b)}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 18}" text-anchor="middle">'
               f'body size (log)</text>')
    out.append(f'<text transform="translate(18 {(TOP + H - BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">CPU µs per request (log)</text>')
    for i, t in enumerate(targets):
        colour = COLOURS.get(t, "#7f7f7f")
        points = [(ax.x(body_bytes(b)), ax.y(medians[b, t])) for b in bodies
                  if not b.startswith("up") and (b, t) in medians]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>' for x, y in points]
        for b in bodies:
            if b.startswith("up") and (b, t) in medians:
                # A little right of the response at the same size, so both stay visible.
                x, y = ax.x(body_bytes(b)) + 8, ax.y(medians[b, t])
                out.append(f'<rect x="{x - 4.5:.1f}" y="{y - 4.5:.1f}" width="9" height="9" '
                           f'fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = TOP + 10 + 20 * i
        out.append(f'<line x1="{W - RIGHT + 15}" x2="{W - RIGHT + 40}" y1="{ly}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{W - RIGHT + 46}" y="{ly + 4}">{t}</text>')
    if any(b.startswith("up") for b in bodies):
        ly = TOP + 10 + 20 * len(targets)
        out.append(f'<rect x="{W - RIGHT + 23}" y="{ly - 4.5}" width="9" height="9" fill="none" '
                   f'stroke="#555" stroke-width="2"/>')
        out.append(f'<text x="{W - RIGHT + 46}" y="{ly + 4}">upload (POST)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    source = sys.argv[1]
    target = sys.argv[2] if len(sys.argv) == 3 else re.sub(r"\.md$", "", source) + ".svg"
    rows, tck = read_runs(source)
    medians, mode = cpu_medians(rows, tck)
    if not medians:
        sys.exit(f"{source}: no sized runs to plot")
    with open(target, "w", encoding="utf-8") as f:
        f.write(svg(medians, mode, source.rsplit("/", 1)[-1]))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
