"""Small charts drawn with PIL only (no matplotlib): training curves (one run, or several on one
chart), a labelled scatter with error bars, a confusion matrix and per-channel line panels (the
excitation figures of :mod:`se_hub.analysis.excitations`)."""
import math
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (110, 110, 110), (225, 225, 225)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 128, 0)]

Series = Tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)
Band = Tuple[int, Sequence[float], Sequence[float], Sequence[float]]  # (series index, xs, lows, highs)


def nice_ticks(lo: float, hi: float, count: int = 5) -> List[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    v = first
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _label(v: float) -> str:
    return f'{v:g}' if abs(v) >= 1e-3 or v == 0 else f'{v:.0e}'


def _tint(colour: Tuple[int, int, int], amount: float = 0.75) -> Tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in colour)


def _panel(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], title: str, series: Sequence[Series],
           font, y_range: Optional[Tuple[float, float]] = None, legend: str = 'top', markers: bool = True,
           colours: Optional[Sequence[Tuple[int, int, int]]] = None, bands: Sequence[Band] = ()) -> None:
    """One plot: ``series`` as lines (with point markers unless ``markers`` is off), ``bands``
    as tinted areas behind them. ``legend``: one row above the plot ('top'), a column right of it
    ('right': for many series), or none (''). ``colours``: one per series (default ``COLOURS`` in turn)."""
    x0, y0, x1, y1 = box  # the plot area, axes on its left and bottom edges
    colours = list(colours) if colours is not None else [COLOURS[i % len(COLOURS)] for i in range(len(series))]
    draw.text((x0, y0 - 16), title, fill=BLACK, font=font)
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if y is not None and math.isfinite(y)]
    ys += [y for _, _, lo, hi in bands for y in (*lo, *hi) if math.isfinite(y)]
    if not xs or not ys:
        draw.rectangle(box, outline=BLACK)
        return
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    yt = nice_ticks(*(y_range or (min(ys), max(ys))))
    y_lo, y_hi = yt[0], yt[-1]
    px = lambda x: x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)
    py = lambda y: y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0)
    for t in yt:  # horizontal grid and y ticks
        y = py(t)
        draw.line([(x0, y), (x1, y)], fill=LIGHT)
        draw.line([(x0 - 4, y), (x0, y)], fill=BLACK)
        text = _label(t)
        draw.text((x0 - 6 - draw.textlength(text, font=font), y - 6), text, fill=BLACK, font=font)
    step = max(1, math.ceil((x_hi - x_lo) / 8))
    t = math.ceil(x_lo)
    while t <= x_hi:  # integer x ticks (epochs)
        x = px(t)
        draw.line([(x, y1), (x, y1 + 4)], fill=BLACK)
        text = str(int(t))
        draw.text((x - draw.textlength(text, font=font) / 2, y1 + 6), text, fill=BLACK, font=font)
        t += step
    for i, bx, lo, hi in bands:  # behind the lines
        upper = [(px(x), py(y)) for x, y in zip(bx, hi)]
        lower = [(px(x), py(y)) for x, y in zip(bx, lo)]
        if len(upper) > 1:
            draw.polygon(upper + lower[::-1], fill=_tint(colours[i]))
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=BLACK)
    lx = x1  # legend 'top': one row above the plot, right-aligned
    for i, (name, sx, sy) in reversed(list(enumerate(series))):
        colour = colours[i]
        points = [(px(x), py(y)) for x, y in zip(sx, sy) if y is not None and math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2 if markers else 1)
        if markers:
            for x, y in points:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        if legend == 'top':
            lx -= draw.textlength(name, font=font) + 24
            draw.line([(lx, y0 - 10), (lx + 16, y0 - 10)], fill=colour, width=3)
            draw.text((lx + 20, y0 - 16), name, fill=BLACK, font=font)
            lx -= 10
    if legend == 'right':
        _legend_column(draw, (x1 + 14, y0), [name for name, _, _ in series], font, colours)


def _legend_column(draw: ImageDraw.ImageDraw, at: Tuple[float, float], names: Sequence[str], font,
                   colours: Optional[Sequence[Tuple[int, int, int]]] = None) -> None:
    """One row per series (colour swatch, name), downwards from ``at``."""
    for i, name in enumerate(names):
        x, y = at[0], at[1] + 14 * i
        colour = colours[i] if colours is not None else COLOURS[i % len(COLOURS)]
        draw.line([(x, y + 6), (x + 16, y + 6)], fill=colour, width=3)
        draw.text((x + 20, y), name, fill=BLACK, font=font)


def draw_sweep_curves(curves: Dict[str, Sequence[Dict]], path, title: str = '', metric: str = 'top1',
                      metric_title: str = 'val top-1 (%)') -> None:
    """The training curves of several runs on one chart (the paper's "training dynamics" figure):
    train loss (left) and a validation metric (right) per epoch, one line per run. ``curves``:
    {legend: rows with 'epoch', 'train_loss' and ``metric``}."""
    font = ImageFont.load_default()
    names = list(curves)
    legend_w = int(max([font.getlength(n) for n in names] + [40])) + 40
    img = Image.new('RGB', (760 + legend_w, 300), WHITE)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 4), title, fill=GREY, font=font)
    series = lambda key: [(n, [r['epoch'] for r in rows], [r.get(key) for r in rows]) for n, rows in curves.items()]
    _panel(draw, (55, 40, 360, 260), 'train loss', series('train_loss'), font, legend='')
    _panel(draw, (435, 40, 740, 260), metric_title, series(metric), font, legend='right')
    for x in (207, 587):
        draw.text((x - 15, 280), 'epoch', fill=GREY, font=font)
    img.save(path, format='PNG')


def draw_scatter(points: Sequence[Tuple[str, float, float, Optional[float]]], path, x_title: str, y_title: str,
                 title: str = '') -> None:
    """One labelled point per (name, x, y, y error) with a +-error bar, e.g. accuracy against cost."""
    font = ImageFont.load_default()
    names = [p[0] for p in points]
    legend_w = int(max([font.getlength(n) for n in names] + [40])) + 40
    img = Image.new('RGB', (560 + legend_w, 360), WHITE)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 70, 40, 540, 300
    draw.text((10, 4), title or f'{y_title} against {x_title}', fill=GREY, font=font)
    finite = [p for p in points if all(v is not None and math.isfinite(v) for v in p[1:3])]
    if not finite:
        draw.rectangle((x0, y0, x1, y1), outline=BLACK)
        img.save(path, format='PNG')
        return
    err = lambda p: p[3] if p[3] is not None and math.isfinite(p[3]) else 0.0
    xt = nice_ticks(min(p[1] for p in finite), max(p[1] for p in finite))
    yt = nice_ticks(min(p[2] - err(p) for p in finite), max(p[2] + err(p) for p in finite))
    px = lambda x: x0 + (x - xt[0]) / (xt[-1] - xt[0]) * (x1 - x0)
    py = lambda y: y1 - (y - yt[0]) / (yt[-1] - yt[0]) * (y1 - y0)
    for t in yt:
        draw.line([(x0, py(t)), (x1, py(t))], fill=LIGHT)
        text = _label(t)
        draw.text((x0 - 6 - draw.textlength(text, font=font), py(t) - 6), text, fill=BLACK, font=font)
    for t in xt:
        draw.line([(px(t), y1), (px(t), y1 + 4)], fill=BLACK)
        text = _label(t)
        draw.text((px(t) - draw.textlength(text, font=font) / 2, y1 + 6), text, fill=BLACK, font=font)
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=BLACK)
    draw.text(((x0 + x1) / 2 - draw.textlength(x_title, font=font) / 2, y1 + 22), x_title, fill=GREY, font=font)
    draw.text((x0, y0 - 16), y_title, fill=BLACK, font=font)
    for i, p in enumerate(points):
        if p not in finite:
            continue
        colour = COLOURS[i % len(COLOURS)]
        x, y, e = px(p[1]), py(p[2]), err(p)
        if e:
            draw.line([(x, py(p[2] - e)), (x, py(p[2] + e))], fill=colour, width=1)
            for yy in (py(p[2] - e), py(p[2] + e)):
                draw.line([(x - 3, yy), (x + 3, yy)], fill=colour, width=1)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((x + 6, y - 12), p[0], fill=colour, font=font)
    _legend_column(draw, (x1 + 14, y0), names, font)
    img.save(path, format='PNG')


def draw_curves(history: Sequence[Dict], path, title: str = '', loss_keys: Optional[Sequence[Tuple[str, str]]] = None,
                metric_keys: Optional[Sequence[Tuple[str, str]]] = None, metric_title: str = 'accuracy (%)',
                metric_range: Optional[Tuple[float, float]] = (0, 100)) -> None:
    """Losses (left) and validation metrics (right) per epoch, as a PNG. ``loss_keys`` /
    ``metric_keys``: (legend, row key) pairs; by default train / val loss and top-1, top-k (k as
    the rows name it) and EMA top-1."""
    font = ImageFont.load_default()
    epochs = [h['epoch'] for h in history]
    img = Image.new('RGB', (760, 300), WHITE)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 4), title, fill=GREY, font=font)
    if loss_keys is None:
        loss_keys = (('train loss', 'train_loss'), ('val loss', 'val_loss'))
    if metric_keys is None:
        k = next((key for key in history[-1] if key.startswith('top') and key != 'top1'), 'top5')
        metric_keys = (('val top-1', 'top1'), (f'val top-{k[3:]}', k), ('EMA top-1', 'ema_top1'))
    loss = [(name, epochs, [h.get(key) for h in history]) for name, key in loss_keys]
    acc = [(name, epochs, [h.get(key) for h in history]) for name, key in metric_keys
           if any(h.get(key) is not None for h in history)]
    _panel(draw, (55, 40, 360, 260), 'loss', loss, font)
    _panel(draw, (435, 40, 740, 260), metric_title, acc, font, y_range=metric_range)
    for x in (207, 587):
        draw.text((x - 15, 280), 'epoch', fill=GREY, font=font)
    img.save(path, format='PNG')


def draw_confusion(matrix: Sequence[Sequence[int]], true_names: Sequence[str], pred_names: Sequence[str],
                   path, title: str = '') -> None:
    """A confusion matrix (rows: true class, columns: predicted class) as a PNG heat map with counts."""
    font = ImageFont.load_default()
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    cell = max(18, min(48, 640 // max(1, rows, cols)))
    short = lambda s: s if len(s) <= 16 else s[:15] + '…'
    left = 14 + max([len(short(n)) for n in true_names] + [4]) * 6
    top = 34 + max([len(short(n)) for n in pred_names] + [4]) * 6
    title = title or 'confusion matrix (rows: true, columns: predicted)'
    width = max(left + cols * cell + 20, int(font.getlength(title)) + 12)
    img = Image.new('RGB', (width, top + rows * cell + 20), WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), title, fill=BLACK, font=font)
    peak = max([v for r in matrix for v in r] + [1])
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, v in enumerate(row):
            shade = int(255 * (1 - v / total * 0.85)) if v else 255
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=colour, outline=LIGHT)
            if cell >= 18 and (v or peak < 1000):
                text = str(v)
                draw.text((box[0] + (cell - draw.textlength(text, font=font)) / 2, box[1] + cell / 2 - 6), text,
                          fill=BLACK, font=font)
    for i, name in enumerate(true_names):
        text = short(name)
        draw.text((left - 6 - draw.textlength(text, font=font), top + i * cell + cell / 2 - 6), text,
                  fill=BLACK, font=font)
    for j, name in enumerate(pred_names):  # column labels, written vertically
        text = short(name)
        label = Image.new('RGB', (int(draw.textlength(text, font=font)) + 4, 14), WHITE)
        ImageDraw.Draw(label).text((2, 0), text, fill=BLACK, font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (left + j * cell + (cell - label.width) // 2, top - 4 - label.height))
    img.save(path, format='PNG')


def format_confusion(matrix: Sequence[Sequence[int]], true_names: Sequence[str], pred_names: Sequence[str]) -> str:
    """The confusion matrix as a text table (rows: true class, columns: predicted class)."""
    head = ['true \\ predicted'] + list(pred_names)
    body = [[name] + [str(v) for v in row] for name, row in zip(true_names, matrix)]
    widths = [max(len(r[k]) for r in [head] + body) for k in range(len(head))]
    lines = ['  '.join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [head] + body]
    return '\n'.join(lines)


Panel = Tuple[str, Sequence[Series], Sequence[Band]]  # (title, lines, tinted bands)


def draw_channel_panels(panels: Sequence[Panel], path, title: str = '', legend: Sequence[str] = (), columns: int = 2,
                        grey_last: bool = False, single_colour: bool = False, x_label: str = 'channel',
                        y_label: str = 'excitation', y_range: Optional[Tuple[float, float]] = None) -> None:
    """A grid of line panels over a shared x axis kind (channel index), one legend for all, as a
    PNG. Series ``i`` of every panel gets ``COLOURS[i]`` (``single_colour``: all but the last get
    ``COLOURS[0]``); ``grey_last`` draws each panel's last series in grey (a reference line)."""
    font = ImageFont.load_default()
    columns = max(1, columns)
    rows = max(1, math.ceil(len(panels) / columns))
    pw, ph = 380, 220  # one panel, margins included
    img = Image.new('RGB', (max(columns * pw + 20, int(font.getlength(title)) + 20), rows * ph + 50), WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((10, 6), title, fill=BLACK, font=font)

    def colour_of(i: int, n: int) -> Tuple[int, int, int]:
        if grey_last and i == n - 1:
            return GREY
        return COLOURS[0] if single_colour else COLOURS[i % len(COLOURS)]

    lx = 10  # the shared legend, one row under the title
    for i, name in enumerate(legend):
        draw.line([(lx, 30), (lx + 16, 30)], fill=colour_of(i, len(legend)), width=3)
        draw.text((lx + 20, 24), name, fill=BLACK, font=font)
        lx += 20 + draw.textlength(name, font=font) + 14
    for n, (name, series, bands) in enumerate(panels):
        r, c = divmod(n, columns)
        left, top = 10 + c * pw, 50 + r * ph
        box = (left + 50, top + 22, left + pw - 15, top + ph - 34)
        colours = [colour_of(i, len(series)) for i in range(len(series))]
        _panel(draw, box, name, series, font, y_range=y_range, markers=False, legend='', colours=colours,
               bands=bands)
        draw.text(((box[0] + box[2]) / 2 - draw.textlength(x_label, font=font) / 2, box[3] + 18), x_label,
                  fill=GREY, font=font)
        label = Image.new('RGB', (int(draw.textlength(y_label, font=font)) + 4, 14), WHITE)
        ImageDraw.Draw(label).text((2, 0), y_label, fill=GREY, font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (left, int((box[1] + box[3]) / 2 - label.height / 2)))
    img.save(path, format='PNG')
