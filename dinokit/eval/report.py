"""Reports of evaluation results: a markdown file and an HTML twin with PNG figures, drawn with Pillow alone
(no plotting library is a dependency).

- `line_plot`: curves over training steps (e.g. the loss terms), linear axes with labelled ticks;
- `image_grid`: rows of equally sized pictures with column titles (laid out by `tools.viz.grid_canvas`);
- `Report`: headings, paragraphs, tables and figures, written as `report.md` and `report.html` (atomically).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_write_text
from ..tools.viz import grid_canvas, save_png

_CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "step",
    size: tuple[int, int] = (720, 400),
) -> Path:
    """Curves `{name: (xs, ys)}` on shared axes, with a legend; non-finite points are skipped."""
    path = Path(path)
    W, H = size
    left, right, top, bottom = 64, 150, 34, 44
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    points = {k: [(x, y) for x, y in zip(*v) if math.isfinite(y)] for k, v in series.items()}
    xs = [x for p in points.values() for x, _ in p] or [0.0, 1.0]
    ys = [y for p in points.values() for _, y in p] or [0.0, 1.0]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1e-9)
    y0, y1 = min(ys), max(ys)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (W - left - right), top + (y1 - y) / (y1 - y0) * (H - top - bottom)

    draw.rectangle([left, top, W - right, H - bottom], outline=(80, 80, 80))
    for t in _nice_ticks(y0, y1):
        _, y = px(x0, t)
        draw.line([left, y, W - right, y], fill=(232, 232, 232))
        draw.text((6, y - 6), f"{t:.4g}", fill=(60, 60, 60), font=font)
    for t in _nice_ticks(x0, x1):
        x, _ = px(t, y0)
        draw.line([x, H - bottom, x, H - bottom + 4], fill=(80, 80, 80))
        draw.text((x - 10, H - bottom + 8), f"{t:.4g}", fill=(60, 60, 60), font=font)
    draw.text(((W - right + left) // 2 - 12, H - 18), xlabel, fill=(60, 60, 60), font=font)
    draw.text((left, 10), title, fill=(0, 0, 0), font=font)
    for i, (name, pts) in enumerate(points.items()):
        colour = _CURVE_COLOURS[i % len(_CURVE_COLOURS)]
        if len(pts) > 1:
            draw.line([px(x, y) for x, y in pts], fill=colour, width=2)
        elif pts:
            x, y = px(*pts[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 8 + 18 * i
        draw.line([W - right + 10, ly + 6, W - right + 30, ly + 6], fill=colour, width=3)
        draw.text((W - right + 36, ly), name, fill=(0, 0, 0), font=font)
    save_png(np.asarray(img), path)
    return path


def image_grid(
    rows: Sequence[Sequence[np.ndarray]], path: str | os.PathLike, titles: Sequence[str] = (), cell: int = 160
) -> Path:
    """Pictures (`[h, w, 3]` uint8, resized to `cell × cell` by nearest neighbour) in a grid, titles on top."""
    path = Path(path)
    tiles = [[np.asarray(Image.fromarray(p).resize((cell, cell), Image.NEAREST)) for p in row] for row in rows]
    canvas = grid_canvas(tiles)
    if titles:
        strip = Image.new("RGB", (canvas.shape[1], 20), "white")
        draw = ImageDraw.Draw(strip)
        for j, t in enumerate(titles):
            draw.text((j * (cell + 8), 4), t, fill=(0, 0, 0), font=ImageFont.load_default())
        canvas = np.concatenate([np.asarray(strip), canvas])
    save_png(canvas, path)
    return path


class Report:
    """A document built block by block and written as markdown and HTML side by side."""

    def __init__(self, title: str) -> None:
        self.blocks: list[tuple[str, object]] = [("h1", title)]

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def code(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def figure(self, path: str, caption: str) -> None:
        """`path` relative to the report's folder."""
        self.blocks.append(("img", (path, caption)))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h1":
                out.append(f"# {value}")
            elif kind == "h2":
                out.append(f"## {value}")
            elif kind == "p":
                out.append(str(value))
            elif kind == "pre":
                out.append(f"```\n{value}\n```")
            elif kind == "table":
                header, rows = value
                out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                     + ["| " + " | ".join(r) + " |" for r in rows]))  # fmt: skip
            else:
                p, caption = value
                out.append(f"![{caption}]({p})\n\n*{caption}*")
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        e = html.escape
        out = []
        for kind, value in self.blocks:
            if kind in ("h1", "h2"):
                out.append(f"<{kind}>{e(str(value))}</{kind}>")
            elif kind == "p":
                out.append(f"<p>{e(str(value))}</p>")
            elif kind == "pre":
                out.append(f"<pre>{e(str(value))}</pre>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{e(h)}</th>" for h in header)
                body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                p, caption = value
                img = f'<img src="{e(p)}" alt="{e(caption)}">'
                out.append(f"<figure>{img}<figcaption>{e(caption)}</figcaption></figure>")
        style = (
            "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%}pre{background:#f6f6f6;padding:8px;"
            "overflow-x:auto}figcaption{color:#555;font-size:90%}"
        )
        title = e(str(self.blocks[0][1]))
        return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
                f"</head><body>\n" + "\n".join(out) + "\n</body></html>\n")  # fmt: skip

    def write(self, folder: str | os.PathLike, name: str = "report") -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for suffix, text in ((".md", self.markdown()), (".html", self.html())):
            paths.append(atomic_write_text(folder / f"{name}{suffix}", text))
        return paths[0], paths[1]
