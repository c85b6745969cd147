"""One self-contained HTML report: tables, figures (embedded as base64 PNG) and provenance.

The page makes no network request: no scripts, no external style sheets or fonts, every picture a
``data:`` URI. The report's tables come from :mod:`.tables` (the same rows as the terminal and
``tables.md``); result kinds it does not know — e.g. another suite's experiments — are shown as generic
tables of their records, so the writer serves any ``results.json`` document.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from .figures import CAPTIONS
from .tables import display_name, placeholder_notes, reading_notes, table1, table2, table3

__all__ = ["render_html", "write_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top}th{background:#f3f3f5;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:600;padding:.3rem 0}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.8rem}
.weights{background:#fff8e1;border-left:4px solid #f0b400;padding:.4rem .8rem}
.placeholder{background:#fdecea;border-left:4px solid #c62828;padding:.4rem .8rem}.notes li{font-size:.88rem}
details summary{cursor:pointer;font-weight:600;margin:.4rem 0}.scroll{overflow-x:auto;max-width:100%}
caption{white-space:nowrap}
"""

_KNOWN_TABLES = (
    ("segmentation", "Table 1: Segmentation performance per modality.", table1),
    ("crossmodal", "Table 2: Cross-modality segmentation results (accuracy/F1).", table2),
    ("registration", "Table 3: Mean absolute shift error (in patches) for registration.", table3),
)


_META = ("schema", "config", "backbones", "notes", "provenance")


def _bb_name(record: Mapping[str, Any]) -> str:
    return str(record.get("name") or record.get("spec") or record.get("backbone") or "?")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted columns (``classes.nucleus.dice``); lists stay one cell."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _is_num(text: str) -> bool:
    t = text.rstrip("*")
    try:
        float(t.split("/")[0])
    except ValueError:
        return False
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None) -> str:
    parts = ['<div class="scroll"><table>']
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr></thead><tbody>")
    for r in rows:
        tds = "".join(f'<td class="num">{escape(c)}</td>' if _is_num(c) else f"<td>{escape(c)}</td>" for c in r)
        parts.append(f"<tr>{tds}</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _records_table(records: Sequence[Mapping[str, Any]], caption: str | None = None) -> str:
    """Any list of flat-ish records as a table: columns are the union of keys in first-seen order."""
    flat = [_flatten(r) for r in records]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    rows = [[_cell(r.get(c)) for c in columns] for r in flat]
    return _table(columns, rows, caption)


def _mapping_table(data: Mapping[str, Any], caption: str | None = None) -> str:
    return _table(["key", "value"], [[str(k), _cell(v)] for k, v in data.items()], caption)


def _generic(name: str, value: Any) -> str:
    """Render a result of unknown kind: records → table, mapping → key/value table, anything else → JSON."""
    if isinstance(value, (list, tuple, dict)) and not value:
        return f"<h3>{escape(name)}</h3><p>(none)</p>"
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
        isinstance(r, Mapping) for r in value
    ):
        return _records_table(value, name)
    if isinstance(value, Mapping):
        return _mapping_table(value, name)
    return f"<h3>{escape(name)}</h3><pre>{escape(json.dumps(value, indent=2, ensure_ascii=False, default=str))}</pre>"


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = CAPTIONS.get(name, name)
    return (
        f'<figure id="fig-{escape(name)}"><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _provenance(doc: Mapping[str, Any]) -> str:
    prov = doc.get("provenance") or {}
    cfg = doc.get("config") or {}
    parts = ["<h2>Provenance</h2>"]
    if "seed" in cfg:
        parts.append(f"<p>Seed: <b>{escape(str(cfg['seed']))}</b></p>")
    if doc.get("backbones"):
        parts.append(_records_table(doc["backbones"], "Backbones and the weights each used"))
    for key, caption in (("versions", "Versions"), ("machine", "Machine"), ("timings_s", "Timings (s)")):
        if prov.get(key):
            parts.append(_mapping_table(prov[key], caption))
    rest = {k: v for k, v in prov.items() if k not in ("versions", "machine", "timings_s")}
    if rest:
        parts.append(_mapping_table(rest, "Run"))
    if cfg:
        parts.append("<h3>Resolved configuration</h3>")
        parts.append(f"<pre>{escape(json.dumps(cfg, indent=2, ensure_ascii=False))}</pre>")
    return "".join(parts)


def render_html(
    doc: Mapping[str, Any], figures: Mapping[str, bytes] | None = None, title: str = "neurOS cv benchmark report"
) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    doc : mapping
        A ``results.json`` document: ``config``, ``backbones``, ``results`` (experiment → records),
        ``notes`` and ``provenance``. Missing parts are skipped; without a ``results`` key, every other
        top-level key is taken as an experiment's results.
    figures : mapping, optional
        PNG bytes keyed by figure name (``report_figures``); embedded as base64.
    title : str
        The page title.
    """
    cfg = doc.get("config") or {}
    results = doc.get("results")
    if results is None:  # documents that keep their experiments at the top level (e.g. the real-data suite)
        results = {k: v for k, v in doc.items() if k not in _META}
    head = title + (f" — suite “{cfg['name']}”" if cfg.get("name") else "")
    body = [f"<h1>{escape(head)}</h1>"]
    if doc.get("schema"):
        body.append(f"<p>Schema <code>{escape(str(doc['schema']))}</code></p>")
    if doc.get("backbones"):
        used = ", ".join(f"{display_name(_bb_name(b))} = {b.get('weights', '?')}" for b in doc["backbones"])
        body.append(f'<p class="weights">Weights used: {escape(used)}</p>')
    placeholder = placeholder_notes({"backbones": doc.get("backbones") or [], **results})
    if placeholder:
        body.append(f'<p class="placeholder" id="placeholder"><b>Placeholder.</b> {escape(placeholder[0])}</p>')
    body.append("<h2>Tables</h2>")
    known = []
    for key, caption, fn in _KNOWN_TABLES:
        if results.get(key):
            try:
                body.append(_table(*fn(results), caption))
                known.append(key)
            except (KeyError, TypeError, ValueError, IndexError):
                pass  # not the report's record layout: shown below as a generic table
    for key, value in results.items():
        if key not in known:
            body.append(_generic(key, value))
    if placeholder[1:]:
        body.append('<p>Same stand-in:</p><ul class="notes" id="same-stand-in">')
        body += [f"<li>{escape(n)}</li>" for n in placeholder[1:]]
        body.append("</ul>")
    reading = reading_notes({k: results[k] for k in known}) if known else []
    if reading:
        body.append('<p>How to read the tables:</p><ul class="notes" id="how-to-read">')
        body += [f"<li>{escape(n)}</li>" for n in reading]
        body.append("</ul>")
    if doc.get("notes"):
        body.append('<p>Notes (cells marked *):</p><ul class="notes">')
        body += [f"<li>{escape(str(n))}</li>" for n in doc["notes"]]
        body.append("</ul>")
    if figures:
        body.append("<h2>Figures</h2>")
        body += [_figure(name, png) for name, png in figures.items()]
    if known:
        body.append("<h2>All records</h2>")
        for key in known:
            body.append(f"<details><summary>{escape(key)} ({len(results[key])} records)</summary>")
            body.append(_records_table(results[key]) + "</details>")
    body.append(_provenance(doc))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network: forbid every fetch except inline styles and data: images.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        f"<title>{escape(head)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_html(
    path: str | os.PathLike[str], doc: Mapping[str, Any], figures: Mapping[str, bytes] | None = None, **kw: Any
) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(render_html(doc, figures, **kw), encoding="utf-8")
    return path
