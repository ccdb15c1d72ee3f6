"""The walker picks exactly the files git would, and turns every hostile tree into skips, not tracebacks.

Most cases run twice: with git's own listing ("git": the tree is a repository) and with the
Python rules ("rules": the listing is switched off, as when git is absent or fails)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from localsym import ingest
from localsym.errors import LocalsymError
from localsym.ingest import MAX_DEPTH, walk

HAS_GIT = shutil.which("git") is not None


@pytest.fixture(autouse=True)
def quiet_git(tmp_path, monkeypatch):
    """No user or system git config leaks in; commits need no identity of the user's."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "gitconfig").write_text("")
    monkeypatch.setenv("HOME", str(cfg))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cfg / "xdg"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(k, "t")
    for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(k, "t@example.com")
    for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(k, raising=False)


def git(cwd: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout


def git_set(root: Path) -> set[bytes]:
    """What git lists, less the .gitignore files (the walker reads those, it does not load them)."""
    out = git(root, "ls-files", "-co", "--exclude-standard", "-z").split(b"\0")
    return {n for n in out if n and n.split(b"/")[-1] != b".gitignore"}


def rel(found: ingest.WalkResult, root: Path) -> set[bytes]:
    return {os.fsencode(p.relative_to(root.resolve())) for p in found.files}


def reasons(found: ingest.WalkResult, root: Path) -> dict[bytes, str]:
    return {os.fsencode(p.relative_to(root.resolve())): why for p, why in found.skipped}


@pytest.fixture(params=["rules", "git"])
def mode(request, monkeypatch) -> str:
    if request.param == "git" and not HAS_GIT:
        pytest.skip("git is not installed")
    if request.param == "rules":
        monkeypatch.setattr(ingest, "_git_ls_files", lambda folder: None)
    return request.param


def tree(tmp_path: Path, mode: str) -> Path:
    t = tmp_path / "t"
    t.mkdir()
    if mode == "git":
        git(t, "init", "-q")
    return t


def write(root: Path, files: dict[str | bytes, str | bytes]) -> None:
    for name, body in files.items():
        p = root / os.fsdecode(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body if isinstance(body, bytes) else body.encode())


# -- the same file set as git -----------------------------------------------------------------------
REPO = {
    ".gitignore": "*.log\nbuild/\n/secret.txt\n*.tmp\n",
    "a.py": "a = 1\n",
    "notes.log": "n\n",
    "secret.txt": "s\n",
    "x.tmp": "t\n",
    "build/out.py": "o\n",
    "pkg/build/gen.py": "g\n",
    "pkg/build.py": "b = 1\n",
    "pkg/secret.txt": "not anchored here\n",
    "sub/.gitignore": "!keep.log\n!*.tmp\n",
    "sub/keep.log": "k\n",
    "sub/other.log": "o\n",
    "sub/y.tmp": "y\n",
    "sub/b.py": "b = 2\n",
    "sub/deep/.gitignore": "*.py\n!main.py\n",
    "sub/deep/main.py": "m\n",
    "sub/deep/util.py": "u\n",
    "sub/deep/readme.txt": "r\n",
    "docs/.gitignore": "*\n!*/\n!*.md\n",
    "docs/a.md": "a\n",
    "docs/a.txt": "a\n",
    "docs/x/b.md": "b\n",
    "docs/x/c.txt": "c\n",
    "local-only.txt": "excluded by .git/info/exclude\n",
    "a.bak": "excluded by core.excludesFile\n",
    "tests/data/[x].txt": "brackets\n",
    "#hash.txt": "h\n",
}
EXPECTED = {
    b"a.py",
    b"pkg/build.py",
    b"pkg/secret.txt",
    b"sub/keep.log",
    b"sub/y.tmp",
    b"sub/b.py",
    b"sub/deep/main.py",
    b"sub/deep/readme.txt",
    b"docs/a.md",
    b"docs/x/b.md",
    b"tests/data/[x].txt",
    b"#hash.txt",
}


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_same_files_as_git_with_and_without_git(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    write(root, REPO)
    git(root, "init", "-q")
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "exclude").write_text("/local-only.txt\n")
    (tmp_path / "repo-excludes").write_text("*.bak\n")
    git(root, "config", "core.excludesFile", str(tmp_path / "repo-excludes"))
    git(root, "add", "a.py", "sub/b.py", ".gitignore")
    git(root, "commit", "-q", "-m", "some files tracked, the rest untracked")

    want = git_set(root)
    assert want == EXPECTED  # the tree has teeth: nested negations, an ignored folder, both exclude files
    found = walk(root)
    assert rel(found, root) == want and found.skipped == []  # git's own listing
    assert found.files == sorted(found.files)

    monkeypatch.setattr(ingest, "_git_ls_files", lambda folder: None)
    assert rel(walk(root), root) == want  # the Python rules on the same repository: exactly git's set

    # The same tree with no .git: .git/info/exclude and the repository's own core.excludesFile are gone
    # with it, so exactly the two files they excluded come back; nothing else differs.
    bare = tmp_path / "copy"
    shutil.copytree(root, bare, ignore=shutil.ignore_patterns(".git"))
    assert rel(walk(bare), bare) == want | {b"local-only.txt", b"a.bak"}


def test_global_excludes_file_without_git(tmp_path, monkeypatch):
    """No git on PATH at all: the XDG global ignore file still applies."""
    root = tmp_path / "t"
    write(root, {"a.py": "a\n", "b.swp": "s\n"})
    (tmp_path / "cfg" / "xdg" / "git").mkdir(parents=True)
    (tmp_path / "cfg" / "xdg" / "git" / "ignore").write_text("*.swp\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert rel(walk(root), root) == {b"a.py"}


def test_wildmatch_corners_match_git(tmp_path, mode):
    """Pattern forms whose reading differs between gitignore implementations."""
    root = tmp_path / "t"
    write(
        root,
        {
            ".gitignore": "a/**/b\n**/c\nd/**\n[!x]?.md\n[[:digit:]]*\nsp\\ \ntrail   \n\\!bang\n",
            "a/b": "1",
            "a/q/r/b": "1",
            "ab": "1",
            "k/c": "1",
            "d/e/f": "1",
            "d.txt": "1",
            "xy.md": "1",
            "zy.md": "1",
            "9lives": "1",
            "sp ": "1",
            "trail": "1",
            "!bang": "1",
            "keep/e": "1",
        },
    )
    if mode == "git":
        git(root, "init", "-q")
        assert rel(walk(root), root) == git_set(root)
    assert rel(walk(root), root) == {b"ab", b"d.txt", b"xy.md", b"keep/e"}


# -- hostile trees --------------------------------------------------------------------------------------
def test_symlink_loops_and_dangling_links(tmp_path, mode):
    root = tree(tmp_path, mode)
    write(root, {"a.py": "a\n", "d/b.py": "b\n"})
    (root / "self").symlink_to("self")
    (root / "d" / "up").symlink_to("..")  # a folder loop: never entered
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    (root / "gone").symlink_to("nowhere")
    (root / "inside.py").symlink_to("a.py")  # a link to a file in the tree is loaded
    found = walk(root)
    assert rel(found, root) == {b"a.py", b"d/b.py", b"inside.py"}
    why = reasons(found, root)
    assert why[b"self"] == why[b"ping"] == why[b"pong"] == "symlink loop"
    assert why[b"d/up"] == "symlinked folder (not followed)"
    assert why[b"gone"] == "dangling symlink"


def test_links_out_of_the_tree(tmp_path, mode):
    root = tree(tmp_path, mode)
    write(root, {"a.py": "a\n"})
    (tmp_path / "secret.txt").write_text("do not read\n")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (root / "etc").symlink_to(tmp_path / "cfg")
    found = walk(root)
    assert rel(found, root) == {b"a.py"}
    assert reasons(found, root) == {b"leak.txt": "symlink out of the tree", b"etc": "symlink out of the tree"}


def test_non_utf8_names_are_loaded(tmp_path, mode):
    root = tree(tmp_path, mode)
    write(root, {"a.py": "a\n"})
    base = os.fsencode(root)
    os.mkdir(base + b"/d\xff")
    for name in (b"/caf\xe9.txt", b"/d\xff/x\x80y.py"):
        with open(base + name, "wb") as f:
            f.write(b"text\n")
    found = walk(root)
    assert rel(found, root) == {b"a.py", b"caf\xe9.txt", b"d\xff/x\x80y.py"}
    for p in found.files:
        assert p.read_text(encoding="utf-8", errors="replace")


def _deny(monkeypatch, where: Path) -> None:
    """Make ``where`` unreadable: chmod 000, or (as root, whom chmod does not stop) fail its opens."""
    if os.geteuid() != 0:
        where.chmod(0)
        return
    real_open, real_scandir = os.open, os.scandir

    def refuse(p):
        if os.fsencode(p) == os.fsencode(where):
            raise PermissionError(13, "Permission denied")

    def fake_open(p, *a, **kw):
        refuse(p)
        return real_open(p, *a, **kw)

    def fake_scandir(p="."):
        refuse(p)
        return real_scandir(p)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)


def test_unreadable_gitignore_folder_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "_git_ls_files", lambda folder: None)
    root = tmp_path / "t"
    write(
        root,
        {
            "a.py": "a\n",
            "x.log": "l\n",
            "sub/.gitignore": "*.log\n",
            "sub/y.log": "y\n",
            "locked/z.py": "z\n",
            "c.py": "c\n",
        },
    )
    (root / ".gitignore").write_text("*.log\n")
    for p in ("sub/.gitignore", "locked", "c.py"):
        _deny(monkeypatch, (root / p).resolve())
    try:
        found = walk(root)
    finally:
        for p in ("sub/.gitignore", "locked", "c.py"):
            (root / p).chmod(0o755)
    assert rel(found, root) == {b"a.py"}  # sub/y.log still ignored by the root's rule
    denied = "unreadable (Permission denied)"
    assert reasons(found, root) == {b"sub/.gitignore": denied, b"locked": denied, b"c.py": denied}


def test_garbled_gitignore_is_read_as_git_reads_it(tmp_path, mode):
    root = tree(tmp_path, mode)
    write(
        root,
        {
            ".gitignore": b"\xef\xbb\xbf*.log\r\n\xff\xfe\x00\x01\n[unclosed\nback\\\na\x00junk\n\xe9t\xe9.txt\n"
            + bytes(range(1, 256))
            + b"\n",
            "x.log": "l\n",
            "a": "a\n",
            "ajunk": "j\n",
            "keep.txt": "k\n",
            "[unclosed": "u\n",
            "back\\": "b\n",
            "\xe9t\xe9.txt".encode("latin-1"): "e\n",
        },
    )
    found = walk(root)
    want = {b"ajunk", b"keep.txt", b"[unclosed", b"back\\"}
    assert rel(found, root) == want
    if mode == "git":
        assert git_set(root) == want
    else:
        # a NUL twice, an unclosed bracket twice (one in the line of every byte), a trailing backslash
        assert reasons(found, root) == {b".gitignore": "ignore file: 5 malformed pattern lines read as git reads them"}


def test_very_deep_tree(tmp_path, mode):
    root = tree(tmp_path, mode)
    deep = root
    for i in range(300):
        deep = deep / "d"
        if i in (0, 99):
            deep.mkdir(parents=True)
            (deep / "f.txt").write_text(f"level {i}\n")
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("too far down\n")
    found = walk(root)
    assert rel(found, root) == {b"d/f.txt", b"/".join([b"d"] * 100) + b"/f.txt"}
    assert reasons(found, root) == {b"/".join([b"d"] * (MAX_DEPTH + 1)): "too deep"}


def test_fifo_device_and_always_skip(tmp_path, mode):
    root = tree(tmp_path, mode)
    write(root, {"a.py": "a\n", "node_modules/x.js": "x\n", ".venv/lib/y.py": "y\n", "empty.txt": ""})
    os.mkfifo(root / "pipe")
    found = walk(root)  # would hang forever if the FIFO were opened for reading
    assert rel(found, root) == {b"a.py"}
    why = reasons(found, root)
    assert why[b"empty.txt"] == "empty"
    assert why.get(b"pipe", "not a regular file") == "not a regular file"  # git does not even list it
    assert walk(root / "pipe").skipped == [(root / "pipe", "not a regular file")]
    assert walk("/dev/null").skipped == [(Path("/dev/null"), "not a regular file")]


def test_text_is_what_git_calls_text(tmp_path, mode):
    root = tree(tmp_path, mode)
    write(
        root,
        {
            "latin1.txt": "café = 'crème'\n".encode("latin-1"),
            "nul.dat": b"abc\x00def\n",
            "late_nul.txt": b"x" * 8000 + b"\x00",
            "big.txt": "x" * 10_000,
        },
    )
    found = walk(root, 9000)
    assert rel(found, root) == {b"latin1.txt", b"late_nul.txt"}
    assert "caf\ufffd" in found.files[1].read_text(encoding="utf-8", errors="replace")
    why = reasons(found, root)
    assert why[b"nul.dat"] == "binary"
    assert why[b"big.txt"].startswith("too big")


def test_nested_repository_gets_its_own_listing(tmp_path):
    if not HAS_GIT:
        pytest.skip("git is not installed")
    root = tmp_path / "t"
    write(root, {"a.py": "a\n", "inner/.gitignore": "*.gen\n", "inner/b.py": "b\n", "inner/c.gen": "c\n"})
    git(root / "inner", "init", "-q")
    (root / "inner" / ".git" / "info" / "exclude").write_text("b.py\n")
    assert rel(walk(root), root) == {b"a.py"}  # not a repository: rules here, the inner one by git
    git(root, "init", "-q")
    assert rel(walk(root), root) == {b"a.py"}


def test_missing_path_is_one_line(tmp_path):
    with pytest.raises(LocalsymError, match="no such file or folder") as e:
        walk(tmp_path / "missing")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_a_tree_its_repository_ignores_says_why_and_loads_with_no_ignore(tmp_path):
    """A Python installed under a version manager's repository (pyenv ignores `versions/`):
    the walk lists nothing but says which ignore file excluded how many files, and
    `no_ignore` lists them all (git's own listing is not used then)."""
    repo = tmp_path / "manager"
    lib = repo / "versions" / "3.11" / "lib"
    write(lib, {"json/encoder.py": "x = 1\n", "json/decoder.py": "y = 2\n", "os.py": "z = 3\n"})
    (repo / ".gitignore").write_text("/versions/\n")
    git(repo, "init", "-q")
    found = walk(lib)
    assert found.files == [] and found.skipped == []
    assert found.ignored == {str(repo / ".gitignore"): 3}
    every = walk(lib, no_ignore=True)
    assert rel(every, lib) == {b"json/encoder.py", b"json/decoder.py", b"os.py"} and every.ignored == {}


def test_ignored_entries_are_counted_without_git(tmp_path, mode):
    root = tmp_path / "t"
    write(root, {"a.py": "a\n", "build/x.o.txt": "o\n", "b.log": "l\n", "c.log": "l\n"})
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    if mode == "git":
        git(root, "init", "-q")
    found = walk(root)
    assert rel(found, root) == {b"a.py"}
    # git counts files, the rules count entries (an ignored folder is one)
    assert found.ignored == {str(root.resolve() / ".gitignore"): 3}
    assert rel(walk(root, no_ignore=True), root) == {b"a.py", b"build/x.o.txt", b"b.log", b"c.log"}
