"""Which code a stage ran: a hash of every package module its script imports, transitively.

Snakemake's `code` rerun trigger sees a rule's script, never the package modules that
do the work. So each rule gets `code=stage_code(<its script>)` in `params`: the import
graph is followed from the script through every `histosynth` module it reaches (lazy
imports inside functions included), and editing any of them reruns exactly the stages
whose closure holds it, and what depends on them.

A generator family's own module (histosynth.generative.families.<name>) counts only for that
family's stages: a DiT edit reruns the DiT branches, never HistoGAN's. The job helper
(histosynth.job: logs, GPU slots, clean errors) runs every stage but computes nothing,
so it is not followed.

Checkpoint scoring and selection run inside train_generator (each snapshot is scored as it
is written, and only those a selection could choose stay on disk) but are measuring code,
not training: MEASURED_BESIDE leaves them out of that stage's hash, so editing a metric or
the selection never retrains weeks of GPU work. The price: checkpoint_scores.tsv keeps the
numbers of the code that trained (rerun `snakemake --forcerun train_generator` to rescore
after a metric fix); select_checkpoint fails, naming the snapshots kept, if an edited
selection picks a snapshot that training did not keep.

The hash is of the syntax tree without docstrings, so comments, docstrings and
formatting never rerun weeks of GPU work; any change to what the code does does.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NOT_FOLLOWED = frozenset({"histosynth.job"})
# Per stage (its script's name): modules it runs beside its work whose edits must not rerun it.
MEASURED_BESIDE = {"train_generator": frozenset({"histosynth.evaluation.scoring", "histosynth.evaluation.selection"})}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _module_file(module: str, package: Path) -> Path | None:
    """The file of `histosynth.a.b` (a/b.py or a/b/__init__.py), None if it is not a package module."""
    parts = module.split(".")
    if parts[0] != "histosynth":
        return None
    base = package.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _parse_text(text: str, filename: str) -> ast.Module:
    return ast.parse(text, filename=filename)


def imported_modules(path: Path, module: str, package: Path = PACKAGE) -> set[str]:
    """The histosynth modules that the file at `path` (module `module`, "" for a script) imports,
    anywhere in it, with the packages above them (importing a.b runs a/__init__.py)."""
    return set(_imported_modules(Path(path).read_text(), str(path), module, package))


# Keyed by the file's text: a dry run asks for ~40 stage closures over the same ~60 modules,
# and walking each module's tree once (not once per stage) keeps it at a fraction of a second.
@lru_cache(maxsize=None)
def _imported_modules(text: str, filename: str, module: str, package: Path) -> frozenset[str]:
    found = set()
    here = module.split(".") if module else []
    is_package = Path(filename).name == "__init__.py"
    for node in ast.walk(_parse_text(text, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1
                anchor = here if is_package else here[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from .models import histogan` imports a module; `from .store import read_store` a name.
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                if _module_file(".".join(parts[:i]), package):
                    found.add(".".join(parts[:i]))
    return frozenset(found)


def import_closure(script: Path, extra=(), *, skip: frozenset = frozenset(), package: Path = PACKAGE) -> set[str]:
    """Every histosynth module reached from `script` (and from the modules `extra`), not
    descending into `skip` (nor NOT_FOLLOWED)."""
    skip = NOT_FOLLOWED | skip
    seen: set[str] = set()
    todo = [*imported_modules(Path(script), "", package), *extra]
    while todo:
        module = todo.pop()
        if module in seen or module in skip:
            continue
        seen.add(module)
        todo += imported_modules(_module_file(module, package), module, package)
    return seen


def code_hash(modules, package: Path = PACKAGE) -> str:
    """sha256 (16 hex digits) of the named modules' code ("histosynth.generative.training", ...)."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        path = _module_file(name, package)
        h.update(name.encode() + b"\0" + _code_dump(path.read_text(), str(path)) + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _code_dump(text: str, filename: str) -> bytes:
    """The module's syntax tree without docstrings, dumped: what its hash is of."""
    # The import walk's cached tree, stripped in place: docstrings never hold imports.
    tree = _strip_docstrings(_parse_text(text, filename))
    return ast.dump(tree, annotate_fields=False).encode()


def stage_modules(script, family: str | None = None, *, families: dict | None = None,
                  package: Path = PACKAGE) -> set[str]:
    """The modules a stage's code hash covers: its script's import closure, with `family`'s modules
    and none of the other families' (`families`: {family: its modules}, default
    families.family_modules()), nor what MEASURED_BESIDE leaves out for it."""
    if families is None:
        from histosynth.generative.families import family_modules
        families = family_modules()
    own = set(families.get(family, ())) if family else set()
    others = frozenset(m for f, mods in families.items() if f != family for m in mods) - own
    beside = MEASURED_BESIDE.get(Path(script).stem, frozenset())
    # The family's modules are loaded by name from the registry, so they are not in the script's imports.
    return import_closure(Path(script), own, skip=others | beside, package=package)


def stage_code(script, family: str | None = None, *, families: dict | None = None,
               package: Path = PACKAGE) -> str:
    """The code hash of a stage: of its stage_modules."""
    return code_hash(stage_modules(script, family, families=families, package=package), package)
