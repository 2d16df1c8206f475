"""The book's API reference: one page per ``otdiff`` subpackage, its module list derived.

A page of ``book/api/`` holds one directive, and every public module of the package it names is
documented on it (its docstring and the names of its ``__all__`` that it defines), so a new module
appears without any edit and a new subpackage needs one page of three lines::

    ```{eval-rst}
    .. otdiff-api:: otdiff.ot
    ```

``.. otdiff-api:: otdiff`` with ``:shallow:`` documents the package and its top-level modules only (the
subpackages have their own pages). Each public name is documented once, in the module that defines
it; a reference through a package that re-exports it (``otdiff.ot.solve``) resolves to that entry
(``otdiff.ot.sinkhorn.solve``). Citations in docstrings (``:cite:`key```) are listed on the
reference's index page.

:func:`public_api` is what the tests use to check that the reference is complete.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = "otdiff"


def _private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split(".")[1:])


def public_modules(package: str = ROOT, *, shallow: bool = False) -> list[str]:
    """The public modules of ``package``: itself, then its submodules in order (not ``_``-named).

    With ``shallow``, the package and its own modules that are not subpackages.
    """
    pkg = importlib.import_module(package)
    found = [package]
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        if _private(info.name):
            continue
        if shallow and (info.ispkg or info.name.count(".") > package.count(".") + 1):
            continue
        found.append(info.name)
    return found


def _key(obj) -> tuple[str, str] | int:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return module, qualname
    return id(obj)


def public_api(package: str = ROOT) -> dict[str, list[str]]:
    """Module -> the names of its ``__all__`` documented there, each public object exactly once.

    An object exported by several modules is documented in the module that defines it (its
    ``__module__``), or, for a constant, in the deepest module that exports it.
    """
    modules = public_modules(package)
    exporters: dict = {}
    for name in modules:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            exporters.setdefault(_key(obj), []).append((name, attr, obj))
    owned: dict[str, list[str]] = {name: [] for name in modules}
    for entries in exporters.values():
        defining = [e for e in entries if getattr(e[2], "__module__", None) == e[0]]
        module, attr, _ = (defining or sorted(entries, key=lambda e: -e[0].count(".")))[0]
        owned[module].append(attr)
    return owned


def _is_module(module: ModuleType, attr: str) -> bool:
    return isinstance(getattr(module, attr), ModuleType)


def _is_code(obj) -> bool:
    """A function or class (documented by automodule); anything else is a constant."""
    return callable(obj) and isinstance(getattr(obj, "__qualname__", None), str)


class OtdiffApi(SphinxDirective):
    """``.. otdiff-api:: package`` documents every public module of the package (see above)."""

    required_arguments = 1
    option_spec = {"shallow": directives.flag}

    def run(self) -> list[nodes.Node]:
        package = self.arguments[0]
        owned = public_api(ROOT)
        modules = public_modules(package, shallow="shallow" in self.options)
        lines: list[str] = []
        for name in modules:
            module: ModuleType = importlib.import_module(name)
            self.env.note_dependency(module.__file__)
            if name != package:  # the package itself sits under the page's own title
                lines += [f"``{name}``", "-" * (len(name) + 4), ""]
            lines += [f".. automodule:: {name}"]
            members = [m for m in owned.get(name, []) if not _is_module(module, m)]
            code = [m for m in members if _is_code(getattr(module, m))]
            constants = [m for m in members if m not in code]
            lines += [f"   :members: {', '.join(code)}" if code else "   :no-members:"]
            lines += [f"   :exclude-members: {', '.join(constants)}"] if constants else []
            lines += [""]
            for constant in constants:
                lines += [f".. autodata:: {name}.{constant}", "   :no-value:", ""]
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=package), container)
        return container.children


_CITE = re.compile(r":cite:`")


def _process(app, what, name, obj, options, lines: list[str]) -> None:
    """Docstring citations (``:cite:`key```) become ``:cite:p:`` (author, year) citations, listed
    on the reference's index page (its ``{bibliography}``).

    A constant without a doc comment shows no text (not the docstring of its type, ``dict``).
    """
    own = type(obj).__doc__
    own = own.strip().splitlines() if isinstance(own, str) else []
    if what == "data" and own and lines and lines[0].strip() == own[0].strip():
        lines[:] = []
    for i, line in enumerate(lines):
        lines[i] = _CITE.sub(":cite:p:`", line)


def _lookup(dotted: str):
    """The object at ``dotted`` (a module prefix, then attributes), or None."""
    parts = dotted.split(".")
    if parts[0] != ROOT:
        return None
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _resolve_reexport(app, env, node, contnode):
    """``otdiff.ot.solve`` (a package's re-export) -> the entry where it is documented."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    candidates = [target]
    context = node.get("py:module")
    if context and not target.startswith(ROOT + "."):
        candidates.append(f"{context}.{target}")
    domain = env.get_domain("py")
    for candidate in candidates:
        obj = _lookup(candidate)
        owner = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not (isinstance(owner, str) and isinstance(qualname, str)):
            continue
        for full in (f"{owner}.{qualname}", candidate):
            if full in domain.objects:
                return domain.resolve_xref(
                    env, node["refdoc"], app.builder, node["reftype"], full, node, contnode
                )
    return None


def setup(app):
    app.add_directive("otdiff-api", OtdiffApi)
    app.connect("autodoc-process-docstring", _process)
    app.connect("missing-reference", _resolve_reexport)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
