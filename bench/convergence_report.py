"""Summarise a finished convergence run (config.convergence.yaml) for docs/benchmarks.md.

Per family: the selected snapshot, its pool's FID, FID as a multiple of real vs real,
KID, precision and recall (convergence.json), the synthetic-only ResNet18's test AUC as a
fraction of the real-data baseline's, and whether the issue-14 targets are met (FID <=
3x real vs real, recall >= 40 %, synthetic-only AUC >= 0.9x baseline). Copies each
family's FID curve and real-vs-synthetic grid, shrunk, to docs/convergence/.

    .venv/bin/python bench/convergence_report.py results/convergence/demo docs/convergence
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

TARGETS = {"fid_ratio": 3.0, "recall": 0.4, "auc_ratio": 0.9}


def main(results: Path, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    runs = pd.read_csv(results / "tables/classification_runs.tsv", sep="\t", keep_default_na=False)
    baseline = runs[runs.strategy == "baseline"].auc.astype(float).mean()
    reference = json.loads((results / "feature_extractor/subset0/reference.json").read_text())["kept"]["domain"]
    print(f"real vs real (validation, r N_i per class, vs training subset): FID {reference['fid']:.1f}, "
          f"KID x1e3 {1e3 * reference['kid']:.1f}, precision {reference['precision']:.2f}, "
          f"recall {reference['recall']:.2f}; baseline ResNet18 test AUC {baseline:.3f}\n")
    print("| family | epoch | FID | ×real | KID ×10³ | precision | recall | synthetic-only AUC (×baseline) | targets |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for gen_dir in sorted((results / "generators").iterdir()):
        v = json.loads((gen_dir / "subset0/convergence.json").read_text())
        syn = runs[(runs.strategy == "synthetic_only") & (runs.generator == gen_dir.name)].auc.astype(float).mean()
        met = {"fid_ratio": v["fid_ratio"] <= TARGETS["fid_ratio"], "recall": v["recall"] >= TARGETS["recall"],
               "auc_ratio": syn / baseline >= TARGETS["auc_ratio"]}
        verdict = "all met" if all(met.values()) else "missed: " + ", ".join(k for k, ok in met.items() if not ok)
        p = v["pool"]
        print(f"| {gen_dir.name} | {v['epoch']} | {p['fid']:.1f} | {v['fid_ratio']:.2f} | {1e3 * p['kid']:.1f} | "
              f"{p['precision']:.2f} | {p['recall']:.2f} | {syn:.3f} ({syn / baseline:.2f}) | {verdict} |")
        for name in ("fid_curve", "samples"):
            small_png(gen_dir / f"subset0/{name}.png", docs / f"{gen_dir.name}_{name}.png")


def small_png(src: Path, dst: Path, width: int = 720) -> None:
    """A copy for the repository: at most `width` px wide, 256 colours (~10x smaller)."""
    im = Image.open(src).convert("RGB")
    im.thumbnail((width, width))
    im.quantize(256).save(dst, optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
