"""The SDK's docstrings are Markdown, as the reference page (docs/reference/sdk.md, mkdocstrings)
renders them: no reST roles or literal blocks that would show raw, cross-references that name real
objects, and a built page that holds the clients' signatures."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CLIENT = ROOT / "client" / "src" / "chital" / "client"
ERRDEFS = ROOT / "proto" / "python" / "src" / "chital" / "errdefs" / "__init__.py"
TLS = ROOT / "proto" / "python" / "src" / "chital" / "security" / "tls.py"

# :class:`X`, :meth:`~a.b`, :py:func:`f`: Sphinx roles, which Markdown shows as they are.
REST_ROLE = re.compile(r":(?:py:)?[a-z]+:`[^`]*`")
# A paragraph ending in "::" introduces a reST literal block (Markdown needs a ``` fence).
REST_LITERAL = re.compile(r"::\s*$")
# [text][chital.client.Client]: a cross-reference that mkdocs-autorefs resolves.
CROSSREF = re.compile(r"\]\[(chital(?:\.\w+)+)\]")


@dataclasses.dataclass(frozen=True)
class Docstring:
    where: str
    text: str


def _strings(path: Path, node: ast.AST) -> Iterator[Docstring]:
    """Every docstring under ``node``: of modules, classes and functions, and the attribute
    docstrings that follow an assignment (a string statement is a docstring wherever it stands)."""
    rel = path.relative_to(ROOT)
    for child in ast.walk(node):
        if (
            isinstance(child, ast.Expr)
            and isinstance(child.value, ast.Constant)
            and isinstance(child.value.value, str)
        ):
            yield Docstring(f"{rel}:{child.lineno}", child.value.value)


def sdk_docstrings() -> list[Docstring]:
    """The docstrings of the SDK's package, of the error classes it re-exports (chital.errdefs) and
    of TLSFiles: what the reference page renders, and what help() shows."""
    found: list[Docstring] = []
    for path in sorted(CLIENT.glob("*.py")):
        found += _strings(path, ast.parse(path.read_text()))
    found += _strings(ERRDEFS, ast.parse(ERRDEFS.read_text()))
    tls = ast.parse(TLS.read_text())
    tls_files = next(n for n in tls.body if isinstance(n, ast.ClassDef) and n.name == "TLSFiles")
    found += _strings(TLS, tls_files)
    return found


def rest_markup(text: str) -> list[str]:
    """The reST constructs in a docstring that Markdown would show raw (code fences excepted)."""
    problems = []
    fenced = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        problems += [f"role {m}" for m in REST_ROLE.findall(line)]
        if REST_LITERAL.search(line):
            problems.append(f"literal block after {line.strip()!r}")
    return problems


def test_the_checker_finds_rest_roles_and_literal_blocks() -> None:
    text = "Use :class:`Client` or :meth:`~chital.client.Client.close`::\n\n    x = 1\n"
    assert rest_markup(text) == [
        "role :class:`Client`",
        "role :meth:`~chital.client.Client.close`",
        "literal block after 'Use :class:`Client` or :meth:`~chital.client.Client.close`::'",
    ]
    fenced = "Use [`Client`][chital.client.Client]:\n\n```python\nd = {'a::': 1}  # ::\n```\n"
    assert rest_markup(fenced) == []


def test_the_sdk_docstrings_are_found() -> None:
    docstrings = sdk_docstrings()
    texts = "\n".join(d.text for d in docstrings)
    assert len(docstrings) > 200
    # Module, class, method, dataclass field (attribute docstring), error class, TLSFiles.
    for phrase in (
        "chital's Python SDK",
        "A connection to a chital controller.",
        "Create a container named ``name`` and return it.",
        "CPU quota in millicores (1000 = one core).",
        "The named resource does not exist.",
        "The files of a TLS identity",
    ):
        assert phrase in texts, phrase


def test_no_sdk_docstring_holds_rest_markup() -> None:
    found = [f"{d.where}: {p}" for d in sdk_docstrings() for p in rest_markup(d.text)]
    assert not found, "reST in docstrings (write Markdown: [`Name`][chital.client.Name], ``` fences):\n" + (
        "\n".join(found)
    )


def _resolves(identifier: str) -> bool:
    """Whether ``identifier`` names a module, or an attribute or dataclass field reached from one."""
    parts = identifier.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if hasattr(obj, name):
                obj = getattr(obj, name)
                continue
            fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
            return name == parts[-1] and name in fields
        return True
    return False


def test_every_cross_reference_names_an_object() -> None:
    references = {(d.where, ref) for d in sdk_docstrings() for ref in CROSSREF.findall(d.text)}
    assert len(references) > 50
    broken = sorted(f"{where}: {ref}" for where, ref in references if not _resolves(ref))
    assert not broken, "cross-references to nothing:\n" + "\n".join(broken)


def test_the_reference_page_renders_the_clients(tmp_path: Path) -> None:
    # The docs tools are dev requirements (requirements-dev.txt): missing, this fails, never skips.
    import mkdocstrings_handlers.python  # noqa: F401, PLC0415

    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        found = shutil.which("mkdocs")
        assert found, "mkdocs is not installed next to the interpreter nor on PATH"
        mkdocs = Path(found)
    site = tmp_path / "site"
    build = subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(Path(sys.executable).parent), "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    page = (site / "reference" / "sdk" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)

    for anchor in (
        "chital.client.Client.create_container",
        "chital.client.aio.AsyncClient.create_container",
        "chital.client.Client.from_config",  # inherited from the shared base class
        "chital.client.Container",
        "chital.client.NotFound",
        "chital.client.config.resolve",
    ):
        assert f'id="{anchor}"' in page, anchor
    # The signature, with its keyword-only arguments and the return type linked to its class.
    signature = re.search(r"create_container\(\s*name: str,\s*\*,\s*request_id: str \| None = None,", text)
    assert signature, "Client.create_container's signature is not on the page"
    assert re.search(r"max_restarts: int = 0\s*\)\s*-&gt;\s*Container", text)
    assert 'href="#chital.client.Sandbox"><code>Sandbox</code></a>' in page
    # Nothing of reST shows: no roles, and the literal blocks became highlighted code.
    assert not REST_ROLE.search(text), REST_ROLE.findall(text)[:5]
    assert '<span class="k">with</span> <span class="n">Client</span>' in page  # Python, highlighted
