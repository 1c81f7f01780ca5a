"""MkDocs hooks for the jaxnn site (``mkdocs.yml`` lists this file under ``hooks:``).

Three jobs, each failing a ``--strict`` build through a logged warning:

* **math**: ``pymdownx.arithmatex`` marks ``$...$`` and ``$$...$$`` (in pages and in docstrings);
  each is converted here, at build time, to MathML with ``latex2mathml``. Browsers lay MathML
  out natively, so the site loads no script and no font from the network.
* **pictures**: a guide whose front matter lists ``pictures:`` has its Python blocks run in a
  scratch folder during the build; the files they write become part of the site, next to the
  page. Nothing is pasted.
* **coverage**: every public name of the package must appear in the API reference, with a
  docstring, and every public function and class with a ``>>>`` example.

``tests/test_docs_site.py`` imports the same helpers to run the guides and check coverage.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import inspect
import io
import logging
import os
import pathlib
import pkgutil
import re
import sys
import tempfile
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
log = logging.getLogger("mkdocs.hooks.jaxnn")

# --------------------------------------------------------------------------- guides' code

FENCE = re.compile(r"(?P<before>[^\n]*\n)?```python[^\n]*\n(?P<code>.*?)^```", re.S | re.M)
NOT_RUN = "<!-- not run"


def front_matter(text: str) -> dict:
    """The YAML front matter of a page (only ``key: value`` and ``key: [a, b]`` forms)."""
    meta: dict = {}
    if text.startswith("---\n"):
        block = text[4:text.index("\n---", 4)]
        for line in block.splitlines():
            key, _, value = line.partition(":")
            value = value.strip()
            if value.startswith("[") and value.endswith("]"):
                meta[key.strip()] = [v.strip() for v in value[1:-1].split(",") if v.strip()]
            else:
                meta[key.strip()] = value
    return meta


def python_blocks(text: str) -> list[str]:
    """The page's ```` ```python ```` blocks, in order, except those under ``<!-- not run``."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("before") and match.group("before").startswith(NOT_RUN):
            continue
        blocks.append(match.group("code"))
    return blocks


def run_guide(path: pathlib.Path, workdir: pathlib.Path) -> dict:
    """Run a guide's Python blocks in order, in one namespace, inside ``workdir``."""
    namespace: dict = {"__name__": f"guide_{path.stem.replace('-', '_')}"}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for i, block in enumerate(python_blocks(path.read_text())):
            exec(compile(block, f"{path.relative_to(ROOT)} (python block {i + 1})", "exec"),
                 namespace)
    finally:
        os.chdir(old)
    return namespace


# --------------------------------------------------------------------------- API coverage

def public_modules() -> list[str]:
    """``jaxnn`` and every submodule whose dotted name has no ``_`` part (``cli`` aside)."""
    import jaxnn

    names = ["jaxnn"]
    for info in pkgutil.walk_packages(jaxnn.__path__, "jaxnn."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") for p in parts) or parts[0] in ("cli",):
            continue
        names.append(info.name)
    return names


def public_names() -> dict[str, object]:
    """Dotted name -> object for every public name: each public module's ``__all__``."""
    out: dict[str, object] = {}
    for modname in public_modules():
        module = importlib.import_module(modname)
        if not hasattr(module, "__all__"):
            raise AssertionError(f"{modname} has no __all__: its public names are undeclared")
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) or name == "__version__":
                continue
            out[f"{modname}.{name}"] = obj
    return out


DIRECTIVE = re.compile(r"^::: (\S+)", re.M)


def documented_identifiers() -> list[str]:
    """Every ``::: identifier`` directive of the API pages."""
    found = []
    for page in sorted((DOCS / "api").rglob("*.md")):
        found += DIRECTIVE.findall(page.read_text())
    return found


def _resolve(identifier: str):
    parts = identifier.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(identifier)


def _is_value(obj) -> bool:
    return not (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj))


_EXAMPLES = re.compile(r"^Examples:\s*$", re.M)


def _example_problems(name: str, doc: str) -> list[str]:
    """An ``Examples:`` section with ``>>>`` lines, and no ``>>>`` outside it."""
    header = _EXAMPLES.search(doc)
    first = doc.find(">>>")
    if first < 0:
        return [f"{name}'s docstring has no >>> example"]
    if header is None or first < header.start():
        return [f"{name}'s docstring has >>> lines outside an 'Examples:' section (they would "
                "render as quotes, not code)"]
    return []


def coverage_problems() -> list[str]:
    """What keeps the API reference from covering every public name, one line each."""
    problems = []
    shown: dict[int, str] = {}
    shown_values: set[str] = set()
    for identifier in documented_identifiers():
        obj = _resolve(identifier)
        if isinstance(obj, types.ModuleType):
            for name in getattr(obj, "__all__", ()):
                member = getattr(obj, name)
                if _is_value(member):
                    shown_values.add(f"{identifier}.{name}")
                else:
                    shown.setdefault(id(member), f"{identifier}.{name}")
            continue
        if _is_value(obj):
            shown_values.add(identifier)
        else:
            shown.setdefault(id(obj), identifier)
    seen: set[int] = set()
    for name, obj in public_names().items():
        if not _is_value(obj):
            if id(obj) in seen:  # a re-export: judged once, under its first public name
                continue
            seen.add(id(obj))
        if _is_value(obj):
            if name not in shown_values and not any(
                    name.split(".")[-1] == v.split(".")[-1] for v in shown_values):
                problems.append(f"{name} is public but not in the API reference")
            continue
        if id(obj) not in shown:
            problems.append(f"{name} is public but not in the API reference")
        doc = inspect.getdoc(obj) or ""
        if not doc.strip():
            problems.append(f"{name} has no docstring")
        else:
            problems += _example_problems(name, doc)
    for modname in documented_identifiers():
        module = _resolve(modname)
        if isinstance(module, types.ModuleType):
            problems += [p for p in _example_problems(modname, inspect.getdoc(module) or "")
                         if "no >>> example" not in p]
    return sorted(set(problems))


# --------------------------------------------------------------------------- the hooks

def on_files(files, config):
    """Run the guides that make pictures and add what they draw to the site."""
    from mkdocs.structure.files import File

    for page in sorted((DOCS / "guides").glob("*.md")):
        pictures = front_matter(page.read_text()).get("pictures", [])
        if not pictures:
            continue
        scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"jaxnn-docs-{page.stem}-"))
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the build log stays the build's
                run_guide(page, scratch)
        except Exception as err:  # reported, and fails a strict build
            log.warning("guides/%s: its code failed while drawing its pictures: %r",
                        page.name, err)
            continue
        for picture in pictures:
            made = scratch / picture
            if not made.is_file():
                log.warning("guides/%s lists picture %s but its code did not write it",
                            page.name, picture)
                continue
            files.append(File.generated(config, f"guides/{picture}", abs_src_path=str(made)))
    return files


def on_pre_build(config):
    for problem in coverage_problems():
        log.warning("API reference: %s", problem)


_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)


def _mathml(tex: str, display: str, page: str) -> str:
    from latex2mathml.converter import convert

    tex = html.unescape(tex).strip()
    try:
        math = convert(tex, display=display)
    except Exception as err:  # any failure is a build warning
        log.warning("%s: cannot convert the formula %r to MathML: %s", page, tex, err)
        return html.escape(tex)
    return math.replace("<math ", f'<math data-tex="{html.escape(tex, quote=True)}" ', 1)


def on_post_page(output: str, page, config) -> str:
    """Every ``$...$`` / ``$$...$$`` formula on the page, as MathML."""
    where = page.file.src_uri
    output = _BLOCK.sub(
        lambda m: f'<div class="arithmatex">{_mathml(m.group(1), "block", where)}</div>', output)
    return _INLINE.sub(
        lambda m: f'<span class="arithmatex">{_mathml(m.group(1), "inline", where)}</span>',
        output)


if str(ROOT) not in sys.path:  # the guides import jaxnn from this checkout
    sys.path.insert(0, str(ROOT))
