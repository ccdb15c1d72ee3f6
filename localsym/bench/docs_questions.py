"""Questions a user would ask of `bench docs`' default documents, written by hand.

Each is asked in the user's own words (not the section's title), has a short answer that is
checked in the model's reply (a regular expression, case-insensitive), and names where the
answer is: the PDF page (physical, 1-based, as our reader and ``pdftotext`` count) or the
section (the end of its heading path), with a ``quote`` from that place. A question is used
only when its document is in the corpus and the quote is found where it says (another
edition of the manual drops the questions it no longer answers; the run says how many).

Documents: ledger's manual (``ledger3.pdf``, Debian's ``ledger`` package, version 3.3.0;
pages 9-24 are within the default 32K-token prefix) and Ninja's HTML manual
(``/usr/share/doc/ninja-build/manual.html``, v1.11.1).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Asked:
    doc: str  # the file name's start (``ledger3``) or its full name (``manual.html``)
    marker: str  # a phrase the document must hold (tells Ninja's manual.html from another)
    question: str
    answer: str  # regular expression matched in the reply
    quote: str  # words at the answer's place, whitespace-normalised
    page: int | None = None
    section: str | None = None  # the heading path ends with this


LEDGER = ("ledger3", "Command-Line Accounting")
NINJA = ("manual.html", "The Ninja build system")

ASKED: tuple[Asked, ...] = (
    # ledger's manual (PDF pages are physical: book page 1 is PDF page 9)
    Asked(*LEDGER, "What breakfast food does the manual compare Ledger to?", r"muffin", "Bran Muffin", page=9),
    Asked(*LEDGER, "How much was the Pacific Bell phone bill in the example?", r"\$?23(\.00)?\b", "$23.00", page=9),
    Asked(
        *LEDGER, "What do other finance programs call what Ledger calls accounts?", r"categor", "categories", page=10
    ),
    Asked(*LEDGER, "Which programming language is Ledger written in?", r"C\+\+", "ANSI C++", page=11),
    Asked(*LEDGER, "Which script prepares the build and install of ledger?", r"acprep", "acprep script", page=11),
    Asked(*LEDGER, "On which IRC server can I ask about ledger?", r"libera", "irc.libera.chat", page=11),
    Asked(*LEDGER, "What is the sample journal that comes with the source called?", r"drewr3", "drewr3.dat", page=12),
    Asked(*LEDGER, "Which shell treats the caret character differently than ledger expects?", r"zsh", "zsh", page=12),
    Asked(*LEDGER, "Where does the manual say income comes from?", r"society", "society", page=15),
    Asked(
        *LEDGER, "What is the broader word the manual uses for debts?", r"liabilit", "inclusive name for Debts", page=15
    ),
    Asked(
        *LEDGER,
        "What is the sum of what I own and what I owe called?",
        r"net worth",
        "Assets and Liabilities is your net worth",
        page=16,
    ),
    Asked(*LEDGER, "Which option gives ledger a file of historical prices?", r"price-db", "--price-db FILE", page=19),
    Asked(*LEDGER, "How many bytes make one Kb in the manual's data example?", r"1024", "1.00 Kb = 1024 b", page=20),
    Asked(*LEDGER, "How many gold pieces did the two steaks fetch?", r"\b15\b|fifteen", "15 Gold", page=21),
    Asked(
        *LEDGER, "Who bought the steaks in the EverQuest example?", r"sturm|brightblade", "Sturm Brightblade", page=21
    ),
    Asked(*LEDGER, "What account should money taken from an ATM go to?", r"expenses:cash", "Expenses:Cash", page=22),
    Asked(
        *LEDGER,
        "Which brackets make a virtual posting that must balance?",
        r"square",
        "square brackets",
        page=23,
    ),
    # Ninja's manual (sections by their heading)
    Asked(
        *NINJA,
        "Which browser project did Ninja grow out of?",
        r"chromium",
        "Chromium browser project",
        section="Introduction",
    ),
    Asked(
        *NINJA,
        "How do I change the progress line Ninja prints before each rule?",
        r"NINJA_STATUS",
        "NINJA_STATUS",
        section="Environment variables",
    ),
    Asked(
        *NINJA,
        "What port does the dependency graph viewer listen on by default?",
        r"8000",
        "port 8000",
        section="Extra tools",
    ),
    Asked(
        *NINJA,
        "Which Python module in the distribution helps a script write build files?",
        r"ninja_syntax",
        "misc/ninja_syntax.py",
        section="Generating Ninja files from code",
    ),
    Asked(
        *NINJA,
        "Which rule name makes an alias for another target?",
        r"phony",
        "The special rule name phony",
        section="The phony rule",
    ),
    Asked(
        *NINJA,
        "In which file does Ninja record the command each output was built with?",
        r"ninja_log",
        "a file called .ninja_log",
        section="The Ninja log",
    ),
    Asked(
        *NINJA,
        "How many jobs at once may run with direct access to the terminal's input and output?",
        r"depth of (1|one)\b|\b(1|one) (job|task)|only (1|one)\b|\b(1|one) at a time",
        "a depth of 1",
        section="The console pool",
    ),
    Asked(
        *NINJA,
        "Which compiler flag makes gcc write header dependencies?",
        r"-MD\b",
        "The -MD flag to gcc",
        section="depfile",
    ),
)
