"""MkDocs hooks (mkdocs.yml ``hooks:``): links from docs/ to files of the repository outside docs/.

The pages link source files the way a reader of the repository follows them
(``[the launcher](../agent/launcher/README.md)``). Those files are not part of the site, so in the
built pages such a link becomes the link text with the file's repository path beside it. A link
whose target exists nowhere is left as it is, for MkDocs to report (``--strict`` fails on it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s#]+)(?P<fragment>#[^)\s]*)?\)")


def _outside_target(page_src: str, docs_dir: Path, target: str) -> str | None:
    """The repository path of ``target`` when it names an existing file or folder outside docs/."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
        return None
    repo = docs_dir.parent
    path = (docs_dir / Path(page_src).parent / target).resolve()
    if path.is_relative_to(docs_dir) or not path.is_relative_to(repo) or not path.exists():
        return None
    return path.relative_to(repo).as_posix()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace links to repository files outside docs/ by their text and path."""
    docs_dir = Path(config["docs_dir"]).resolve()

    def replace(match: re.Match[str]) -> str:
        rel = _outside_target(page.file.src_uri, docs_dir, match["target"])
        if rel is None:
            return match[0]
        text = match["text"]
        if text.strip("`") == rel:
            return f"`{rel}`"
        return f"{text} (`{rel}`)"

    return _LINK.sub(replace, markdown)
