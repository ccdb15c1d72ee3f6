"""Walk a file or a tree the way a user expects: the files git would list, binaries and huge
files skipped with a reason, symlinks never followed out of the tree.

Inside a git work tree the file set is ``git ls-files -co --exclude-standard`` (tracked, plus
untracked and not ignored): git itself is the only exact reading of its ignore rules. Outside
one (or when git is absent or fails) the same rules are applied here: per-directory
``.gitignore`` files, ``.git/info/exclude`` and the global excludes file, matched the way
git's ``dir.c`` and ``wildmatch.c`` do, on raw bytes. Either way the walk never recurses
(an explicit stack, a depth cap), never enters a symlinked folder, and turns every odd thing
it meets (loops, unreadable folders, FIFOs, non-UTF-8 names, garbled ignore files) into a
skipped entry with a short reason rather than a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from localsym.documents import MAX_DOCUMENT_BYTES, document_kind
from localsym.errors import LocalsymError

MAX_FILE_BYTES = 1 << 20  # 1 MiB: bigger text files are almost always data, not code
ALWAYS_SKIP = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".mypy_cache", ".pytest_cache"}
MAX_DEPTH = 256  # folders deeper than this are not entered (no real tree comes close)
GIT_TIMEOUT_S = 60.0
SNIFF_BYTES = 8000  # git's own test: a NUL in the first 8000 bytes makes a file binary
MAX_IGNORE_FILE_BYTES = 1 << 20  # a bigger ignore file is garbage or an attack: read its start only

_ALWAYS_SKIP_B = {os.fsencode(n) for n in ALWAYS_SKIP}
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # O_NONBLOCK: a FIFO never blocks


@dataclass
class WalkResult:
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # ignore file -> how many entries it excluded (a tree inside a repository that ignores
    # it loads nothing, and says why)
    ignored: dict[str, int] = field(default_factory=dict)


IGNORED_CHECK_MAX = 20000  # excluded paths attributed to their ignore file, at most


def walk(path: str | Path, max_bytes: int = MAX_FILE_BYTES, no_ignore: bool = False) -> WalkResult:
    """The loadable files under ``path`` (sorted) and every file or folder passed over, with why.
    ``no_ignore`` (ripgrep's name): ignore files are not read, and every file is listed."""
    root = Path(path).expanduser()
    try:
        st = os.stat(root)
    except (FileNotFoundError, NotADirectoryError):
        raise LocalsymError(f"{root}: no such file or folder") from None
    except OSError as e:
        raise LocalsymError(f"{root}: {_why(e).lower()}") from None
    except ValueError:  # an embedded NUL
        raise LocalsymError(f"{root!r}: not a valid path") from None
    if not os.access(root, os.R_OK):
        raise LocalsymError(f"{root}: permission denied")
    out = WalkResult()
    if not stat.S_ISDIR(st.st_mode):  # a file, or a FIFO/device/socket that _consider turns away
        # named as a folder's walk names it (the folder resolved, the name kept, a symlink
        # not followed), so `notes.txt`, `./notes.txt` and `/abs/notes.txt` are one document
        _consider(root.parent.resolve() / root.name, out, max_bytes)
        return out
    _Walker(root.resolve(), out, max_bytes, no_ignore).run()
    out.files.sort()
    out.skipped.sort(key=lambda s: s[0])
    return out


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _consider(f: Path, out: WalkResult, max_bytes: int) -> None:
    """Take a regular, non-empty, not-too-big text file; say why anything else is passed over.
    Opened non-blocking and checked with fstat, so a FIFO swapped in after a stat cannot hang us."""
    try:
        fd = os.open(f, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            regular = stat.S_ISREG(st.st_mode)
            head = os.read(fd, SNIFF_BYTES) if regular and st.st_size > 0 else b""
            # a document (PDF, DOCX, EPUB, HTML, Markdown, mail) is read by localsym.documents,
            # binary or not, up to a larger cap; a damaged one is refused there, with its reason
            doc = regular and document_kind(f, head) is not None
            cap = max(max_bytes, MAX_DOCUMENT_BYTES) if doc else max_bytes
            if not regular:
                out.skipped.append((f, "not a regular file"))
            elif st.st_size > cap:
                out.skipped.append((f, f"too big ({st.st_size / 2**20:.1f} MiB > {cap / 2**20:.1f} MiB)"))
            elif st.st_size == 0:
                out.skipped.append((f, "empty"))
            elif not doc and b"\0" in head:
                out.skipped.append((f, "binary"))
            else:
                out.files.append(f)
        finally:
            os.close(fd)
    except OSError as e:
        out.skipped.append((f, f"unreadable ({_why(e)})"))


# -- git itself -----------------------------------------------------------------------------------------
def _git_ls_files(folder: Path) -> list[bytes] | None:
    """What git lists under ``folder`` (paths relative to it, raw bytes), or None when it is not
    a git work tree or git is absent, fails or hangs."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        r = subprocess.run(
            [git, "ls-files", "-co", "--exclude-standard", "-z"],
            check=False,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return [n for n in r.stdout.split(b"\0") if n]


def _git_ignored(folder: Path) -> dict[str, int]:
    """Which ignore files exclude which share of ``folder``'s files, as git reads them:
    ignore file -> count (git check-ignore on at most ``IGNORED_CHECK_MAX`` of them)."""
    git = shutil.which("git")
    if git is None:
        return {}
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        r = subprocess.run(
            [git, "ls-files", "-o", "-i", "--exclude-standard", "-z"],
            check=False,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            env=env,
        )
        names = [n for n in r.stdout.split(b"\0") if n] if r.returncode == 0 else []
        names = [n for n in names if not set(n.split(b"/")[:-1]) & _ALWAYS_SKIP_B]
        if not names:
            return {}
        c = subprocess.run(
            [git, "check-ignore", "-v", "-z", "--no-index", "--stdin"],
            check=False,
            cwd=folder,
            input=b"\0".join(names[:IGNORED_CHECK_MAX]) + b"\0",
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            env=env,
        )
        top = subprocess.run(
            [git, "rev-parse", "--show-toplevel"], check=False, cwd=folder, capture_output=True, timeout=GIT_TIMEOUT_S
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    repo = Path(os.fsdecode(top)) if top else folder  # git names ignore files from the work tree's top
    out: dict[str, int] = {}
    fields = c.stdout.split(b"\0")
    for i in range(0, len(fields) - 3, 4):  # source, line, pattern, path
        src = fields[i]
        if src:
            key = os.path.normpath(repo / os.fsdecode(src))  # an absolute source stays as it is
            out[key] = out.get(key, 0) + 1
    rest = len(names) - sum(out.values())
    if rest > 0 and len(names) > IGNORED_CHECK_MAX:
        out["(more, not attributed)"] = rest
    return out


def _global_excludes_file(folder: Path) -> Path | None:
    """core.excludesFile as git would read it from ``folder``, else the XDG default."""
    git = shutil.which("git")
    if git is not None:
        try:
            r = subprocess.run(
                [git, "config", "--path", "--get", "core.excludesFile"],
                check=False,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=GIT_TIMEOUT_S,
            )
            value = r.stdout.rstrip(b"\n")
            if r.returncode == 0 and value:
                return folder / os.fsdecode(value)  # an absolute value replaces folder
        except (OSError, subprocess.SubprocessError):
            pass
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "git" / "ignore"
    home = os.environ.get("HOME")
    return Path(home) / ".config" / "git" / "ignore" if home else None


# -- git's ignore rules, in Python ----------------------------------------------------------------------
class _Never(Exception):
    """A pattern git can never match (an unclosed bracket, a trailing backslash...)."""


class _Pattern(NamedTuple):
    regex: re.Pattern[bytes]
    negative: bool
    dir_only: bool
    basename: bool  # no slash: matched against the entry's name, not its path


class _Rules(NamedTuple):
    base: bytes  # the folder of the ignore file, relative to the walk's root, with a trailing slash
    patterns: tuple[_Pattern, ...]


_CLASSES: dict[bytes, frozenset[int]] = {
    name: frozenset(c for c in range(1, 128) if test(bytes([c])))
    for name, test in {
        b"alnum": bytes.isalnum,
        b"alpha": bytes.isalpha,
        b"digit": bytes.isdigit,
        b"lower": bytes.islower,
        b"upper": bytes.isupper,
        b"space": bytes.isspace,
        b"blank": lambda b: b in b" \t",
        b"cntrl": lambda b: b[0] < 32 or b[0] == 127,
        b"graph": lambda b: 33 <= b[0] <= 126,
        b"print": lambda b: 32 <= b[0] <= 126,
        b"punct": lambda b: 33 <= b[0] <= 126 and not b.isalnum(),
        b"xdigit": lambda b: b in b"0123456789abcdefABCDEF",
    }.items()
}


def _bracket(pat: bytes, i: int) -> tuple[bytes, int]:
    """Translate the bracket expression at ``pat[i] == '['`` as git's wildmatch reads it
    (a ']' first is literal, '!' or '^' negates, ranges by byte, [:class:]); never '/'."""
    n = len(pat)
    i += 1
    if i >= n:
        raise _Never
    negated = pat[i] in b"!^"
    if negated:
        i += 1
    members: set[int] = set()
    prev = 0
    while True:
        if i >= n:
            raise _Never
        c = pat[i]
        if c == 0x5C:  # backslash
            i += 1
            if i >= n:
                raise _Never
            members.add(pat[i])
            prev = pat[i]
        elif c == 0x2D and prev and i + 1 < n and pat[i + 1] != 0x5D:  # a range prev-hi
            i += 1
            hi = pat[i]
            if hi == 0x5C:
                i += 1
                if i >= n:
                    raise _Never
                hi = pat[i]
            members.update(range(prev, hi + 1))
            prev = 0
        elif c == 0x5B and i + 1 < n and pat[i + 1] == 0x3A:  # [:class:]
            k = i + 2
            while k < n and pat[k] != 0x5D:
                k += 1
            if k >= n:
                raise _Never
            if k - (i + 2) - 1 < 0 or pat[k - 1] != 0x3A:  # no ":]": a plain '['
                members.add(c)
                prev = c
            else:
                cls = _CLASSES.get(pat[i + 2 : k - 1])
                if cls is None:
                    raise _Never
                members |= cls
                prev = 0
                i = k
        else:
            members.add(c)
            prev = c
        i += 1
        if i >= n:
            raise _Never
        if pat[i] == 0x5D:
            break
    chosen = (set(range(1, 256)) - members) if negated else members
    chosen.discard(0x2F)
    if not chosen:
        return b"(?!)", i + 1
    return b"[" + b"".join(b"\\x%02x" % v for v in sorted(chosen)) + b"]", i + 1


def _translate(pat: bytes) -> re.Pattern[bytes]:
    """git's wildmatch with WM_PATHNAME as a regex: '*' and '?' stop at '/', '**' between
    slashes (or at either end) crosses them, '**/' may match no folder at all."""
    out: list[bytes] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == 0x2A:  # '*'
            j = i
            while j < n and pat[j] == 0x2A:
                j += 1
            if j - i >= 2 and (i == 0 or pat[i - 1] == 0x2F) and (j == n or pat[j] == 0x2F or pat[j : j + 2] == b"\\/"):
                if j < n and pat[j] == 0x2F:
                    out.append(b"(?:.*/)?")
                    j += 1
                else:
                    out.append(b".*")
            else:
                out.append(b"[^/]*")
            i = j
        elif c == 0x3F:  # '?'
            out.append(b"[^/]")
            i += 1
        elif c == 0x5B:  # '['
            cls, i = _bracket(pat, i)
            out.append(cls)
        elif c == 0x5C:  # backslash: the next byte is literal; a trailing one never matches
            if i + 1 >= n:
                raise _Never
            out.append(re.escape(pat[i + 1 : i + 2]))
            i += 2
        else:
            out.append(re.escape(pat[i : i + 1]))
            i += 1
    return re.compile(b"".join(out), re.DOTALL)


def _trim_trailing_spaces(line: bytes) -> bytes:
    """git's trim_trailing_spaces: unescaped trailing spaces go, a backslash keeps the next byte."""
    last_space = None
    i = 0
    while i < len(line):
        c = line[i]
        if c == 0x20:
            if last_space is None:
                last_space = i
        elif c == 0x5C:
            i += 1
            if i >= len(line):
                return line
            last_space = None
        else:
            last_space = None
        i += 1
    return line if last_space is None else line[:last_space]


def _parse_ignore(data: bytes, base: bytes = b"") -> tuple[_Rules, int]:
    """Patterns of one ignore file as git reads them, and how many lines were malformed
    (a NUL byte, which git cuts the line at, or a pattern that can never match)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    patterns, bad = [], 0
    for line in data.split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        if line.endswith(b"\r"):
            line = line[:-1]
        garbled = b"\0" in line
        if garbled:  # git reads the line as a C string
            line = line[: line.index(b"\0")]
        line = _trim_trailing_spaces(line)
        negative = line.startswith(b"!")
        if negative:
            line = line[1:]
        dir_only = line.endswith(b"/")
        if dir_only:
            line = line[:-1]
        basename = b"/" not in line
        if not basename and line.startswith(b"/"):
            line = line[1:]
        try:
            patterns.append(_Pattern(_translate(line), negative, dir_only, basename))
        except (_Never, re.error):
            garbled = True
        bad += garbled
    return _Rules(base, tuple(patterns)), bad


def _is_dir(e: os.DirEntry[str]) -> bool:
    """A real folder: a symlink to one is a file to git, and is never entered."""
    try:
        return e.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _ignored(chain: tuple[_Rules, ...], rel: bytes, name: bytes, is_dir: bool) -> _Rules | None:
    """git's rule: the deepest ignore file with a matching pattern decides, by its last match;
    .git/info/exclude and the global file sit at the shallow end of ``chain``. Returns the
    rules that excluded the entry, or None when it is not excluded."""
    for rules in reversed(chain):
        sub = rel[len(rules.base) :]
        for p in reversed(rules.patterns):
            if p.dir_only and not is_dir:
                continue
            if p.regex.fullmatch(name if p.basename else sub):
                return None if p.negative else rules
    return None


class _Walker:
    """One walk: a worklist of trees (git's listing first, these rules when git says no),
    each walked with an explicit stack."""

    def __init__(self, top: Path, out: WalkResult, max_bytes: int, no_ignore: bool = False) -> None:
        self.top, self.out, self.max_bytes = top, out, max_bytes
        self.no_ignore = no_ignore
        # without git (or told to ignore no file), a nested repository is a plain folder
        self.git = shutil.which("git") is not None and not no_ignore
        self.rule_files: dict[int, str] = {}  # id of a file's rules -> its path, to say what excluded what

    def excluded(self, rules: _Rules) -> None:
        where = self.rule_files.get(id(rules), "ignore rules")
        self.out.ignored[where] = self.out.ignored.get(where, 0) + 1

    def skip(self, p: Path, why: str) -> None:
        self.out.skipped.append((p, why))

    def run(self) -> None:
        trees = [(self.top, 0)]  # (folder, its depth below top); nested repositories join as met
        while trees:
            folder, depth = trees.pop()
            names = _git_ls_files(folder) if self.git else None
            if names is None:
                self.walk_here(folder, depth, trees)
            else:
                self.take_listing(folder, depth, names, trees)
                for where, n in _git_ignored(folder).items():
                    self.out.ignored[where] = self.out.ignored.get(where, 0) + n

    # -- a listing from git
    def take_listing(self, folder: Path, depth: int, names: list[bytes], trees: list[tuple[Path, int]]) -> None:
        too_deep: set[Path] = set()
        for raw in sorted(set(names)):
            parts = raw.rstrip(b"/").split(b"/")
            if any(p in _ALWAYS_SKIP_B for p in parts[:-1]) or parts[-1] in (b".gitignore", b".git"):
                continue
            if depth + len(parts) - 1 > MAX_DEPTH:
                cut = folder / os.fsdecode(b"/".join(parts[: MAX_DEPTH - depth + 1]))
                if cut not in too_deep:
                    too_deep.add(cut)
                    self.skip(cut, "too deep")
                continue
            p = folder / os.fsdecode(b"/".join(parts))
            try:
                st = os.lstat(p)
            except FileNotFoundError:  # tracked but deleted, or outside a sparse checkout
                continue
            except OSError as e:
                self.skip(p, f"unreadable ({_why(e)})")
                continue
            if stat.S_ISDIR(st.st_mode):  # a nested repository or a submodule
                if parts[-1] in _ALWAYS_SKIP_B:
                    continue
                if depth + len(parts) > MAX_DEPTH:
                    self.skip(p, "too deep")
                elif os.path.lexists(p / ".git"):
                    trees.append((p, depth + len(parts)))
                continue
            self.take_file(p, st)

    # -- no git: the rules here
    def walk_here(self, folder: Path, depth: int, trees: list[tuple[Path, int]]) -> None:
        base = () if self.no_ignore else self.base_rules(folder)
        stack: list[tuple[Path, bytes, int, tuple[_Rules, ...]]] = [(folder, b"", depth, base)]
        while stack:
            d, rel, level, chain = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as err:
                self.skip(d, f"unreadable ({_why(err)})")
                continue
            for e in entries:
                if e.name == ".gitignore" and not _is_dir(e) and not self.no_ignore:
                    rules = self.read_ignore(Path(e.path), rel, follow=False)
                    if rules is not None:
                        chain = (*chain, rules)
            below = []
            for e in entries:
                name = os.fsencode(e.name)
                is_dir = _is_dir(e)
                if name == b".git" or (is_dir and name in _ALWAYS_SKIP_B) or (name == b".gitignore" and not is_dir):
                    continue
                by = _ignored(chain, rel + name, name, is_dir)
                if by is not None:
                    self.excluded(by)
                    continue
                p = Path(e.path)
                if not is_dir:
                    self.take_file(p)
                elif level + 1 > MAX_DEPTH:
                    self.skip(p, "too deep")
                elif self.git and os.path.lexists(p / ".git"):  # a nested repository: git's own listing
                    trees.append((p, level + 1))
                else:
                    below.append((p, rel + name + b"/", level + 1, chain))
            stack.extend(reversed(below))

    def base_rules(self, folder: Path) -> tuple[_Rules, ...]:
        """The global excludes file, then .git/info/exclude (which wins over it)."""
        chain: list[_Rules] = []
        glob = _global_excludes_file(folder)
        if glob is not None:
            rules = self.read_ignore(glob, b"", follow=True, quiet_missing=True)
            if rules is not None:
                chain.append(rules)
        if (folder / ".git").is_dir():
            rules = self.read_ignore(folder / ".git" / "info" / "exclude", b"", follow=True, quiet_missing=True)
            if rules is not None:
                chain.append(rules)
        return tuple(chain)

    def read_ignore(self, path: Path, base: bytes, follow: bool, quiet_missing: bool = False) -> _Rules | None:
        """An ignore file's rules, or None (with a skipped entry) when it cannot be read.
        A symlinked .gitignore in the tree is not followed: git does not either."""
        try:
            fd = os.open(path, _OPEN_FLAGS | (0 if follow else getattr(os, "O_NOFOLLOW", 0)))
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    self.skip(path, "ignore file is not a regular file (not read)")
                    return None
                data = os.read(fd, MAX_IGNORE_FILE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR) and quiet_missing:
                return None
            if e.errno == errno.ELOOP and not follow:
                self.skip(path, "symlinked ignore file (not followed)")
            else:
                self.skip(path, f"unreadable ({_why(e)})")
            return None
        notes = []
        if len(data) > MAX_IGNORE_FILE_BYTES:
            data = data[: data.rfind(b"\n", 0, MAX_IGNORE_FILE_BYTES) + 1]
            notes.append(f"only its first {MAX_IGNORE_FILE_BYTES >> 20} MiB read")
        rules, bad = _parse_ignore(data, base)
        self.rule_files[id(rules)] = str(path)
        if bad:
            notes.append(f"{bad} malformed pattern line{'s' if bad > 1 else ''} read as git reads them")
        if notes:
            self.skip(path, "ignore file: " + "; ".join(notes))
        return rules

    # -- one file
    def take_file(self, p: Path, st: os.stat_result | None = None) -> None:
        """Symlinks: taken only when they resolve to a file inside the tree."""
        try:
            st = st or os.lstat(p)
        except OSError as e:
            self.skip(p, f"unreadable ({_why(e)})")
            return
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.stat(p)
            except OSError as e:
                why = {errno.ELOOP: "symlink loop", errno.ENOENT: "dangling symlink"}.get(e.errno or 0)
                self.skip(p, why or f"unreadable ({_why(e)})")
                return
            if not Path(os.path.realpath(p)).is_relative_to(self.top):
                self.skip(p, "symlink out of the tree")
                return
            if stat.S_ISDIR(target.st_mode):
                self.skip(p, "symlinked folder (not followed)")
                return
        _consider(p, self.out, self.max_bytes)
