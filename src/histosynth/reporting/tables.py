"""Result tables as Markdown, LaTeX and HTML, and the display names they use.

A table is a title (the first header cell), column labels and a list of items:
``("section", name)`` opens a block of rows (an italic full-width row, as the
papers' "No image selection" lines), ``("row", name, cells)`` is a row whose
cells are ``(text, bold)`` pairs. The classification and quality tables build
such items; these functions only render them.
"""

from __future__ import annotations

import html
import math

from histosynth.errors import InputError
from histosynth.generative.families import FAMILIES
from histosynth.registry import FILTERS

MISSING = "—"

GENERATOR_NAMES = {name: family.display for name, family in FAMILIES.items()}


def generator_name(name: str) -> str:
    """Display name of a generator; a named variant of a family shows the family and its suffix
    ("vitgan_cp_sa" -> "ViT-cGAN CP+SA", as the Table II ablation rows)."""
    if name in GENERATOR_NAMES:
        return GENERATOR_NAMES[name]
    for family in sorted(GENERATOR_NAMES, key=len, reverse=True):
        if name.startswith(family + "_"):
            return f"{GENERATOR_NAMES[family]} {name[len(family) + 1:].upper().replace('_', '+')}"
    return name


FILTER_NAMES = {name: f.title for name, f in FILTERS.items()}


NOT_CONVERGED = "⚠ not converged"


def read_convergence(paths) -> dict[str, dict[str, dict]]:
    """generator -> subset -> the verdict of its convergence.json (histosynth.evaluation.reference)."""
    import json

    out: dict[str, dict[str, dict]] = {}
    for path in paths:
        try:
            with open(path) as f:
                v = json.load(f)
            if not isinstance(v["converged"], bool) or not isinstance(v["rule"], str):
                raise TypeError("'converged' must be true or false and 'rule' a string")
            out.setdefault(str(v["generator"]), {})[str(v["subset"])] = v
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a convergence verdict written by the convergence stage ({e!r})") from e
    return out


def flag(name: str, verdicts: dict[str, dict] | None) -> str:
    """A display name with the not-converged flag when its generator failed the verdict on any subset."""
    if not verdicts:
        return name
    failed = sum(not v["converged"] for v in verdicts.values())
    if not failed:
        return name
    return f"{name} {NOT_CONVERGED}" + ("" if failed == len(verdicts) else f" ({failed} of {len(verdicts)} subsets)")


def convergence_note(convergence: dict[str, dict[str, dict]]) -> str:
    """The sentence under a table whose rows carry the flag."""
    failed = [g for g, v in convergence.items() if any(not x["converged"] for x in v.values())]
    if not failed:
        return ""
    rule = next(iter(next(iter(convergence.values())).values()))["rule"]
    return (f"{NOT_CONVERGED}: {', '.join(generator_name(g) for g in failed)} (their pool's images fail {rule}): "
            "their images are far from real tissue, so results from them are noise, not evidence.")


def best_marks(values, higher: bool = True) -> list[bool]:
    """Which cells to bold: the best shown (rounded) value, ties included; NaN never.

    A column whose values all tie (or that has fewer than two values) marks nothing.
    """
    present = {v for v in values if v is not None and not math.isnan(v)}
    if len(present) < 2:
        return [False] * len(values)
    best = max(present) if higher else min(present)
    return [v == best for v in values]


def to_markdown(title: str, labels, items, note: str = "") -> str:
    lines = ["| " + " | ".join([title, *labels]) + " |", "|" + "|".join(["---"] + ["---:"] * len(labels)) + "|"]
    for item in items:
        if item[0] == "section":
            lines.append("| " + " | ".join([f"*{item[1]}*", *[""] * len(labels)]) + " |")
        else:
            lines.append("| " + " | ".join([item[1], *(f"**{t}**" if b else t for t, b in item[2])]) + " |")
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


_TEX = {"\\": r"\textbackslash{}", "%": r"\%", "_": r"\_", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "±": r"$\pm$", "Δ": r"$\Delta$", "<": r"$<$", "–": "--", "↓": r"$\downarrow$",
        "↑": r"$\uparrow$", "×": r"$\times$", "³": r"$^3$", "≤": r"$\leq$", "≥": r"$\geq$",
        "⚠": r"$\dagger$", MISSING: "---"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(title: str, labels, items, note: str = "") -> str:
    lines = [r"\begin{tabular}{l" + "c" * len(labels) + "}", r"\toprule",
             " & ".join([tex_escape(title), *map(tex_escape, labels)]) + r" \\", r"\midrule"]
    first = True
    for item in items:
        if item[0] == "section":
            if not first:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{len(labels) + 1}}}{{l}}{{\textit{{{tex_escape(item[1])}}}}} \\")
        else:
            row = [rf"\textbf{{{tex_escape(t)}}}" if b else tex_escape(t) for t, b in item[2]]
            lines.append(" & ".join([tex_escape(item[1]), *row]) + r" \\")
        first = False
    lines += [r"\bottomrule", r"\end{tabular}"] + (["% " + tex_escape(note)] if note else [])
    return "\n".join(lines) + "\n"


# Scoped to the table's class so embedding it (e.g. in a Snakemake report) restyles nothing else.
_STYLE = """<style>
table.histosynth-results { border-collapse: collapse; font: 13px sans-serif; }
table.histosynth-results th, table.histosynth-results td { padding: 3px 8px; border-bottom: 1px solid #ddd; }
table.histosynth-results td { text-align: right; white-space: nowrap; }
table.histosynth-results td:first-child { text-align: left; }
table.histosynth-results tr.section th { text-align: left; font-style: italic; background: #f3f3f3; }
p.histosynth-note { font: 12px sans-serif; color: #555; }
</style>"""


def to_html(title: str, labels, items, note: str = "") -> str:
    """A standalone HTML page holding the table (what a Snakemake report embeds)."""
    esc = html.escape
    lines = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{esc(title)}</title>", _STYLE,
             "</head><body>", '<table class="histosynth-results">',
             "<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in [title, *labels]) + "</tr></thead>", "<tbody>"]
    for item in items:
        if item[0] == "section":
            lines.append(f'<tr class="section"><th colspan="{len(labels) + 1}">{esc(item[1])}</th></tr>')
        else:
            row = "".join(f"<td><b>{esc(t)}</b></td>" if b else f"<td>{esc(t)}</td>" for t, b in item[2])
            lines.append(f"<tr><td>{esc(item[1])}</td>{row}</tr>")
    lines += ["</tbody>", "</table>"] + ([f'<p class="histosynth-note">{esc(note)}</p>'] if note else [])
    lines += ["</body></html>"]
    return "\n".join(lines) + "\n"
