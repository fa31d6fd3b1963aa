"""The report's documents: sections of paragraphs, plots and tables, written as Markdown (PNGs
linked beside it) and as one self-contained HTML page (PNGs inline as base64 data URIs, inline
CSS, no script, no external link).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import longctx

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

@dataclass
class Plot:
    """A PNG of the report (written beside report.md, inlined into report.html)."""

    path: Path
    alt: str  # title of the plot (alt text, Markdown label)


@dataclass
class Table:
    """A table of formatted values; columns from ``left`` on are right-aligned numbers."""

    head: list[str]
    body: list[list[str]]
    left: int = 2  # leading text columns
    html: str | None = None  # a hand-made HTML rendering (the Markdown uses head/body)


Block = str | Plot | Table  # a str is one paragraph


@dataclass
class Section:
    """One card of the HTML page, one ``##`` heading of the Markdown."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    css: str = ""  # extra class of the card, e.g. "findings"

    @property
    def anchor(self) -> str:
        """``"Task: mqar"`` -> ``"task-mqar"`` (the HTML id, the Markdown slug)."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


# -- Markdown ----------------------------------------------------------------------------------

def _md_row(values: list[str]) -> str:
    return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"


def markdown_table(table: Table) -> list[str]:
    """The table as Markdown lines (header, alignment row, body)."""
    align = ["---" if i < table.left else "---:" for i in range(len(table.head))]
    return [_md_row(table.head), _md_row(align), *map(_md_row, table.body)]


def markdown_section(section: Section) -> list[str]:
    """``## title``, then each block followed by a blank line."""
    lines = [f"## {section.title}", ""]
    for block in section.blocks:
        if isinstance(block, Plot):
            lines += [f"![{block.alt}]({block.path.name})", ""]
        elif isinstance(block, Table):
            lines += [*markdown_table(block), ""]
        else:
            lines += [block, ""]
    return lines


def markdown(title: str, header: dict[str, str], sections: list[Section]) -> str:
    """The whole Markdown report: title, the header facts as a list, the sections."""
    lines = [f"# {title}", ""]
    lines += [f"- **{k}:** {v}" for k, v in header.items()]
    lines.append("")
    for section in sections:
        lines += markdown_section(section)
    return "\n".join(lines).rstrip() + "\n"


# -- HTML --------------------------------------------------------------------------------------

def data_uri(path: Path) -> str:
    """The PNG at ``path`` as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_table(table: Table) -> str:
    """The table in a horizontally scrolling box; numeric columns right-aligned."""
    if table.html is not None:
        return table.html
    esc = html.escape

    def cells(values: list[str], tag: str) -> str:
        return "".join(f'<{tag} class="num">{esc(v)}</{tag}>' if i >= table.left
                       else f"<{tag}>{esc(v)}</{tag}>" for i, v in enumerate(values))

    rows = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in table.body)
    return (f'<div class="scroll"><table><thead><tr>{cells(table.head, "th")}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` in pixels, from the PNG's IHDR chunk; ValueError if not a PNG."""
    head = path.read_bytes()[:24]
    if head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError(f"png_size: {path} is not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def html_plot(plot: Plot) -> str:
    """A ``<figure>`` with the PNG inlined and its file name as caption. The image is shown at
    2/3 of its pixel width (150 dpi plots at 100 CSS px per inch: one font size across plots),
    never wider than the card."""
    alt = html.escape(plot.alt)
    width = round(png_size(plot.path)[0] / 1.5)
    return (f'<figure><img alt="{alt}" style="width:{width}px" src="{data_uri(plot.path)}">'
            f"<figcaption>{html.escape(plot.path.name)}</figcaption></figure>")


def html_section(section: Section) -> str:
    """One card: heading with an anchor, then the blocks in order."""
    parts = []
    for block in section.blocks:
        if isinstance(block, Plot):
            parts.append(html_plot(block))
        elif isinstance(block, Table):
            parts.append(html_table(block))
        else:
            parts.append(f"<p>{html.escape(block)}</p>")
    css = f"card {section.css}".strip()
    return (f'<section class="{css}" id="{section.anchor}"><h2>{html.escape(section.title)}'
            f"</h2>{''.join(parts)}</section>")


def html_page(title: str, subtitle: str, stats: dict[str, str], sections: list[Section],
              footer: str) -> str:
    """The whole page: header band, stat tiles, a contents line, the section cards."""
    esc = html.escape
    tiles = "".join(f'<div class="stat"><span>{esc(k)}</span><b>{esc(v)}</b></div>'
                    for k, v in stats.items())
    nav = " · ".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(html_section(s) for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body><header><div class="wrap"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></div></header>
<main><div class="stats">{tiles}</div>
<nav class="card">{nav}</nav>
{body}
<footer>{esc(footer)} (longctx {esc(longctx.__version__)}).</footer>
</main></body></html>
"""


CSS = """
:root{--ink:#1f2430;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--accent:#3b5bdb;
--good:#2f9e44;--mid:#f08c00;--bad:#e03131}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);line-height:1.55;
font:15px/1.55 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{background:linear-gradient(120deg,#243b6b,#3b5bdb);color:#fff;padding:40px 24px 72px}
header .wrap,main{max-width:1120px;margin:0 auto}
header h1{margin:0 0 6px;font-size:30px;letter-spacing:-.01em}
header p{margin:0;opacity:.85}
main{padding:0 24px 48px;margin-top:-48px}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px}
.stat,.card{background:var(--card);border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.stat{padding:14px 18px}
.stat b{display:block;font-size:20px;overflow-wrap:anywhere}
.stat span{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em}
.card{padding:22px 26px;margin-top:20px}
nav.card{padding:12px 26px;font-size:14px}
nav a{color:var(--accent);text-decoration:none}nav a:hover{text-decoration:underline}
h2{margin:0 0 12px;font-size:19px}
.card p{margin:6px 0 12px;max-width:86ch}
.findings{border-left:4px solid var(--accent)}
.findings p{margin:6px 0;max-width:78ch}
figure{margin:8px 0 16px}figure img{max-width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:13px;margin-top:6px}
.scroll{overflow-x:auto;margin-bottom:12px}
table{border-collapse:collapse;width:100%;font-size:14px;font-variant-numeric:tabular-nums}
th,td{padding:7px 12px;border-bottom:1px solid var(--line);white-space:nowrap}
th{text-align:left;color:var(--muted);font-weight:600;font-size:12px;text-transform:uppercase;
letter-spacing:.04em;border-bottom:2px solid var(--line)}
td.num,th.num{text-align:right}
tbody tr:hover{background:#f1f3f9}
tr.pub td{color:var(--muted)}tr.sep td{border-top:2px solid var(--line)}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:8px}
td.acc{background:linear-gradient(90deg,var(--c) var(--w),transparent var(--w));
background-size:100% 4px;background-repeat:no-repeat;background-position:bottom}
td.good{--c:var(--good)}td.mid{--c:var(--mid)}td.bad{--c:var(--bad)}
footer{color:var(--muted);font-size:13px;text-align:center;margin-top:28px}
"""
