"""Every third-party import of the package is a declared dependency.

A module that happens to be installed on a developer's machine (tqdm was) let CI pass while a fresh
install failed with ModuleNotFoundError. This reads every import in `agent`, `trainer` and `export`
(function-local ones included, `if TYPE_CHECKING:` blocks excluded: they never run), maps each
third-party top-level module to the distribution that provides it, and checks that distribution against
the declared requirements. An optional extra counts only where its import sits in a `try` whose
`except ImportError` handler names the extra (the one-line error a user sees).
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "trainer", "export")
FIRST_PARTY = {*PACKAGES, "configs", "tests", "benchmarks"}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def normalise(name: str) -> str:
    """PEP 503 name normalisation: `PyYAML`, `pyyaml` and `py_yaml` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements() -> list[str]:
    """The requirement strings of this checkout's pyproject.toml (what a fresh install gets), else of the
    installed `byol-agent` metadata (an editable install's metadata is that of the tree it was made from)."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.exists() and sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads(pyproject.read_text())["project"]
        reqs = list(project.get("dependencies", []))
        for extra, items in project.get("optional-dependencies", {}).items():
            reqs += [
                f"{item}; extra == '{extra}'" if ";" not in item else f"{item} and extra == '{extra}'" for item in items
            ]
        return reqs
    return list(metadata.requires("byol-agent") or [])


def extra_of(req: Requirement) -> Optional[str]:
    """The extra a requirement belongs to (`...; extra == "dev"`), None for a core dependency."""
    if req.marker is None:
        return None
    found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", str(req.marker))
    return normalise(found.group(1)) if found else None


def declared() -> dict[str, set[Optional[str]]]:
    """Normalised distribution name -> the extras it is declared in (None: a core dependency).
    Platform markers do not matter here: a requirement declared for some platform is declared."""
    out: dict[str, set[Optional[str]]] = {}
    for line in declared_requirements():
        req = Requirement(line)
        out.setdefault(normalise(req.name), set()).add(extra_of(req))
    return out


@dataclass(frozen=True)
class Import:
    module: str  # top-level module name
    where: str  # file:line
    guard_text: str  # source of the `except ImportError` handlers around it ("" when unguarded)


def _guards(node: ast.AST, parents: dict[ast.AST, ast.AST], source: str) -> tuple[bool, str]:
    """(under `if TYPE_CHECKING:`, text of the ImportError handlers of every `try` enclosing the node)."""
    texts, child = [], node
    parent = parents.get(child)
    while parent is not None:
        if isinstance(parent, ast.If) and child in parent.body and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True, ""
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                names = (
                    {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(handler.type)}
                    if handler.type is not None
                    else IMPORT_ERRORS
                )
                if names & IMPORT_ERRORS:
                    texts.append(ast.get_source_segment(source, handler) or "")
        child, parent = parent, parents.get(parent)
    return False, "\n".join(texts)


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    """Absolute imports in one file (relative ones are first-party by definition)."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        type_only, guard = _guards(node, parents, source)
        if type_only:
            continue
        for name in names:
            found.append(Import(name.split(".")[0], f"{path.relative_to(root)}:{node.lineno}", guard))
    return found


def package_imports() -> list[Import]:
    return [imp for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")) for imp in imports_of(path)]


def undeclared(
    imports: list[Import], deps: dict[str, set[Optional[str]]], providers: dict[str, list[str]]
) -> list[str]:
    """One line per third-party import whose distribution is not declared (or is an extra imported
    without a guard naming it)."""
    problems = []
    for imp in imports:
        if imp.module in FIRST_PARTY or imp.module in sys.stdlib_module_names or imp.module == "__future__":
            continue
        dists = [normalise(d) for d in providers.get(imp.module, [])]
        if not dists:
            problems.append(
                f"{imp.where}: `import {imp.module}`: no installed distribution provides it and "
                "pyproject.toml does not declare one (it would fail on a fresh install)"
            )
            continue
        extras = set().union(*(deps.get(d, set()) for d in dists))
        if None in extras:
            continue  # a core dependency
        if not extras:
            problems.append(
                f"{imp.where}: `import {imp.module}` comes from {'/'.join(dists)}, which pyproject.toml "
                "does not declare"
            )
        elif not any(extra in imp.guard_text for extra in extras):
            problems.append(
                f"{imp.where}: `import {imp.module}` comes from the extra(s) {sorted(extras)}: import it "
                "in a try/except ImportError that raises a one-line error naming the extra"
            )
    return problems


def test_every_third_party_import_of_the_package_is_a_declared_dependency() -> None:
    imports = package_imports()
    assert len({imp.module for imp in imports}) > 20  # the reader found the package's imports
    problems = undeclared(imports, declared(), metadata.packages_distributions())
    assert not problems, "undeclared dependencies:\n" + "\n".join(problems)


def test_the_checker_reads_markers_extras_normalised_names_and_guards(tmp_path: Path) -> None:
    """The checker itself, on requirement lines shaped like the ones other branches add."""
    lines = [
        "PyYAML>=6",
        "onnxruntime-gpu>=1.20; platform_machine == 'x86_64'",
        "rosbags[image]>=0.10",
        "mcap_ros2_support>=0.5; extra == 'ros'",
        "av>=12; python_version >= '3.10' and extra == \"video\"",
    ]
    deps: dict[str, set[Optional[str]]] = {}
    for line in lines:
        req = Requirement(line)
        deps.setdefault(normalise(req.name), set()).add(extra_of(req))
    providers = {
        "yaml": ["PyYAML"],
        "onnxruntime": ["onnxruntime-gpu"],
        "rosbags": ["rosbags"],
        "mcap_ros2": ["mcap-ros2-support"],
        "av": ["av"],
        "tqdm": ["tqdm"],
    }
    module = tmp_path / "m.py"
    module.write_text(
        "import yaml, onnxruntime, rosbags.typesys\n"
        "import tqdm\n"
        "import not_installed_anywhere\n"
        "def f():\n"
        "    import mcap_ros2.decoder\n"
        "def g():\n"
        "    try:\n"
        "        import av\n"
        "    except ImportError:\n"
        "        raise SystemExit('install the video extra: pip install byol-agent[video]')\n"
    )
    problems = undeclared(imports_of(module, tmp_path), deps, providers)
    assert len(problems) == 3, problems
    assert "m.py:2: `import tqdm` comes from tqdm" in problems[0]
    assert "not_installed_anywhere" in problems[1]
    assert "m.py:5: `import mcap_ros2` comes from the extra(s) ['ros']" in problems[2]
