# Entry point of every rule: hand the `snakemake` object to the package.
# The repo's src/ goes first on the path so the workflow always runs the code
# it ships with, installed or not (e.g. inside a `--sdm conda` environment).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # noqa: F821

from histosynth.stages import run  # noqa: E402

run(snakemake)  # noqa: F821
