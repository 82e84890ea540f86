"""Which code a stage ran: a hash of its modules, given to the rule as a param.

Snakemake's `code` rerun trigger only sees the rule's script (the same small
`stage.py` for every rule), never the modules that do the work. So each rule
gets `code=code_hash(...)` of its own modules in `params`: editing a model or a
training loop reruns exactly the stages that run it, and what depends on them.

The hash is of the syntax tree without docstrings, so comments, docstrings and
formatting never rerun weeks of GPU work; any change to what the code does does.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_hash(*modules: str, package: Path = PACKAGE) -> str:
    """sha256 (16 hex digits) of the named package modules ("gan_training", "models/vitgan")."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        path = package / f"{name}.py"
        tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
        h.update(name.encode() + b"\0" + ast.dump(tree, annotate_fields=False).encode() + b"\0")
    return h.hexdigest()[:16]
