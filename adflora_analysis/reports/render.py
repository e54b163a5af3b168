"""Write a report: ``report.md``, a self-contained ``index.html`` (figures embedded as data
URIs, so it opens from disk with no server), every figure as PNG, PDF (TrueType fonts) and
SVG, every table as CSV and LaTeX (booktabs)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError

_NUM = re.compile(r"<td>(-?(?:\d[\d.,]*(?:e[-+]?\d+)?|nan|inf))</td>")


@dataclass
class Section:
    """A titled part of the report: paragraphs (Markdown-lite text), figures and tables."""

    title: str
    text: list[str] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    table_notes: dict[str, str] = field(default_factory=dict)


def figure_check_line(problems: list[str], what: str) -> str:
    """The sentence a section prints after reading a drawn figure back against its table.

    >>> print(figure_check_line([], "points"))
    Figure check: the points drawn were read back and match the run's tables.
    >>> figure_check_line(["a: drawn ≠ table"], "points")
    'FIGURE CHECK FAILED (points): a: drawn ≠ table.'
    """
    if problems:
        return f"FIGURE CHECK FAILED ({what}): " + "; ".join(problems) + "."
    return f"Figure check: the {what} drawn were read back and match the run's tables."


def _hash8(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _slug(s: str, limit: int = 60) -> str:
    """A title as a safe file-name part: ASCII letters and digits, everything else ``-``;
    a long one is cut and gets 8 hex digits of its SHA-256 (titles hold run and variant names,
    which come from data).

    >>> _slug("toy: frozen block"), _slug("../../x"), len(_slug("a" * 500))
    ('toy--frozen-block', 'x', 69)
    """
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in s.lower()).strip("-")
    if len(slug) > limit or not slug:
        slug = f"{slug[:limit]}-{_hash8(s)}".strip("-")
    return slug


@dataclass
class Layout:
    """The file names of a report: per section its HTML id and, per table and figure, its
    file name (unique in the report: a name two titles share gets a hash suffix)."""

    ids: list[str]
    tables: list[dict[str, str]]
    figures: list[dict[str, str]]

    def files(self) -> list[str]:
        """Every path the report writes, relative to its folder."""
        out = ["report.md", "index.html"]
        for t in self.tables:
            out += [g for f in t.values() for g in (f"tables/{f}", f"tables/{f[:-4]}.tex")]
        for f in self.figures:
            out += [f"figures/{p[:-4]}{ext}" for p in f.values() for ext in FIGURE_EXTS]
        return out


#: The files written per figure (the PNG is also embedded in the HTML page).
FIGURE_EXTS = (".png", ".pdf", ".svg")


def layout(sections: list[Section]) -> Layout:
    """The :class:`Layout` of ``sections`` (what :func:`write_report` writes).

    >>> secs = [Section("a b", tables={"t": None}), Section("a-b", tables={"t": None})]
    >>> t = layout(secs).tables
    >>> t[0]["t"], t[1]["t"] != t[0]["t"]
    ('a-b-t.csv', True)
    """
    used: set[str] = set()

    def unique(base: str, key: str, ext: str = "") -> str:
        name = base
        if name + ext in used:
            name = f"{base}-{_hash8(key)}"
        k = 2
        while name + ext in used:
            name, k = f"{base}-{_hash8(f'{key}/{k}')}", k + 1
        used.add(name + ext)
        return name + ext

    ids, tables, figs = [], [], []
    for sec in sections:
        sid = unique(_slug(sec.title), sec.title)
        ids.append(sid)
        tables.append({n: unique(f"{sid}-{_slug(n)}", f"{sec.title}/{n}", ".csv")
                       for n in sec.tables})
        figs.append({n: unique(f"{sid}-{_slug(n)}", f"{sec.title}/{n}", ".png")
                     for n in sec.figures})
    return Layout(ids, tables, figs)


def inside(out: Path, path: Path) -> Path:
    """``path`` if, resolved, it lies inside the resolved ``out``; else one
    :class:`AdfloraError` (a name built from data must never reach outside the report)."""
    root, p = out.resolve(), path.resolve()
    if p != root and root not in p.parents:
        raise AdfloraError(f"refusing to write {str(path)!r}: it lies outside {str(out)!r}",
                           "a report writes only inside --out: choose an empty --out")
    return path


def _save_kw() -> dict:
    """``savefig`` keywords: on screen cropped to the drawing; a paper preset keeps the
    figure's exact width (3.5 or 7 in) and saves the PNG at print resolution."""
    from adflora_analysis.reports.figures import preset

    if preset().width is None:
        return {"dpi": 110, "bbox_inches": "tight"}
    return {"dpi": 300, "bbox_inches": None}


def _figure_bytes(fig: Figure, fmt: str) -> bytes:
    """``fig`` as ``fmt`` bytes, saved under the report's figure settings (TrueType fonts in
    PDF) inside an ``rc_context``: the global rcParams are untouched."""
    from adflora_analysis.reports.figures import rc

    buf = io.BytesIO()
    with matplotlib.rc_context(rc()):
        fig.savefig(buf, format=fmt, **_save_kw())
    return buf.getvalue()


def _save_file(fig: Figure, path: Path) -> None:
    """``fig`` saved to ``path`` (format from the suffix) atomically, under the report's
    figure settings inside an ``rc_context``."""
    from adflora_analysis.reports.figures import rc

    with matplotlib.rc_context(rc()):
        fileio.save_figure(path, fig, **_save_kw(),
                           metadata={"Creator": "adflora-analysis"})


def _close(fig: Figure) -> None:
    """Release a figure pyplot holds (report figures are not pyplot's; a caller's may be)."""
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$",
        "−": "-", "×": r"$\times$", "÷": r"$\div$", "Ξ": r"$\Xi$", "≈": r"$\approx$",
        "≡": r"$\equiv$", "‖": r"$\|$", "∇": r"$\nabla$", "–": "--"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def tex_escape(text: object) -> str:
    """``text`` safe in a LaTeX table cell (specials escaped, a few symbols as math).

    >>> print(tex_escape("grad_norm_sq 5% & #1 ± 2"))
    grad\\_norm\\_sq 5\\% \\& \\#1 $\\pm$ 2
    """
    return _TEX_RE.sub(lambda m: _TEX[m.group(0)], str(text))


def latex_table(df: pd.DataFrame, note: str | None = None) -> str:
    """``df`` as a booktabs ``tabular`` (``\\toprule``, ``\\midrule``, ``\\bottomrule``; needs
    ``\\usepackage{booktabs}``): numbers right-aligned as the HTML shows them, text escaped;
    ``note`` as a comment above it."""
    shown = _fmt(df).map(lambda v: "" if v is None or (isinstance(v, float) and v != v)
                         else str(v))
    num = [bool(len(df)) and (pd.api.types.is_numeric_dtype(df[c])
                              and not pd.api.types.is_bool_dtype(df[c])) for c in df.columns]
    lines = [f"% {' '.join(note.split())}"] if note else []
    lines += ["\\begin{tabular}{" + "".join("r" if n else "l" for n in num) + "}",
              "\\toprule",
              " & ".join(tex_escape(c) for c in df.columns) + r" \\",
              "\\midrule"]
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\"
              for row in shown.itertuples(index=False, name=None)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.columns.name = None    # a pivot's leftover name would be an empty header column
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return out


def _md_table(df: pd.DataFrame) -> str:
    df = _fmt(df).map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v))
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in df.itertuples(index=False, name=None)]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}
h1{border-bottom:2px solid #444}
h2{margin:3.2em 0 0.6em;padding-top:0.4em;border-bottom:1px solid #ccc}
h3{margin:1.6em 0 0.4em}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.held,span.held{color:#176b2c;font-weight:600}td.violated,span.violated{color:#b00020;
font-weight:600}img{max-width:100%;display:block;margin:0.6em 0}
figure{margin:1em 0 2.4em}
.note{color:#555;font-size:0.9em}div.table{overflow-x:auto}
div.table td{white-space:normal;max-width:34em;overflow-wrap:anywhere;vertical-align:top}
div.verdict{background:#f3f7ee;border-left:4px solid #009E73;padding:0.6em 1em;margin:1em 0}
div.verdict p{margin:0.25em 0}div.verdict ul{margin:0.2em 0 0.4em 1.2em;padding:0}
div.summary{background:#f6f8fa;border-left:4px solid #0072B2;padding:0.6em 1em;margin:1em 0}
div.summary p{margin:0.25em 0}
div.banner{background:#fff4e5;border-left:4px solid #E69F00;padding:0.6em 1em;margin:1em 0;
font-weight:600}
details.toc{margin:1em 0}
"""

ONLOAD = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.figure');
  var ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok += 1; });
  document.body.setAttribute('data-figures-total', imgs.length);
  document.body.setAttribute('data-figures-loaded', ok);
});
"""


def write_report(out: str | Path, title: str, sections: list[Section],
                 preamble: list[str] | None = None, summary: list[str] | None = None,
                 banner: str | None = None, verdict: list[str] | None = None) -> Path:
    """Write the report files under ``out``; returns the path of ``index.html``.

    ``verdict``: the opening lines (per method which claims held; comparisons with their
    intervals; warnings), a box above everything else; ``summary``: lines below it;
    ``banner``: a warning shown first (a partial or diverged run). Every figure is written as
    PNG (embedded in the page), PDF (TrueType fonts) and SVG, every table as CSV and LaTeX."""
    out = Path(out)
    names = layout(sections)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    if banner:
        md += [f"> **{banner}**", ""]
        body.append(f'<div class="banner">{html.escape(banner)}</div>')
    if verdict:
        md += ["**Verdict**", ""] + [f"- {line}" for line in verdict] + [""]
        body.append('<div class="verdict"><p><b>Verdict</b></p><ul>'
                    + "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
                    + "</ul></div>")
    if summary:
        md += ["**Summary**", ""] + [f"- {line}" for line in summary] + [""]
        body.append('<div class="summary">' + "".join(f"<p>{html.escape(line)}</p>"
                                                      for line in summary) + "</div>")
    md += [*(preamble or []), ""]
    body += [f'<p class="note">{html.escape(p)}</p>' for p in preamble or []]
    toc = []
    head = len(body)
    for sec, sid, tnames, fnames in zip(sections, names.ids, names.tables, names.figures,
                                        strict=True):
        toc.append(f'<li><a href="#{sid}">{html.escape(sec.title)}</a></li>')
        md += [f"## {sec.title}", ""]
        body.append(f'<h2 id="{sid}">{html.escape(sec.title)}</h2>')
        for p in sec.text:
            md += [p, ""]
            body.append(f"<p>{html.escape(p)}</p>")
        for name, df in sec.tables.items():
            fname = tnames[name]
            fileio.write_csv(inside(out, out / "tables" / fname), df)
            note = sec.table_notes.get(name)
            tex = fname[:-4] + ".tex"
            fileio.write_text(inside(out, out / "tables" / tex), latex_table(df, note))
            md += [f"**{name}** ([csv](tables/{fname}), [LaTeX](tables/{tex}))", "",
                   _md_table(df), ""]
            if note:
                md += [f"*{note}*", ""]
            table_html = _fmt(df).to_html(index=False, escape=True, border=0)
            table_html = _NUM.sub(r'<td class="num">\1</td>', table_html)
            for verdict, cls in (("held", "held"), ("VIOLATED", "violated"),
                                 ("violated", "violated")):
                table_html = table_html.replace(f"<td>{verdict}", f'<td class="{cls}">{verdict}')
            body.append(f"<h3>{html.escape(name)}</h3>"
                        + (f'<p class="note">{html.escape(note)}</p>' if note else "")
                        + f'<div class="table" data-table="{_slug(name)}">{table_html}</div>'
                        + f'<p class="note"><a href="tables/{fname}">CSV</a>, '
                        f'<a href="tables/{tex}">LaTeX</a></p>')
        for name, fig in sec.figures.items():
            fname = fnames[name]
            data = _figure_bytes(fig, "png")
            fileio.atomic_write(inside(out, out / "figures" / fname), lambda f, d=data: f.write(d))
            pdf, svg = fname[:-4] + ".pdf", fname[:-4] + ".svg"
            for f in (pdf, svg):     # written through a temp file, removed if interrupted
                _save_file(fig, inside(out, out / "figures" / f))
            md += [f"![{name}](figures/{fname}) ([PDF](figures/{pdf}), [SVG](figures/{svg}))",
                   ""]
            b64 = base64.b64encode(data).decode()
            body.append(f'<figure><img class="figure" alt="{html.escape(name)}" '
                        f'src="data:image/png;base64,{b64}"><figcaption class="note">'
                        f'{html.escape(name)} (<a href="figures/{fname}">PNG</a>, '
                        f'<a href="figures/{pdf}">PDF</a>, <a href="figures/{svg}">SVG</a>)'
                        '</figcaption></figure>')
            _close(fig)
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script>{ONLOAD}</script></head><body>"
            + "".join(body[:head]) + '<details class="toc"><summary>Contents</summary><ul>'
            + "".join(toc) + "</ul></details>" + "".join(body[head:])
            + "</body></html>")
    fileio.write_text(out / "report.md", "\n".join(md) + "\n")
    return fileio.write_text(out / "index.html", page)
