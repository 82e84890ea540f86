"""Code hashes from a stage script's import graph: they change when any module the stage
reaches changes what it does, and only then."""

from pathlib import Path

import pytest

from histosynth.generative.families import family_modules
from histosynth.provenance import code_hash, import_closure, stage_code, stage_modules

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow/scripts"

SOURCE = '''"""Module docstring."""

def f(x):
    """Docstring."""
    return x + 1  # a comment
'''


@pytest.fixture
def package(tmp_path):
    """A fake `histosynth` package: a script imports `top`, which imports `middle` inside a
    function, which imports `models.deep` relatively; `models.other` and `unused` are reached by nothing
    but the family registry."""
    pkg = tmp_path / "histosynth"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models/__init__.py").write_text("")
    (pkg / "top.py").write_text("def run():\n    from .middle import g\n    return g()\n")
    (pkg / "middle.py").write_text("from .models import deep\n\ndef g():\n    return deep.f(1)\n")
    (pkg / "models/deep.py").write_text(SOURCE)
    (pkg / "models/other.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("Y = 1\n")
    (pkg / "job.py").write_text("from . import unused\n")  # the job helper: never followed
    script = tmp_path / "stage.py"
    script.write_text("from histosynth.job import job\nfrom histosynth.top import run\n\nwith job(1):\n    run()\n")
    return pkg, script


def test_the_closure_follows_lazy_relative_and_package_imports(package):
    pkg, script = package
    assert import_closure(script, package=pkg) == {
        "histosynth", "histosynth.top", "histosynth.middle", "histosynth.models", "histosynth.models.deep"}


def test_an_edit_anywhere_in_the_closure_changes_the_hash_and_only_there(package):
    pkg, script = package
    base = stage_code(script, families={}, package=pkg)
    deep = pkg / "models/deep.py"
    deep.write_text(SOURCE.replace("x + 1", "x + 2"))  # two imports away from the script
    edited = stage_code(script, families={}, package=pkg)
    assert edited != base
    (pkg / "unused.py").write_text("Y = 2\n")  # imported by the job helper only
    (pkg / "models/other.py").write_text("X = 2\n")  # imported by nothing
    assert stage_code(script, families={}, package=pkg) == edited


def test_comments_docstrings_and_formatting_do_not_change_the_hash(package):
    pkg, script = package
    base = stage_code(script, families={}, package=pkg)
    deep = pkg / "models/deep.py"
    deep.write_text(SOURCE.replace("# a comment", "# reworded").replace("Docstring.", "Says more.")
                    .replace("x + 1", "(x+1)").replace('    """Docstring."""\n', ""))
    assert stage_code(script, families={}, package=pkg) == base
    deep.write_text(SOURCE.replace("x + 1", "'x + 1'"))  # a string that is not a docstring
    assert stage_code(script, families={}, package=pkg) != base


def test_a_family_counts_its_own_modules_and_not_the_others(package):
    pkg, script = package
    families = {"a": ("histosynth.models.deep",), "b": ("histosynth.models.other",)}
    a, b = stage_code(script, "a", families=families, package=pkg), stage_code(script, "b", families=families,
                                                                                  package=pkg)
    (pkg / "models/other.py").write_text("X = 2\n")  # b's model: b's jobs rerun, a's do not
    assert stage_code(script, "a", families=families, package=pkg) == a
    assert stage_code(script, "b", families=families, package=pkg) != b
    (pkg / "models/deep.py").write_text("Z = 3\n")  # reached by the script, but a's own: b never sees it
    assert stage_code(script, "b", families=families, package=pkg) == stage_code(
        script, "b", families=families, package=pkg)
    assert stage_code(script, "a", families=families, package=pkg) != a


def _modules(*names):
    return {f"histosynth.{n}" for n in names}


def test_code_hash_is_order_free():
    both = code_hash(_modules("evaluation.selection", "evaluation.metrics"))
    assert code_hash(["histosynth.evaluation.metrics", "histosynth.evaluation.selection"]) == both
    assert both != code_hash(_modules("evaluation.metrics")) and len(both) == 16


def test_the_real_stages_reach_what_they_run():
    convergence = import_closure(SCRIPTS / "convergence.py")
    # Modules the hand-written table of old missed: reached only through other modules.
    assert _modules("evaluation.selection", "evaluation.metrics", "evaluation.features", "data.store") <= convergence
    assert "histosynth.data.batches" in import_closure(SCRIPTS / "train_vae.py")
    assert "histosynth.evaluation.selection" in import_closure(SCRIPTS / "evaluate_unified.py")
    assert not _modules("job", "gpu_slots") & convergence



@pytest.mark.parametrize("stage", ["train_generator", "train_vae", "generate", "train_classifier", "feature_extractor"])
def test_the_expensive_stages_do_not_reach_the_measuring_code(stage):
    """Editing a quality metric, the memorisation audit or the reference reruns the measuring stages,
    never a generator, a VAE, a pool or a classifier (weeks of GPU time at paper scale)."""
    measuring = {f"histosynth.evaluation.{m}" for m in ("metrics", "quality", "reference", "memorisation", "scoring")}
    assert not stage_modules(SCRIPTS / f"{stage}.py") & measuring
    if stage == "train_generator":  # nor does any family's own code
        for family in family_modules():
            assert not stage_modules(SCRIPTS / f"{stage}.py", family) & measuring, family
        # It does score its snapshots and keep what selection needs: that code runs beside it, unhashed.
        assert {"histosynth.evaluation.scoring", "histosynth.evaluation.selection"} <= import_closure(
            SCRIPTS / "train_generator.py")
        assert "histosynth.generative.training" in stage_modules(SCRIPTS / "train_generator.py")

@pytest.mark.parametrize("family, own, foreign", [
    ("ldm_dit", _modules("generative.models.dit", "generative.ldm", "generative.models.diffusion",
                         "generative.models.vae"),
     _modules("generative.models.unet", "generative.models.histogan", "generative.models.vitgan")),
    ("histogan", _modules("generative.models.histogan"),
     _modules("generative.models.dit", "generative.ldm", "generative.models.cgan")),
])
def test_a_generator_job_reaches_its_family_only(family, own, foreign):
    from histosynth.generative.families import family_modules

    modules = family_modules()
    others = frozenset(m for f, mods in modules.items() if f != family for m in mods)
    for script in ("train_generator", "generate", "filter"):
        closure = import_closure(SCRIPTS / f"{script}.py", modules[family], skip=others)
        assert own <= closure and not foreign & closure, (script, own - closure, foreign & closure)
