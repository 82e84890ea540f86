"""Code hashes that rerun a stage when its modules change what they do, and only then."""

from histosynth.provenance import code_hash

SOURCE = '''"""Module docstring."""

def f(x):
    """Docstring."""
    return x + 1  # a comment
'''


def _hash(tmp_path, text, name="m"):
    (tmp_path / f"{name}.py").write_text(text)
    return code_hash(name, package=tmp_path)


def test_comments_docstrings_and_formatting_do_not_change_the_hash(tmp_path):
    base = _hash(tmp_path, SOURCE)
    cosmetic = SOURCE.replace("# a comment", "# reworded").replace("Docstring.", "Says more.").replace(
        "x + 1", "(x+1)")
    assert _hash(tmp_path, cosmetic) == base
    assert _hash(tmp_path, SOURCE.replace('    """Docstring."""\n', "")) == base


def test_a_code_change_changes_the_hash(tmp_path):
    base = _hash(tmp_path, SOURCE)
    assert _hash(tmp_path, SOURCE.replace("x + 1", "x + 2")) != base
    assert _hash(tmp_path, SOURCE.replace("x + 1", "'x + 1'")) != base  # a string that is not a docstring


def test_the_hash_covers_every_module_named_in_any_order(tmp_path):
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "b.py").write_text("B = 1\n")
    both = code_hash("a", "b", package=tmp_path)
    assert code_hash("b", "a", package=tmp_path) == both != code_hash("a", package=tmp_path)
    (tmp_path / "b.py").write_text("B = 2\n")
    assert code_hash("a", "b", package=tmp_path) != both


def test_the_package_modules_hash():
    assert len(code_hash("gan_training", "models/vitgan")) == 16
