"""Where a source file's definitions are: the places a block boundary should prefer.

Python is read with ``ast`` (exact, decorators included); other languages and Python that
does not parse fall back to the lines that open a definition in the common languages'
syntax, closed by the next line indented no deeper. The result is only advice for cutting
blocks and naming them, so a miss costs a less tidy boundary, never content.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

PYTHON = (".py", ".pyi", ".pyw")
# languages whose files are code: their blocks follow definitions and are named by them
CODE = PYTHON + tuple(
    (
        ".c .h .cc .cpp .cxx .hpp .hh .cs .java .kt .kts .scala .go .rs .swift .m .mm .js .jsx .mjs .cjs "
        ".ts .tsx .php .rb .pl .pm .lua .sh .bash .zsh .r .jl .dart .ex .exs .erl .hs .ml .mli .clj .groovy "
        ".sql .vue .svelte .zig .nim .cmake .tf"
    ).split()
)

_OPENER = re.compile(
    r"^(?P<indent>[ \t]*)(?:(?:export|default|public|private|protected|internal|static|async|abstract|final|"
    r"override|inline|pub(?:\([^)]*\))?|unsafe|extern|virtual|const)\s+)*"
    r"(?:def|class|function|fn|func|interface|struct|enum|impl|trait|type|module|object|record|sub|proc|"
    r"macro|namespace|protocol|extension)\s+(?:\([^)]*\)\s*)?(?P<name>[A-Za-z_$][\w$]*)"
)
# a C-family function definition: a line at the left margin, a name and "(", no ";" at its end
_C_FUNC = re.compile(
    r"^(?!(?:if|for|while|switch|return|else)\b)[A-Za-z_][\w\s\*&:<>,~]*?\b(?P<name>[A-Za-z_~]\w*)\s*\([^;]*$"
)


@dataclass(frozen=True)
class Definition:
    qualname: str  # "Outer.method", as a person would name it
    line0: int  # first line (decorators included), 1-based
    line1: int  # last line, 1-based, inclusive
    depth: int  # 0 at the module's top level


def is_code(path: str) -> bool:
    return path.lower().endswith(tuple(CODE))


def definitions(text: str, path: str) -> list[Definition]:
    """The definitions of ``text`` (a file named ``path``), in order of their first line."""
    if path.lower().endswith(PYTHON):
        try:
            return _python(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass  # not Python 3, or not parseable here: the line fallback still finds most
    return _by_lines(text)


def _python(text: str) -> list[Definition]:
    tree = ast.parse(text)
    out: list[Definition] = []
    stack: list[tuple[ast.AST, str, int]] = [(tree, "", -1)]
    while stack:
        node, prefix, depth = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append(Definition(name, first, child.end_lineno or child.lineno, depth + 1))
                stack.append((child, name + ".", depth + 1))
            elif not isinstance(child, ast.expr):  # definitions inside if/try/with blocks count too
                stack.append((child, prefix, depth))
    out.sort(key=lambda d: (d.line0, d.depth))
    return out


def _by_lines(text: str) -> list[Definition]:
    lines = text.split("\n")
    opened: list[tuple[int, int, str]] = []  # (line index, indent width, name)
    for i, line in enumerate(lines):
        m = _OPENER.match(line)
        if m:
            opened.append((i, len(m.group("indent").expandtabs(4)), m.group("name")))
        elif line[:1].isalpha() or line[:1] == "_":
            c = _C_FUNC.match(line)
            if c:
                opened.append((i, 0, c.group("name")))
    indent = [len(ln.expandtabs(4)) - len(ln.lstrip()) if ln.strip() else None for ln in lines]
    out: list[Definition] = []
    parents: list[tuple[int, str, int]] = []  # (indent, qualname, end) of the definitions still open
    for i, ind, name in opened:
        end = len(lines) - 1
        for j in range(i + 1, len(lines)):
            level = indent[j]
            if level is not None and level <= ind and not lines[j].lstrip().startswith(("}", ")", "end")):
                end = j - 1
                break
        while end > i and indent[end] is None:
            end -= 1
        while parents and (parents[-1][0] >= ind or parents[-1][2] < i):
            parents.pop()
        qual = f"{parents[-1][1]}.{name}" if parents else name
        out.append(Definition(qual, i + 1, end + 1 + _closing(lines, end), len(parents)))
        parents.append((ind, qual, end))
    return out


def _closing(lines: list[str], end: int) -> int:
    """1 when the line after ``end`` closes the definition (``}``, ``end``): it belongs to it."""
    nxt = end + 1
    return 1 if nxt < len(lines) and lines[nxt].strip() in ("}", "};", "end") else 0
