"""Draw docs/architecture.png from the code: every rule in data-flow order (left, with the
rule graph's edges), the package module its script calls (right, grouped by sub-package),
and, per sub-package, what it imports from the others (bottom).

    .venv/bin/snakemake --rulegraph --nolock --configfile config.demo.yaml > /tmp/rulegraph.dot
    .venv/bin/python bench/architecture_map.py /tmp/rulegraph.dot docs/architecture.png

Reads the code with `ast` only (nothing is imported), so it runs without torch.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src/histosynth"
LAYERS = ["data", "generative", "evaluation", "classification", "reporting", "(orchestration)"]
COLOURS = {"data": "#4c72b0", "generative": "#dd8452", "evaluation": "#55a868", "classification": "#c44e52",
           "reporting": "#8172b3", "(orchestration)": "#7f7f7f"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "(orchestration)"


def script_call(script: Path) -> tuple[str, str]:
    """(module, function) of the one package call a rule's script makes inside `with job(...)`."""
    tree = ast.parse(script.read_text())
    imported = {a.asname or a.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for a in node.names if (node.module or "").startswith("histosynth")}
    with_block = next(n for n in ast.walk(tree) if isinstance(n, ast.With))
    calls = [n.func.id for n in ast.walk(with_block) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in imported and imported[n.func.id] not in ("histosynth.job",)
             and not n.func.id[0].isupper()]  # config objects (ClassifierConfig(...)) are arguments
    return imported[calls[0]], calls[0]


def rules_and_scripts() -> dict[str, str]:
    out = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            m = re.match(r"\s*(?:rule|use rule \w+ as) (\w+)", line)
            if m:
                rule = m[1]
                out[rule] = "train_classifier" if line.strip().startswith("use rule") else None
            m = re.search(r'"\.\./scripts/(\w+)\.py"', line)
            if m and rule:
                out[rule] = m[1]
    return out


def package_imports() -> dict[tuple[str, str], int]:
    """(from layer, to layer) -> number of module-to-module imports across sub-packages."""
    counts = defaultdict(int)
    for path in PKG.rglob("*.py"):
        module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("histosynth."):
                a, b = layer_of(module), layer_of(node.module)
                if a != b:
                    counts[a, b] += 1
    return counts


def rule_graph(dot: Path) -> list[tuple[str, str]]:
    text = dot.read_text()
    names = dict(re.findall(r'(\d+)\[label = "(\w+)"', text))
    return [(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", text) if names[b] != "all"]


ORDER = ["download", "prepare", "split", "feature_extractor", "inception_stats", "reference_quality", "train_vae",
         "vae_quality", "train_generator", "select_checkpoint", "generate", "convergence",
         "filter", "quality", "quality_table", "train_classifier", "train_classifier_synthetic", "evaluate_unified",
         "aggregate", "plot_auc_by_strategy", "plot_synthetic_only_auc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rulegraph", type=Path, help="output of snakemake --rulegraph")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()

    scripts = rules_and_scripts()
    rules = [r for r in ORDER if r in scripts] + sorted(set(scripts) - set(ORDER))
    calls = {r: script_call(REPO / f"workflow/scripts/{scripts[r]}.py") for r in rules}
    modules = sorted({m for m, _ in calls.values()}, key=lambda m: (LAYERS.index(layer_of(m)), m))

    fig, ax = plt.subplots(figsize=(15, 12.5))
    ax.set_xlim(-0.5, 10.5)
    ax.set_ylim(-9.2, len(rules) + 0.8)
    ax.axis("off")
    y_rule = {r: len(rules) - i for i, r in enumerate(rules)}
    span = len(rules) / max(len(modules), 1)
    y_mod = {m: len(rules) + 0.5 - span * (i + 0.5) for i, m in enumerate(modules)}
    for a, b in rule_graph(args.rulegraph):
        if a in y_rule and b in y_rule:
            ax.add_patch(FancyArrowPatch((1.0, y_rule[a]), (1.0, y_rule[b]), connectionstyle="arc3,rad=0.45",
                                         arrowstyle="-|>", mutation_scale=8, color="#bbbbbb", lw=0.8))
    for r in rules:
        module, func = calls[r]
        colour = COLOURS[layer_of(module)]
        ax.add_patch(FancyBboxPatch((1.1, y_rule[r] - 0.32), 2.3, 0.64, boxstyle="round,pad=0.02", fc="white",
                                    ec="#333333"))
        ax.text(2.25, y_rule[r], r, ha="center", va="center", fontsize=9, family="monospace")
        ax.text(3.55, y_rule[r], f"scripts/{scripts[r]}.py  ->  {func}()", ha="left", va="center", fontsize=7.5,
                family="monospace", color=colour)
        ax.annotate("", xy=(7.0, y_mod[module]), xytext=(6.9, y_rule[r]),
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=0.8, alpha=0.7))
    for m in modules:
        colour = COLOURS[layer_of(m)]
        ax.add_patch(FancyBboxPatch((7.05, y_mod[m] - 0.3), 3.3, 0.6, boxstyle="round,pad=0.02", fc=colour,
                                    ec=colour, alpha=0.9))
        ax.text(8.7, y_mod[m], m.removeprefix("histosynth."), ha="center", va="center", fontsize=8.5,
                color="white", family="monospace")
    ax.text(2.25, len(rules) + 0.75, "rules (workflow/rules/*.smk), data flow top to bottom", ha="center",
            fontsize=10, weight="bold")
    ax.text(8.7, len(rules) + 0.75, "the package module each script calls", ha="center", fontsize=10,
            weight="bold")

    # What each sub-package imports from the others.
    counts = package_imports()
    ax.text(5, -0.9, "src/histosynth/: sub-packages and their imports of one another (count of import statements)",
            ha="center", fontsize=10, weight="bold")
    x = {layer: 0.3 + i * 1.95 for i, layer in enumerate(LAYERS)}
    for layer in LAYERS:
        ax.add_patch(FancyBboxPatch((x[layer] - 0.75, -2.3), 1.5, 0.7, boxstyle="round,pad=0.02",
                                    fc=COLOURS[layer], ec=COLOURS[layer]))
        ax.text(x[layer], -1.95, layer, ha="center", va="center", color="white", fontsize=9, weight="bold")
    for i, ((a, b), n) in enumerate(sorted(counts.items(), key=lambda kv: (LAYERS.index(kv[0][0]),
                                                                          LAYERS.index(kv[0][1])))):
        rad = 0.35 if LAYERS.index(a) < LAYERS.index(b) else -0.35
        ax.add_patch(FancyArrowPatch((x[a], -2.35), (x[b], -2.35), connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>", mutation_scale=9, color=COLOURS[a], lw=0.6 + 0.15 * n,
                                     alpha=0.6))
    legend = "   ".join(f"{a} -> {b}: {n}" for (a, b), n in sorted(counts.items()))
    words, lines, line = legend.split("   "), [], ""
    for w in words:
        if len(line) + len(w) > 150:
            lines.append(line)
            line = ""
        line += ("   " if line else "") + w
    lines.append(line)
    ax.text(5, -8.0, "\n".join(lines), ha="center", va="top", fontsize=7, family="monospace", color="#444444")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    from PIL import Image  # a palette PNG: a quarter of the bytes, the same picture

    Image.open(args.out).convert("RGB").quantize(64).save(args.out, optimize=True)
    print(f"wrote {args.out}: {len(rules)} rules, {len(modules)} modules called")


if __name__ == "__main__":
    main()
