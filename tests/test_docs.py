"""The documentation holds together: README.md and docs/**/*.md link only to files and headings that
exist, the README stays a front door (at most 200 lines), every figure under results/readme/ is shown
exactly once, and docs/configuration.md lists every key of the schema in src/config.py exactly once.

Plain Python (re, pathlib, ast): no markdown package, no network, nothing imported from the project.
"""

import ast
import re
import unicodedata
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FIGURES = ROOT / "results" / "readme"
README_MAX_LINES = 200

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); text may hold one level of brackets (an image inside a link).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)"
                  r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_SRC = re.compile(r"<(?:img|a|source)\b[^>]*?\s(?:src|href)\s*=\s*([\"'])(.*?)\1", re.IGNORECASE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:name|id)\s*=\s*([\"'])(.*?)\1", re.IGNORECASE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose_lines(text: str, blank_code: bool = True) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out unless
    blank_code is false (a heading's anchor keeps the text of its code spans)."""
    lines, fenced = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            if fenced is None:
                fenced = fence.group(1)
            elif fence.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            lines.append((number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line) if blank_code else line))
    return lines


def targets(path: Path) -> list[tuple[int, str]]:
    """Every link and image target of a markdown file, with its line number."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
        found += [(number, m.group(2)) for m in HTML_SRC.finditer(line)]
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            found.append((number, definition.group(1)))
    return [(number, target.strip("<>").strip()) for number, target in found]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than - and _
    removed, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML tags
    kept = [char for char in text.lower()
            if char in "- " or unicodedata.category(char)[0] in "LNM" or unicodedata.category(char) == "Pc"]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a markdown file's headings (duplicates get -1, -2, ...)."""
    seen: Counter = Counter()
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8"), blank_code=False):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            result.add(f"{base}-{seen[base]}" if seen[base] else base)
            seen[base] += 1
        result.update(m.group(2) for m in HTML_ANCHOR.finditer(line))
    return result


def resolve(source: Path, target: str) -> tuple[Path | None, str | None]:
    """The file a relative target names (None for the same file) and its #anchor (None without a #)."""
    file, hash_sign, anchor = target.partition("#")
    file = unquote(file.split("?", 1)[0])
    path = (source.parent / file).resolve() if file else None
    return path, (unquote(anchor) if hash_sign else None)


def test_docs_exist():
    assert README.is_file()
    assert DOCS.is_dir() and list(DOCS.rglob("*.md")), "docs/ holds no markdown files"


def test_links_and_images_resolve():
    problems = []
    for source in markdown_files():
        for number, target in targets(source):
            if not target or EXTERNAL.match(target):
                continue
            where = f"{source.relative_to(ROOT)}:{number}: {target}"
            path, anchor = resolve(source, target)
            file = path or source
            if path is not None and not path.exists():
                problems.append(f"{where}: no such file")
                continue
            if anchor is not None:
                if not anchor:
                    problems.append(f"{where}: empty anchor")
                elif file.is_dir() or file.suffix.lower() != ".md":
                    problems.append(f"{where}: an anchor into a file that is not markdown")
                elif anchor not in anchors(file):
                    problems.append(f"{where}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_every_figure_is_used_exactly_once():
    figures = sorted(p.resolve() for p in FIGURES.iterdir() if p.suffix.lower() in (".png", ".gif"))
    assert figures, f"no figures under {FIGURES.relative_to(ROOT)}"
    uses: Counter = Counter()
    places: dict[Path, list[str]] = {}
    for source in markdown_files():
        for number, target in targets(source):
            if EXTERNAL.match(target):
                continue
            path, _ = resolve(source, target)
            if path is not None:
                uses[path] += 1
                places.setdefault(path, []).append(f"{source.relative_to(ROOT)}:{number}")
    wrong = [f"{p.relative_to(ROOT)}: used {uses[p]} times ({', '.join(places.get(p, [])) or 'nowhere'})"
             for p in figures if uses[p] != 1]
    assert not wrong, "every figure under results/readme/ must be used exactly once:\n" + "\n".join(wrong)


def schema_keys() -> list[str]:
    """section.key for every field of the dataclasses that src/config.py's Config is made of."""
    tree = ast.parse((ROOT / "src" / "config.py").read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def fields(cls: ast.ClassDef) -> list[tuple[str, str]]:
        return [(node.target.id, ast.unparse(node.annotation)) for node in cls.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]

    assert "Config" in classes, "src/config.py has no class Config"
    keys = []
    for section, annotation in fields(classes["Config"]):
        assert annotation in classes, f"Config.{section}: {annotation} is not a class of src/config.py"
        keys += [f"{section}.{key}" for key, _ in fields(classes[annotation])]
    return keys


def test_configuration_lists_every_key_once():
    keys = schema_keys()
    assert len(keys) == len(set(keys)) and keys
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    # The key tables: rows whose first cell is one backticked section.key.
    rows = re.findall(r"^\|\s*`([a-z0-9_]+\.[a-z0-9_]+)`\s*\|", text, flags=re.MULTILINE)
    listed = Counter(rows)
    missing = [k for k in keys if k not in listed]
    unknown = [k for k in listed if k not in keys]
    repeated = [k for k, n in listed.items() if n > 1]
    assert not (missing or unknown or repeated), (
        f"docs/configuration.md: missing {missing}, not in src/config.py {unknown}, listed twice {repeated}")
