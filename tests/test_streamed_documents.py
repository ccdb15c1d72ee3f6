"""A big document streams into a session (#29 item 5): an mbox past the streaming size is
read, cut and loaded message by message, never held whole; Ctrl+C part-way keeps the blocks
that came in (the document marked partial), and loading it again goes on from there with
those blocks from the block cache, ending as a whole load would. Real SmolLM2; the
streaming threshold is lowered so that a small mbox streams."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from localsym.documents import DocumentError, PartStream
from localsym.runtime.bridge import Cancelled
from localsym.session import RunOptions, Session, SessionConfig, _session

OPTS = RunOptions(n_ctx=2048, vram="cpu")
CFG = SessionConfig(block_tokens=128, system="")
SUBJECTS = [f"Boat log {n}: {what}" for n, what in enumerate(["rudder", "sails", "anchor", "engine", "hull", "mast"])]


def _mbox(path: Path) -> Path:
    box = mailbox.mbox(str(path))
    for n, subject in enumerate(SUBJECTS):
        m = mailbox.mboxMessage()
        m["From"] = "Ann Lee <ann@example.org>"
        m["Date"] = f"Sat, 0{n + 1} Dec 2026 10:00:00 +0000"
        m["Subject"] = subject
        body = f"Entry {n}. " + " ".join(f"We checked the {subject.split(': ')[1]} on watch {k}." for k in range(12))
        m.set_payload(body + "\n")
        box.add(m)
    box.flush()
    box.close()
    return path


@pytest.fixture
def streaming(monkeypatch):
    monkeypatch.setattr(_session, "STREAM_BYTES", 1024)
    monkeypatch.setattr(_session, "STREAM_GROUP_CHARS", 600)


def _texts(s: Session) -> str:
    return "".join(s.engine.model.detokenize(b.tokens.tolist()) for b in s.docs)


def test_a_big_mbox_streams_in_with_every_message(home, tmp_path, streaming):
    box = _mbox(tmp_path / "log.mbox")
    seen: list[tuple[int, int]] = []
    with Session.open("stream", "smollm2-135m", OPTS, CFG) as s:
        rep = s.load(str(box), progress=lambda d, t, _s: seen.append((d, t)))
        assert rep.files == 1 and not rep.skipped and rep.blocks >= 6
        text = _texts(s)
        assert all(subject in text for subject in SUBJECTS)
        assert s.status().total_tokens >= rep.tokens
        # the bar's total is an estimate while it streams, never below what is done
        assert seen and all(t >= d for d, t in seen) and seen[-1][0] == rep.tokens
        # unchanged: nothing is read into the session again
        assert s.load(str(box)).blocks == 0


def test_stopping_part_way_keeps_what_came_in_and_a_reload_goes_on(home, tmp_path, streaming):
    box = _mbox(tmp_path / "log.mbox")
    with Session.open("cut", "smollm2-135m", OPTS, CFG) as s:
        calls: list[int] = []

        def stop_after_three(done: int, total: int, source: str) -> None:
            calls.append(done)
            if len(calls) == 3:
                s.cancel()  # what the first Ctrl+C does: the next block's decode stops

        with pytest.raises(Cancelled):
            s.load(str(box), progress=stop_after_three)
    with Session.open("cut", opts=OPTS) as s:
        kept = len(s.docs)
        assert kept == 3  # the blocks that came in stayed
        assert SUBJECTS[0] in _texts(s) and SUBJECTS[-1] not in _texts(s)
        rep = s.load(str(box))  # marked partial: read again, and it goes on
        assert rep.reused_blocks >= kept and rep.computed_blocks > 0
        assert all(subject in _texts(s) for subject in SUBJECTS)
        n = len(s.docs)
        assert s.load(str(box)).blocks == 0  # now whole: unchanged
    with Session.open("whole", "smollm2-135m", OPTS, CFG) as s:  # in one go: the same blocks
        rep = s.load(str(box))
        assert rep.blocks == n and rep.computed_blocks == 0


def test_damage_further_in_keeps_what_came_before_it(home, tmp_path, streaming, monkeypatch):
    """A reader that fails part-way (a damaged page or message further on): the blocks before
    it stay, the load says why it stopped, and a later load of the mended file goes on."""
    box = _mbox(tmp_path / "log.mbox")
    real = _session.iter_parts

    def failing(path, progress=None):
        stream = real(path, progress)

        def parts():
            for n, part in enumerate(stream):
                if n == 3:
                    raise DocumentError("damaged message")
                yield part

        return PartStream(stream.kind, stream.title, parts())

    monkeypatch.setattr(_session, "iter_parts", failing)
    with Session.open("dmg", "smollm2-135m", OPTS, CFG) as s:
        rep = s.load(str(box))
        (why,) = [w for p, w in rep.skipped if p == str(box)]
        assert why.startswith("damaged message (stopped there:") and rep.files == 1
        kept = len(s.docs)
        assert kept == rep.blocks > 0 and SUBJECTS[-1] not in _texts(s)
    monkeypatch.setattr(_session, "iter_parts", real)
    with Session.open("dmg", opts=OPTS) as s:
        assert len(s.docs) == kept
        rep = s.load(str(box))
        assert rep.reused_blocks >= kept and all(subject in _texts(s) for subject in SUBJECTS)


def test_stopping_the_reload_of_a_changed_file_keeps_its_whole_older_version(home, tmp_path, streaming):
    box = _mbox(tmp_path / "log.mbox")
    with Session.open("grow", "smollm2-135m", OPTS, CFG) as s:
        whole = s.load(str(box)).blocks
        older = _texts(s)
    with open(box, "a") as f:  # the archive grows at its end
        f.write("From ann@example.org Sat Dec 12 10:00:00 2026\nSubject: Boat log 6: keel\n\nNew entry.\n\n")
    with Session.open("grow", opts=OPTS) as s:
        calls: list[int] = []

        def stop_early(done: int, total: int, source: str) -> None:
            calls.append(done)
            if len(calls) == 2:
                s.cancel()

        # its first blocks are the same as before (from the block cache): stop where new ones decode
        with pytest.raises(Cancelled):
            s.load(str(box), progress=stop_early)
    with Session.open("grow", opts=OPTS) as s:
        assert len(s.docs) == whole and _texts(s) == older  # the whole older version, not a part of the new
        s.load(str(box))
        assert "Boat log 6: keel" in _texts(s) and len(s.docs) > whole
