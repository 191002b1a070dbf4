"""bench_plot.py: a line chart as a small SVG, standard library only.

render(title, series, events) returns the SVG text:
  series  [(name, colour, [(x, y), ...])]: one <polyline> each, in the legend;
          drawn last to first, so the first is on top
  events  [(x, label)]: a dashed vertical line each, labelled at its top

Sized for ~800x300 px (GitHub shows it inline from markdown with
![...](file.svg)): a white background so it stays legible on a dark page,
coordinates rounded to 0.1 px so a 20 s run at 100 ms stays a few KiB.
Text widths are estimated (no font metrics without a renderer), generously,
so labels that would collide are moved to another row instead.
"""
import math
from xml.sax.saxutils import escape, quoteattr

W, H = 800, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 30, 62
FONT = 12
X0, X1, Y0, Y1 = LEFT, W - RIGHT, H - BOTTOM, TOP  # Y0 is the x axis


def nice_step(span, parts):
    """1, 2 or 5 times a power of ten, cutting span into `parts` or more
    (up to 2.5 times as many)."""
    raw = span / parts if span > 0 else 1.0
    p = 10 ** math.floor(math.log10(raw))
    return next(m * p for m in (5, 2, 1) if m * p <= raw * 1.001)


def num(v):
    """A coordinate: 0.1 px is below what a screen shows."""
    s = "%.1f" % v
    return s[:-2] if s.endswith(".0") else s


def tick_label(v):
    return "%g" % round(v, 6)


def text_width(s, size=FONT):
    # Sans-serif averages ~0.55 em a character; 0.62 errs on the wide side.
    return 0.62 * size * len(s)


def text(x, y, s, anchor="start", size=FONT, extra=""):
    return '<text x="%s" y="%s" font-size="%d" text-anchor="%s"%s>%s</text>' % (
        num(x), num(y), size, anchor, extra, escape(s))


def render(title, series, events, xlabel="seconds since the start", ylabel="Mbit/s"):
    xs = [x for _, _, pts in series for x, _ in pts] + [x for x, _ in events]
    ys = [y for _, _, pts in series for _, y in pts]
    # The x axis ends with the data (a run ends at 20.05 s, not 25 s).
    xmax = max(xs, default=1.0) or 1.0
    xstep = nice_step(xmax, 6)
    ystep = nice_step(max(ys, default=1.0) * 1.05, 4)
    ymax = max(ystep, math.ceil(max(ys, default=1.0) * 1.05 / ystep) * ystep)

    def px(x):
        return X0 + (X1 - X0) * x / xmax

    def py(y):
        return Y0 - (Y0 - Y1) * y / ymax

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif">' % (W, H, W, H),
           '<rect width="100%" height="100%" fill="#fff"/>',
           text(X0, 18, title, size=14, extra=' font-weight="bold"')]
    # Grid and y ticks.
    k = 0
    while k * ystep <= ymax + 1e-9:
        y = py(k * ystep)
        out.append('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#ddd"/>' % (
            num(X0), num(y), num(X1), num(y)))
        out.append(text(X0 - 6, y + 4, tick_label(k * ystep), anchor="end"))
        k += 1
    k = 0
    while k * xstep <= xmax + 1e-9:
        x = px(k * xstep)
        out.append('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#000"/>' % (
            num(x), num(Y0), num(x), num(Y0 + 5)))
        out.append(text(x, Y0 + 18, tick_label(k * xstep), anchor="middle"))
        k += 1
    out.append('<path d="M%s %sV%sH%s" fill="none" stroke="#000"/>' % (
        num(X0), num(Y1), num(Y0), num(X1)))
    out.append(text(X0 + (X1 - X0) / 2, Y0 + 34, xlabel, anchor="middle"))
    out.append(text(16, Y1 + (Y0 - Y1) / 2, ylabel, anchor="middle",
                    extra=' transform="rotate(-90 16 %s)"' % num(Y1 + (Y0 - Y1) / 2)))

    # Events under the data, their labels above it.
    labels, rows = [], []
    for x, label in sorted(events):
        ex = px(x)
        out.append('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#555" '
                   'stroke-dasharray="5,4"/>' % (num(ex), num(Y1), num(ex), num(Y0)))
        w = text_width(label)
        left, anchor = (ex + 4, "start") if ex + 4 + w <= X1 else (ex - 4 - w, "end")
        span = (left - 4, left + w + 4)
        row = next((r for r, used in enumerate(rows)
                    if all(span[1] <= a or span[0] >= b for a, b in used)), len(rows))
        if row == len(rows):
            rows.append([])
        rows[row].append(span)
        labels.append(text(ex + 4 if anchor == "start" else ex - 4, Y1 + 14 + 14 * row,
                           label, anchor=anchor,
                           extra=' stroke="#fff" stroke-width="3" paint-order="stroke"'))

    for name, colour, pts in reversed(series):  # the first on top
        out.append('<polyline fill="none" stroke=%s stroke-width="1.5" '
                   'stroke-linejoin="round" points="%s"/>' % (
                       quoteattr(colour),
                       " ".join("%s,%s" % (num(px(x)), num(py(y))) for x, y in pts)))
    out.extend(labels)

    # Legend: one row under the x axis label, centred.
    items = [(name, colour, 24 + 6 + text_width(name) + 18) for name, colour, _ in series]
    x = max(X0, (W - sum(w for _, _, w in items)) / 2)
    for name, colour, w in items:
        out.append('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke=%s stroke-width="3"/>' % (
            num(x), num(H - 12), num(x + 24), num(H - 12), quoteattr(colour)))
        out.append(text(x + 30, H - 8, name))
        x += w
    out.append("</svg>")
    return "\n".join(out) + "\n"
