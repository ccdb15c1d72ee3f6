"""Blocks follow the code's structure: a boundary prefers the start of a definition, a
function that fits in one block is not split, and each block's header names its file,
lines and definitions."""

from __future__ import annotations

from localsym.chunking import chunk_file, split_lines
from localsym.code_structure import definitions


def words(text: str) -> list[str]:
    """A stand-in tokenizer: one token per word or line end (its counts are what packing reads)."""
    return text.replace("\n", " \n ").split()


def func(name: str, n: int) -> str:
    body = "".join(f"    v{i} = compute_{name}({i})\n" for i in range(n))
    return f"def {name}(x):\n{body}    return x\n\n\n"


def test_a_function_that_fits_is_never_split():
    src = "import os\n\n\n" + "".join(func(f"f{i}", 6 + 3 * (i % 4)) for i in range(12))
    defs = {d.qualname: d for d in definitions(src, "m.py")}
    chunks = chunk_file(src, "pkg/m.py", words, 96)
    assert len(chunks) > 3 and all(len(c.tokens) <= 96 for c in chunks)
    for d in defs.values():
        holders = [c for c in chunks if c.lines[0] <= d.line1 and d.line0 <= c.lines[1]]
        assert len(holders) == 1, d.qualname  # each function whole in one block
    for c in chunks[1:]:
        assert any(d.line0 == c.lines[0] for d in defs.values())  # every block starts at a definition
    head = " ".join(chunks[1].tokens[:4])
    assert head.startswith(f"### pkg/m.py:{chunks[1].lines[0]}-{chunks[1].lines[1]} ·")
    assert all(d in defs for d in chunks[1].defs)


def test_a_long_function_is_cut_at_its_methods_and_named_inside():
    methods = "".join("    " + line for m in range(6) for line in split_lines(func(f"m{m}", 8)))
    src = "class Jar:\n" + methods
    chunks = chunk_file(src, "jar.py", words, 64)
    assert len(chunks) >= 3
    for c in chunks[1:]:
        assert c.label.startswith("in Jar") and "Jar" in c.defs
    assert all(src.split("\n")[c.lines[0] - 1].strip().startswith("def m") for c in chunks[1:])


def test_decorators_and_comments_above_a_definition_go_with_it():
    src = "x = 1\n\n# builds the body\n@cache\ndef build(a):\n    return a\n"
    (d,) = definitions(src, "a.py")
    assert (d.qualname, d.line0, d.line1) == ("build", 4, 6)
    chunks = chunk_file("y = 2\n" * 8 + src, "a.py", words, 60)  # 36 tokens, 30 a block
    assert [c.lines for c in chunks] == [(1, 9), (11, 14)]  # cut at the comment above the decorator
    assert chunks[1].label == "build"


def test_other_languages_by_their_definition_lines():
    js = "function foo(a) {\n  return 1;\n}\nexport class Bar {\n  run() {}\n}\nint main(int argc) {\n  return 0;\n}\n"
    got = [(d.qualname, d.line0, d.line1) for d in definitions(js, "a.js")]
    assert got == [("foo", 1, 3), ("Bar", 4, 6), ("main", 7, 9)]
    # Python that does not parse: the line fallback still finds its definitions
    assert [d.qualname for d in definitions("def broken(:\n    pass\n", "b.py")] == ["broken"]
    assert [d.qualname for d in definitions("def ok():\n    pass\nif x(:\n", "c.py")] == ["ok"]


def test_prose_prefers_headings_and_paragraphs():
    text = "".join(f"# Part {i}\n\n" + "word " * 30 + "\n\n" + "more " * 30 + "\n\n" for i in range(6))
    chunks = chunk_file(text, "notes.md", words, 90)
    starts = [text.split("\n")[c.lines[0] - 1] for c in chunks]
    assert all(s.startswith("# Part") or s.startswith(("word", "more")) for s in starts)
    assert sum(s.startswith("# Part") for s in starts) >= 3
