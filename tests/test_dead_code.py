"""No dead code in the package: every public top-level function and class has a caller.

A caller is any mention of the name outside its own definition, in the package, the tests or the scripts (a
function reached only through a test is still an API the tests hold to its contract). A public name nothing
mentions is either dead (remove it) or untested (give it a test).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dynet_deploy"


def _sources() -> dict[Path, str]:
    files = [p for folder in (PACKAGE, ROOT / "tests", ROOT / "scripts") for p in folder.rglob("*.py")]
    return {p: p.read_text(encoding="utf-8") for p in files}


def _public_definitions(text: str) -> list[str]:
    return [
        node.name
        for node in ast.parse(text).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_")
    ]


def test_every_public_function_and_class_has_a_caller():
    sources = _sources()
    uncalled = []
    for path, text in sources.items():
        if not path.is_relative_to(PACKAGE):
            continue
        for name in _public_definitions(text):
            word = re.compile(rf"\b{re.escape(name)}\b")
            mentions = sum(len(word.findall(t)) for t in sources.values())
            if mentions <= 1:  # the definition itself
                uncalled.append(f"{path.relative_to(ROOT)}: {name}")
    assert not uncalled, "public names nothing calls (remove them or give them a caller/test): " + ", ".join(uncalled)
