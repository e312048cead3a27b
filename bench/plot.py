"""How the scale figures grow with N, drawn as a plain SVG by the benchmark.

    python bench/plot.py RESULTS.json OUT.svg

``run.py`` calls ``write`` after a full run's scale part (and with
``--plot``). Four panels, log-log: the time for N computes to enrol at once,
the status RPC's p99 with N + 1 nodes, the control's CPU for N members'
heartbeats, and the control's peak RSS; each with its target as a dashed
line. No plotting library: a few lines of SVG are all it takes, and the
benchmark needs nothing beyond the product's own dependencies.
"""

from __future__ import annotations

import json
import math
import sys
from html import escape
from pathlib import Path
from typing import Any

W, H = 360, 250  # one panel
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 30, 42


def _series(r: dict[str, Any]) -> list[tuple[str, str, float, list[tuple[float, float]]]]:
    """(title, unit, target, points) per panel."""
    scale = r.get("scale", [])

    def points(get: Any) -> list[tuple[float, float]]:
        out = []
        for s in scale:
            try:
                value = get(s)
            except (KeyError, TypeError):
                continue
            if value and value > 0:
                out.append((float(s["nodes"]), float(value)))
        return out

    return [
        ("N computes enrolling at once: total", "s", 60.0, points(lambda s: s["seconds"])),
        (
            "status RPC p99 (N + 1 nodes)",
            "ms",
            100.0,
            points(lambda s: s["status"]["rpc"]["p99_ms"]),
        ),
        (
            "N members' heartbeats: control CPU",
            "% of a core",
            10.0,
            points(lambda s: s["heartbeats"]["control_cpu_pct_of_one_core"]),
        ),
        ("control peak RSS (enrolment)", "MB", 1024.0, points(lambda s: s["control_rss_mb"])),
    ]


def _ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten, with 2 and 5 between when the range is short."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1, 2, 5) if last - first <= 3 else (1,)
    return [m * 10**e for e in range(first, last + 1) for m in steps if lo <= m * 10**e <= hi]


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _panel(x0: float, y0: float, title: str, unit: str, target: float, pts: list[Any]) -> str:
    parts = [
        f'<text x="{x0 + LEFT}" y="{y0 + 18}" class="t">{escape(title)} ({escape(unit)})</text>'
    ]
    if not pts:
        parts.append(f'<text x="{x0 + LEFT}" y="{y0 + H / 2}">not measured</text>')
        return "\n".join(parts)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts] + [target]
    xlo, xhi = min(xs) / 1.5, max(xs) * 1.5
    ylo, yhi = min(ys) / 2, max(ys) * 2
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return x0 + LEFT + pw * (math.log10(x) - math.log10(xlo)) / math.log10(xhi / xlo)

    def py(y: float) -> float:
        return y0 + TOP + ph * (1 - (math.log10(y) - math.log10(ylo)) / math.log10(yhi / ylo))

    parts.append(f'<rect x="{x0 + LEFT}" y="{y0 + TOP}" width="{pw}" height="{ph}" class="frame"/>')
    for t in _ticks(xlo, xhi):
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{y0 + TOP}" '
                     f'y2="{y0 + TOP + ph}" class="grid"/>')  # fmt: skip
        parts.append(
            f'<text x="{px(t):.1f}" y="{y0 + TOP + ph + 16}" class="xt">{_label(t)}</text>'
        )
    for t in _ticks(ylo, yhi):
        parts.append(f'<line x1="{x0 + LEFT}" x2="{x0 + LEFT + pw}" y1="{py(t):.1f}" '
                     f'y2="{py(t):.1f}" class="grid"/>')  # fmt: skip
        parts.append(f'<text x="{x0 + LEFT - 6}" y="{py(t) + 4:.1f}" class="yt">{_label(t)}</text>')
    parts.append(
        f'<line x1="{x0 + LEFT}" x2="{x0 + LEFT + pw}" y1="{py(target):.1f}" '
        f'y2="{py(target):.1f}" class="target"/>'
        f'<text x="{x0 + LEFT + pw - 4}" y="{py(target) - 4:.1f}" class="yt">target</text>'
    )
    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
    parts.append(f'<polyline points="{path}" class="line"/>')
    for x, y in pts:
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" class="dot"/>')
        parts.append(f'<text x="{px(x) + 5:.1f}" y="{py(y) - 6:.1f}" class="v">{y:,.3g}</text>')
    parts.append(f'<text x="{x0 + LEFT + pw / 2}" y="{y0 + H - 8}" class="xt">N (computes)</text>')
    return "\n".join(parts)


def svg(r: dict[str, Any]) -> str:
    panels = _series(r)
    body = [_panel((i % 2) * W, (i // 2) * H, *panel) for i, panel in enumerate(panels)]
    started = escape(str(r.get("started", "")))
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{2 * H + 24}" \
font-family="sans-serif" font-size="11">
<style>
.t {{ font-weight: bold; }} .xt {{ text-anchor: middle; }} .yt {{ text-anchor: end; }}
.frame {{ fill: none; stroke: #888; }} .grid {{ stroke: #e4e4e4; }}
.target {{ stroke: #c33; stroke-dasharray: 5 4; }} .line {{ fill: none; stroke: #1f5fa8; \
stroke-width: 2; }} .dot {{ fill: #1f5fa8; }} .v {{ fill: #1f5fa8; font-size: 10px; }}
</style>
<rect width="100%" height="100%" fill="white"/>
{chr(10).join(body)}
<text x="8" y="{2 * H + 16}" font-size="10">bench/run.py, run of {started}: \
log-log; dashed: the target</text>
</svg>
"""


def write(r: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg(r))


if __name__ == "__main__":
    write(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
