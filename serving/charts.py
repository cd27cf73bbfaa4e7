"""Server-side SVG charts for the web view (hand-written SVG: no JavaScript, no chart library,
nothing fetched from the network).

Every chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that states its
content in words (a screen reader gets the numbers, not only a picture), and every series is
told apart by line style, marker shape or fill pattern as well as by colour, with a text legend.
Ids inside an SVG carry a prefix (``uid``) because several charts share one page.

Wording: the boundary a score crosses when a client is not on track is called the
"not-on-track boundary" here (the assessment's ``failure_boundary`` field).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Colours: WCAG AA against white for lines and text (>= 4.5:1 for text, >= 3:1 for graphics).
INK = "#1f2937"
MUTED = "#4b5563"
EXPECTED = "#1d4ed8"
BAND = "#dbeafe"
BOUNDARY = "#b91c1c"
CONFORMAL = "#6d28d9"  # the conformal band's outline (about 7:1 against white)
CONFORMAL_DASH = "6 3 1.5 3"  # dash-dot: unlike the expected course's and boundary's dashes
RAISES = "#b45309"
LOWERS = "#0f766e"
GRID = "#e5e7eb"

W, H = 640, 356
LEFT, RIGHT, TOP, BOTTOM = 52, 20, 16, 250  # plot area: x LEFT..W-RIGHT, y TOP..BOTTOM


def _f(x: float) -> str:
    """A number as a short label (no trailing .0)."""
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + 1e-9:
        out.append(round(v, 6))
        v += step
    return out


@dataclass(frozen=True)
class CoursePoint:
    session: int
    expected: float
    lower: float
    upper: float
    boundary: float
    band_lower: float | None = None  # the conformal 90% band (None: the model has none)
    band_upper: float | None = None


class _Frame:
    """Scales and axes of one session-by-score chart."""

    def __init__(self, sessions: Sequence[int], y_min: float, y_max: float) -> None:
        self.x_lo = 1
        self.x_hi = max(2, max(sessions, default=2))
        self.y_lo, self.y_hi = float(y_min), float(y_max)

    def x(self, s: float) -> float:
        return LEFT + (s - self.x_lo) / (self.x_hi - self.x_lo) * (W - RIGHT - LEFT)

    def y(self, v: float) -> float:
        v = min(max(v, self.y_lo), self.y_hi)
        return BOTTOM - (v - self.y_lo) / (self.y_hi - self.y_lo) * (BOTTOM - TOP)

    def axes(self, y_label: str) -> list[str]:
        out = []
        for t in _ticks(self.y_lo, self.y_hi):
            y = self.y(t)
            out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="{GRID}" stroke-width="1"/>')
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
                       f'font-size="12" fill="{MUTED}">{_f(t)}</text>')
        step = max(1, math.ceil((self.x_hi - self.x_lo) / 12))
        for s in range(self.x_lo, self.x_hi + 1, step):
            x = self.x(s)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{BOTTOM}" y2="{BOTTOM + 4}" '
                       f'stroke="{MUTED}"/>')
            out.append(f'<text x="{x:.1f}" y="{BOTTOM + 18}" text-anchor="middle" '
                       f'font-size="12" fill="{MUTED}">{s}</text>')
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{BOTTOM}" y2="{BOTTOM}" '
                   f'stroke="{MUTED}"/>')
        out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{BOTTOM}" stroke="{MUTED}"/>')
        out.append(f'<text x="{(LEFT + W - RIGHT) / 2:.0f}" y="{BOTTOM + 34}" '
                   f'text-anchor="middle" font-size="12" fill="{INK}">Session</text>')
        out.append(f'<text transform="translate(14 {(TOP + BOTTOM) / 2:.0f}) rotate(-90)" '
                   f'text-anchor="middle" font-size="12" fill="{INK}">{escape(y_label)}</text>')
        return out


def _svg(uid: str, title: str, desc: str, body: list[str], height: int = H) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" role="img" '
            f'aria-labelledby="{uid}-title {uid}-desc" class="chart" '
            f'preserveAspectRatio="xMidYMid meet" font-family="system-ui, sans-serif">'
            f'<title id="{uid}-title">{escape(title)}</title>'
            f'<desc id="{uid}-desc">{escape(desc)}</desc>' + "".join(body) + "</svg>")


def _hatch(pid: str, colour: str, bg: str) -> str:
    return (f'<defs><pattern id="{pid}" width="8" height="8" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate(45)"><rect width="8" height="8" fill="{bg}"/>'
            f'<line x1="0" y1="0" x2="0" y2="8" stroke="{colour}" stroke-width="2" '
            f'stroke-opacity="0.45"/></pattern></defs>')


def _legend(items: list[tuple[str, str]], y: float) -> list[str]:
    """Legend entries (svg sample, label) in rows that fit the width."""
    out, x = [], LEFT
    for sample, label in items:
        width = 34 + 7 * len(label)
        if x + width > W - RIGHT and x > LEFT:
            x, y = LEFT, y + 20
        out.append(f'<g transform="translate({x:.0f} {y:.0f})">{sample}'
                   f'<text x="30" y="4" font-size="12" fill="{INK}">{escape(label)}</text></g>')
        x += width
    return out


def _polyline(points: list[tuple[float, float]], **attrs: str) -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    extra = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<polyline points="{pts}" fill="none" {extra}/>'


def _conformal_words(c: CoursePoint, to: str) -> str:
    """The words ', 90% conformal band a to b' for a point that has one, else nothing."""
    if c.band_lower is None or c.band_upper is None:
        return ""
    return f", 90% conformal band {_f(c.band_lower)}{to}{_f(c.band_upper)}"


def trajectory_svg(uid: str, instrument: str, observed: Sequence[tuple[int, float]],
                   course: Sequence[CoursePoint], *, y_min: float, y_max: float,
                   cutoff: float | None, higher_is_better: bool,
                   latest_label: str | None = None) -> str:
    """Observed scores (solid line, round markers) against the expected course (long-dashed
    line), its band (hatched area), the conformal 90% band when the course has one (an
    outline only, dash-dotted) and the not-on-track boundary (short-dashed line with cross
    markers); the clinical cut-off as a dotted line."""
    sessions = [s for s, _ in observed] + [c.session for c in course]
    fr = _Frame(sessions, y_min, y_max)
    direction = "higher is better" if higher_is_better else "higher is more severe"
    body = [_hatch(f"{uid}-band", EXPECTED, BAND)] + fr.axes(f"{instrument} ({direction})")
    banded = [c for c in course if c.band_lower is not None and c.band_upper is not None]
    if course:
        top = [(fr.x(c.session), fr.y(c.upper)) for c in course]
        bottom = [(fr.x(c.session), fr.y(c.lower)) for c in reversed(course)]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in top + bottom)
        body.append(f'<polygon points="{pts}" fill="url(#{uid}-band)" stroke="{EXPECTED}" '
                    'stroke-width="0.5" stroke-opacity="0.5"/>')
    if banded:
        top = [(fr.x(c.session), fr.y(c.band_upper)) for c in banded]
        bottom = [(fr.x(c.session), fr.y(c.band_lower)) for c in reversed(banded)]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in top + bottom)
        body.append(f'<polygon points="{pts}" fill="none" stroke="{CONFORMAL}" '
                    f'stroke-width="1.5" stroke-dasharray="{CONFORMAL_DASH}"/>')
    if course:
        body.append(_polyline([(fr.x(c.session), fr.y(c.expected)) for c in course],
                              stroke=EXPECTED, stroke_width="2", stroke_dasharray="10 5"))
        body.append(_polyline([(fr.x(c.session), fr.y(c.boundary)) for c in course],
                              stroke=BOUNDARY, stroke_width="2.5", stroke_dasharray="4 4"))
        for c in course:
            x, y = fr.x(c.session), fr.y(c.boundary)
            body.append(f'<path d="M{x - 4:.1f},{y - 4:.1f}l8,8m0,-8l-8,8" stroke="{BOUNDARY}" '
                        f'stroke-width="2"><title>Session {c.session}: expected '
                        f'{_f(c.expected)}, band {_f(c.lower)}–{_f(c.upper)}'
                        f'{_conformal_words(c, "–")}, not-on-track '
                        f'boundary {_f(c.boundary)}</title></path>')
    if cutoff is not None:
        y = fr.y(cutoff)
        body.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{MUTED}" stroke-width="1.5" stroke-dasharray="1 4" '
                    'stroke-linecap="round"/>')
        body.append(f'<text x="{W - RIGHT - 4}" y="{y - 5:.1f}" text-anchor="end" '
                    f'font-size="11" fill="{MUTED}">clinical cut-off {_f(cutoff)}</text>')
    if observed:
        body.append(_polyline([(fr.x(s), fr.y(v)) for s, v in observed], stroke=INK,
                              stroke_width="2.5"))
        for i, (s, v) in enumerate(observed):
            last = i == len(observed) - 1
            body.append(f'<circle cx="{fr.x(s):.1f}" cy="{fr.y(v):.1f}" r="{6 if last else 4}" '
                        f'fill="{INK if not last else "#ffffff"}" stroke="{INK}" '
                        f'stroke-width="2.5"><title>Session {s}: {instrument} {_f(v)}'
                        f'</title></circle>')
        s, v = observed[-1]
        label = latest_label or f"latest {_f(v)}"
        body.append(f'<text x="{fr.x(s) + (-10 if s == fr.x_hi else 10):.1f}" '
                    f'y="{max(fr.y(v) - 10, TOP + 12):.1f}" text-anchor="{"end" if s == fr.x_hi else "start"}" '
                    f'font-size="12" font-weight="bold" fill="{INK}">{escape(label)}</text>')
    legend = [(f'<line x1="0" x2="24" y1="0" y2="0" stroke="{INK}" stroke-width="2.5"/>'
               f'<circle cx="12" cy="0" r="4" fill="{INK}"/>', "observed score")]
    if course:
        legend += [
            (f'<line x1="0" x2="24" y1="0" y2="0" stroke="{EXPECTED}" stroke-width="2" '
             'stroke-dasharray="10 5"/>', "expected course"),
            (f'<rect x="0" y="-7" width="24" height="14" fill="url(#{uid}-band)" '
             f'stroke="{EXPECTED}" stroke-width="0.5"/>', "expected band"),
            *([(f'<rect x="0" y="-7" width="24" height="14" fill="none" stroke="{CONFORMAL}" '
                f'stroke-width="1.5" stroke-dasharray="{CONFORMAL_DASH}"/>',
                "90% conformal band")] if banded else []),
            (f'<line x1="0" x2="24" y1="0" y2="0" stroke="{BOUNDARY}" stroke-width="2.5" '
             f'stroke-dasharray="4 4"/><path d="M8,-4l8,8m0,-8l-8,8" stroke="{BOUNDARY}" '
             'stroke-width="2"/>', "not-on-track boundary"),
        ]
    if cutoff is not None:
        legend.append((f'<line x1="0" x2="24" y1="0" y2="0" stroke="{MUTED}" stroke-width="1.5" '
                       'stroke-dasharray="1 4" stroke-linecap="round"/>', "clinical cut-off"))
    body += _legend(legend, BOTTOM + 58)

    obs = ", ".join(f"session {s}: {_f(v)}" for s, v in observed) or "none"
    desc = f"{instrument} scores ({direction}). Observed: {obs}."
    if course:
        desc += " Expected course: " + "; ".join(
            f"session {c.session}: expected {_f(c.expected)}, band {_f(c.lower)} to "
            f"{_f(c.upper)}{_conformal_words(c, ' to ')}, not-on-track boundary "
            f"{_f(c.boundary)}" for c in course) + "."
    else:
        desc += " No expected course is available for this instrument."
    if cutoff is not None:
        desc += f" Clinical cut-off: {_f(cutoff)}."
    return _svg(uid, f"{instrument} scores by session", desc, body)


def alliance_svg(uid: str, instrument: str, observed: Sequence[tuple[int, float]], *,
                 y_min: float, y_max: float, cutoff: float | None) -> str:
    """Alliance ratings (solid line, square markers) with the cut-off below which a rating
    signals a possible alliance problem (hatched zone + dotted line + label)."""
    fr = _Frame([s for s, _ in observed], y_min, y_max)
    body = [_hatch(f"{uid}-zone", BOUNDARY, "#fef2f2")] + fr.axes(f"{instrument} (higher is "
                                                                  "better)")
    if cutoff is not None:
        y = fr.y(cutoff)
        body.append(f'<rect x="{LEFT}" y="{y:.1f}" width="{W - RIGHT - LEFT}" '
                    f'height="{BOTTOM - y:.1f}" fill="url(#{uid}-zone)"/>')
        body.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{BOUNDARY}" stroke-width="2" stroke-dasharray="1 4" '
                    'stroke-linecap="round"/>')
        body.append(f'<text x="{W - RIGHT - 4}" y="{max(y - 6, TOP + 10):.1f}" '
                    f'text-anchor="end" font-size="11" fill="{BOUNDARY}">below {_f(cutoff)}: possible alliance '
                    'problem</text>')
    if observed:
        body.append(_polyline([(fr.x(s), fr.y(v)) for s, v in observed], stroke=INK,
                              stroke_width="2.5"))
        for s, v in observed:
            x, y = fr.x(s), fr.y(v)
            below = cutoff is not None and v < cutoff
            body.append(f'<rect x="{x - 4.5:.1f}" y="{y - 4.5:.1f}" width="9" height="9" '
                        f'fill="{"#ffffff" if below else INK}" stroke="{INK}" stroke-width="2">'
                        f'<title>Session {s}: {instrument} {_f(v)}'
                        f'{" (below the cut-off)" if below else ""}</title></rect>')
    legend = [(f'<line x1="0" x2="24" y1="0" y2="0" stroke="{INK}" stroke-width="2.5"/>'
               f'<rect x="7.5" y="-4.5" width="9" height="9" fill="{INK}"/>',
               "alliance rating (hollow square: below the cut-off)")]
    if cutoff is not None:
        legend.append((f'<rect x="0" y="-7" width="24" height="14" fill="url(#{uid}-zone)"/>',
                       "below the cut-off"))
    body += _legend(legend, BOTTOM + 58)
    obs = ", ".join(f"session {s}: {_f(v)}" for s, v in observed) or "none"
    desc = f"{instrument} alliance ratings (higher is better). Observed: {obs}."
    if cutoff is not None:
        low = [s for s, v in observed if v < cutoff]
        desc += (f" Cut-off {_f(cutoff)}; below it at session(s) "
                 f"{', '.join(map(str, low))}." if low else
                 f" Cut-off {_f(cutoff)}; no rating below it.")
    return _svg(uid, f"{instrument} alliance ratings by session", desc, body)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # signed percentage points (+ raises the risk)


def drivers_svg(uid: str, bars: Sequence[Bar]) -> str:
    """Signed horizontal bars, largest effect first: raises the risk to the right (hatched),
    lowers it to the left (solid), each labelled with its concept, direction and size."""
    bars = sorted(bars, key=lambda b: -abs(b.value))
    row, top = 34, 28
    height = top + row * max(len(bars), 1) + 20
    label_w, x0, x1 = 230, 236, W - 70
    zero = (x0 + x1) / 2
    span = max((abs(b.value) for b in bars), default=1.0) or 1.0
    half = (x1 - x0) / 2
    body = [_hatch(f"{uid}-up", RAISES, "#fde68a"),
            f'<text x="{zero - 6:.0f}" y="16" text-anchor="end" font-size="12" '
            f'fill="{LOWERS}">◀ lowers the risk</text>',
            f'<text x="{zero + 6:.0f}" y="16" font-size="12" fill="{RAISES}">raises the risk ▶'
            '</text>',
            f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="{top - 6}" y2="{height - 14}" '
            f'stroke="{MUTED}" stroke-width="1.5"/>']
    for i, b in enumerate(bars):
        y = top + i * row
        w = abs(b.value) / span * half
        up = b.value > 0
        x = zero if up else zero - w
        words = f"{'raises' if up else 'lowers'} by {abs(b.value):.1f} points"
        fill = f"url(#{uid}-up)" if up else LOWERS
        body.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13" '
                    f'fill="{INK}">{escape(b.label)}</text>')
        body.append(f'<rect x="{x:.1f}" y="{y + 5}" width="{max(w, 1.5):.1f}" height="18" '
                    f'fill="{fill}" stroke="{RAISES if up else LOWERS}" stroke-width="1.5">'
                    f'<title>{escape(b.label)}: {words}</title></rect>')
        tx = zero + w + 6 if up else zero - w - 6
        body.append(f'<text x="{tx:.1f}" y="{y + 18}" text-anchor="{"start" if up else "end"}" '
                    f'font-size="12" fill="{INK}">{"+" if up else "−"}{abs(b.value):.1f}</text>')
    desc = ("Drivers of the risk, largest first, in approximate percentage points: "
            + "; ".join(f"{b.label} {'raises' if b.value > 0 else 'lowers'} the risk by "
                        f"{abs(b.value):.1f}" for b in bars) + "." if bars else
            "No drivers are available.")
    return _svg(uid, "What drives the risk estimate", desc, body, height=height)
