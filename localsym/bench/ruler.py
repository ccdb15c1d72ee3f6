"""RULER's synthetic tasks (Hsieh et al. 2024, github.com/NVIDIA/RULER) over real haystack
text, scored on the model's own generated answer.

Tasks, with RULER's phrasing (``scripts/data/synthetic/constants.py``) and its default
settings (``scripts/synthetic.yaml``):

- ``niah_single``: one needle "One of the special magic numbers for KEY is: VALUE."
- ``niah_multikey``: four needles of the same shape, differing only in their key; one asked
  (RULER's niah_multikey_1).
- ``niah_multivalue``: four needles with the same key and different values; all asked.
- ``niah_multiquery``: four keys, one value each, all asked in one question.
- ``vt``: variable tracking, one chain of four hops ``VAR X1 = 12345``, ``VAR X2 = VAR X1``,
  ...; the answer is every name bound to the value (no few-shot example, unlike RULER).
- ``cwe``: common-word extraction, a numbered list where ten words appear 30 times and the
  others 3 (RULER's freq_cw/freq_ucw; more where the word pool runs short); the answer is
  the ten. The words are the lowercase words of the stdlib sources.

Score: RULER's ``string_match_all``, the fraction of the expected strings found in the
answer (recall of the values for multi-value and multi-query, of the names for vt, of the
ten words for cwe), matched case-insensitively as whole words (RULER matches substrings);
``all_correct`` is the all-or-nothing rate beside it.

Layout: the haystack is the CPython standard library sources cut into pages of ``--page``
tokens at fixed line boundaries, independent of task, trial and length (a longer length
only adds pages), each page its own document ``stdlib-NNNN.py``. Each needle is its own
small document (``note-NN.txt``) ingested between two pages at its depth; the task's
instruction is the first document. So every haystack page has the same tokens wherever it
appears and the session's content-addressed block store computes it once per run: a trial
computes only its needles' blocks (cwe's word list is the exception: each trial's list is
new). The raw model (the session API's ``OneShot``, no memory layer) reads exactly the
same documents, concatenated in the session's document form, at its native context: the
1x instances, the same ones the session gets at 1x. An "oracle" run gives the model only
the instruction, the needles and the question: a miss the oracle also makes is the model's
own, a miss only the session makes is the long context's (retrieval or interference).
"""

from __future__ import annotations

import argparse
import random
import re
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localsym.bench import emit, private_home
from localsym.bench.corpus import stdlib_text, stdlib_words
from localsym.bench.heatmap import write_png

if TYPE_CHECKING:
    from localsym.session import Tokenizer

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe")
NEEDLES = 4  # RULER's num_needle_k / num_needle_v / num_needle_q
VT_HOPS = 4  # RULER's vt: one chain, four hops (five names)
CWE_COMMON, CWE_FREQ, CWE_RARE_FREQ = 10, 30, 3
GEN_TOKENS = {"niah": 128, "vt": 30, "cwe": 120}  # RULER's tokens_to_generate
RESERVE = 512  # tokens of every length left to the instruction, needles, question and answer
HEADER = 10  # tokens of a document's "### name" line, counted against the haystack

# The session's document form (Session.ingest_text): what the raw model is given too.
DOC = "### {source}\n{text}\n"

NIAH_INTRO = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards."
)
NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}."
NIAH_QUESTION = "What are all the special magic numbers for {query} mentioned in the provided text?"
NIAH_PREFIX = " The special magic numbers for {query} mentioned in the provided text are"
VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text."
VT_QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
    "assigned the value {value}, they are: "
)
CWE_INTRO = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often."
)
CWE_QUESTION = "Question: What are the 10 most common words in the above list?"
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

# RULER's keys are adjective-noun pairs ("words" keys); these are ours.
ADJECTIVES = (
    "abundant agreeable ancient bitter brave calm clever curious damp eager elegant fancy fierce "
    "fragile gentle gifted glossy grumpy hollow humble icy jolly keen lively lucky mellow misty "
    "modern narrow nimble odd plain proud quiet rapid rustic shiny silent sturdy tender tidy vivid "
    "wary witty young zealous"
).split()
NOUNS = (
    "anchor apple badger barrel beacon blanket bottle bridge candle canyon cello compass cradle "
    "crystal dolphin drum falcon feather fountain garden glacier harbor helmet island jacket kettle "
    "lantern meadow mirror needle orchard paddle parrot pebble pillow quarry ribbon saddle tractor "
    "trumpet tunnel violin walrus window"
).split()


@dataclass
class Instance:
    """One trial of one task: what the session ingests (the instruction, then pages with
    needle documents between them) and asks, and the strings the answer must hold."""

    task: str
    intro: str
    question: str
    answer_prefix: str
    refs: list[str]
    gen_tokens: int
    inserts: list[tuple[int, str]] = field(default_factory=list)  # (before page i, needle text)
    pages: list[str] | None = None  # the task's own pages (cwe); None: the length's haystack

    def documents(self, haystack: list[str]) -> list[tuple[str, str]]:
        """(source, text) in ingest order."""
        pages = self.pages if self.pages is not None else haystack
        prefix = "words" if self.pages is not None else "stdlib"
        docs = [("task.txt", self.intro)]
        k = 0
        for i in range(len(pages) + 1):
            for at, text in self.inserts:
                if at == i:
                    docs.append((f"note-{k:02d}.txt", text))
                    k += 1
            if i < len(pages):
                docs.append((f"{prefix}-{i:04d}.{'txt' if self.pages is not None else 'py'}", pages[i]))
        return docs

    def wanted(self) -> list[int]:
        """The needle documents (``note-KK``) the answer needs: those holding a reference
        string (not multikey's same-shaped distractors)."""
        return [k for k, (_, text) in enumerate(self.inserts) if any(r in text for r in self.refs)]

    def oracle_documents(self) -> list[tuple[str, str]]:
        """The instruction and the needles alone."""
        return [("task.txt", self.intro)] + [(f"note-{k:02d}.txt", t) for k, (_, t) in enumerate(self.inserts)]


def flat(docs: list[tuple[str, str]]) -> str:
    return "".join(DOC.format(source=s, text=t.rstrip()) for s, t in docs)


def _key(rng: random.Random, taken: set[str]) -> str:
    while True:
        k = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if k not in taken:
            taken.add(k)
            return k


def _value(rng: random.Random, taken: set[str]) -> str:
    while True:
        v = str(rng.randint(1_000_000, 9_999_999))  # RULER's 7-digit numbers
        if v not in taken:
            taken.add(v)
            return v


def _slots(rng: random.Random, n: int, n_pages: int) -> list[int]:
    """``n`` sorted insertion points (before page i, 0..n_pages), uniform in depth."""
    return sorted(rng.randint(0, n_pages) for _ in range(n))


def make_niah(task: str, rng: random.Random, n_pages: int) -> Instance:
    keys: set[str] = set()
    values: set[str] = set()
    if task == "niah_single":
        pairs = [(_key(rng, keys), _value(rng, values))]
        asked = [pairs[0][0]]
    elif task == "niah_multikey":
        pairs = [(_key(rng, keys), _value(rng, values)) for _ in range(NEEDLES)]
        asked = [pairs[0][0]]  # the others are distractors of the same shape
    elif task == "niah_multivalue":
        k = _key(rng, keys)
        pairs = [(k, _value(rng, values)) for _ in range(NEEDLES)]
        asked = [k]
    elif task == "niah_multiquery":
        pairs = [(_key(rng, keys), _value(rng, values)) for _ in range(NEEDLES)]
        asked = [k for k, _ in pairs]
    else:
        raise ValueError(task)
    refs = [v for k, v in pairs if k in asked]
    needles = [NIAH_NEEDLE.format(key=k, value=v) for k, v in pairs]
    rng.shuffle(needles)
    query = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + ", and " + asked[-1]
    return Instance(
        task,
        NIAH_INTRO,
        NIAH_QUESTION.format(query=query),
        NIAH_PREFIX.format(query=query),
        refs,
        GEN_TOKENS["niah"],
        list(zip(_slots(rng, len(needles), n_pages), needles)),
    )


def make_vt(rng: random.Random, n_pages: int) -> Instance:
    names: list[str] = []
    while len(names) < VT_HOPS + 1:
        v = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if v not in names:
            names.append(v)
    value = str(rng.randint(10_000, 99_999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, len(names))]
    return Instance(
        "vt",
        VT_INTRO,
        VT_QUESTION.format(value=value),
        VT_PREFIX.format(n=len(names), value=value),
        names,
        GEN_TOKENS["vt"],
        list(zip(_slots(rng, len(chain), n_pages), chain)),  # in chain order
    )


def make_cwe(rng: random.Random, words: list[str], n_entries: int, per_page: int) -> Instance:
    """A numbered list of ``n_entries`` words: ten of them 30 times each, the rest rarer."""
    pool = rng.sample(words, len(words))
    common, rare = pool[:CWE_COMMON], pool[CWE_COMMON:]
    freq = min(CWE_FREQ, max(4, n_entries // (2 * CWE_COMMON)))  # fewer for lists under 600 words
    left = max(0, n_entries - CWE_COMMON * freq)
    rare_freq = max(CWE_RARE_FREQ, -(-left // max(1, len(rare))))
    if rare_freq >= freq:
        raise ValueError(f"cwe: {n_entries} entries need more than {len(words)} distinct words")
    n_rare = min(len(rare), left // rare_freq)
    entries = common * freq + rare[:n_rare] * rare_freq
    rng.shuffle(entries)
    numbered = [f"{i + 1}. {w}" for i, w in enumerate(entries)]
    pages = [" ".join(numbered[i : i + per_page]) for i in range(0, len(numbered), per_page)]
    return Instance("cwe", CWE_INTRO, CWE_QUESTION, CWE_PREFIX, common, GEN_TOKENS["cwe"], pages=pages)


def score(answer: str, refs: list[str]) -> float:
    """RULER's string_match_all: the fraction of ``refs`` in the answer (whole words, any case)."""
    found = sum(bool(re.search(rf"(?<![\w-]){re.escape(r)}(?![\w-])", answer, re.IGNORECASE)) for r in refs)
    return found / len(refs)


class Haystack:
    """Stdlib source cut into pages of about ``page`` tokens at fixed line boundaries: a
    length takes the first pages (the last one cut short), so every length shares them."""

    def __init__(self, vocab, max_tokens: int, page: int) -> None:
        self.pages: list[list[tuple[str, int]]] = [[]]
        size = total = 0
        for line in stdlib_text(max_tokens * 5).splitlines(keepends=True):
            n = len(vocab.tokenize(line)) if line.strip() else 1
            self.pages[-1].append((line, n))
            size += n
            total += n
            if size >= page:
                if total >= max_tokens:
                    break
                self.pages.append([])
                size = 0
        self.pages = [p for p in self.pages if p]
        # a whole page's tokens as the session counts them (lines merge at their ends)
        self.sizes = [
            len(vocab.tokenize(DOC.format(source="stdlib-0000.py", text="".join(s for s, _ in p).rstrip())))
            for p in self.pages
        ]

    def take(self, tokens: int) -> list[str]:
        """Pages holding about ``tokens`` tokens, document headers counted."""
        out: list[str] = []
        left = tokens
        for p, n in zip(self.pages, self.sizes):
            if n <= left:
                out.append("".join(s for s, _ in p))
                left -= n
                continue
            left -= HEADER
            cut = []
            for s, k in p:
                if k > left:
                    break
                cut.append(s)
                left -= k
            if cut:
                out.append("".join(cut))
            break
        return out


def parse_lengths(text: str, native: int) -> list[tuple[str, int]]:
    """``1x,4x,16x`` (multiples of the native context), ``8192`` or ``32k`` -> (label, tokens)."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if p.endswith("x"):
            out.append((p, int(float(p[:-1]) * native)))
        elif p.endswith("k"):
            out.append((p, int(float(p[:-1]) * 1024)))
        elif p:
            out.append((p, int(p)))
    return out


class Builder:
    """Instances for a task at a length, deterministic in (seed, task, tokens, trial)."""

    def __init__(self, vocab, max_tokens: int, page: int, seed: int) -> None:
        self.vocab, self.page, self.seed = vocab, page, seed
        self.haystack = Haystack(vocab, max_tokens, page)
        self.words = stdlib_words()
        sample = " ".join(f"{i}. {w}" for i, w in zip(range(900, 1100), self.words))
        self.entry_tokens = len(vocab.tokenize(sample)) / 200

    def pages(self, tokens: int) -> list[str]:
        return self.haystack.take(tokens - RESERVE)

    def instance(self, task: str, tokens: int, trial: int) -> Instance:
        rng = random.Random(f"ruler:{self.seed}:{task}:{tokens}:{trial}")
        if task == "cwe":
            room = tokens - RESERVE
            per_page = max(1, int(self.page / self.entry_tokens))
            n = int(room / (self.entry_tokens * 1.05 + HEADER / per_page))
            inst = make_cwe(rng, self.words, n, per_page)
            while inst.pages and len(self.vocab.tokenize(flat(inst.documents([])))) > tokens - RESERVE // 2:
                n = int(n * 0.97)  # the estimate was short (longer numbers late in the list)
                inst = make_cwe(random.Random(f"ruler:{self.seed}:{task}:{tokens}:{trial}"), self.words, n, per_page)
            return inst
        n_pages = len(self.pages(tokens))
        return make_vt(rng, n_pages) if task == "vt" else make_niah(task, rng, n_pages)


def prompt_of(inst: Instance, docs: list[tuple[str, str]], raw: bool) -> str:
    """The raw model's prompt: the documents as the session holds them, then the question
    (and RULER's answer prefix in completion form)."""
    return flat(docs) + "\n" + inst.question + (inst.answer_prefix if raw else "")


def run(args: argparse.Namespace) -> int:
    from localsym.session import RunOptions, Tokenizer, default_model, describe_model, models

    name = args.model or default_model()
    path = str(models.resolve(name))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"unknown task(s) {', '.join(bad)} (known: {', '.join(TASKS)})")
    raw = not describe_model(path, RunOptions(vram=args.vram))["chat_template"]  # a base model: completion form
    t_build = time.perf_counter()
    with Tokenizer(path) as vocab:  # open for the whole run: cwe instances tokenize during the trials
        return _measure(args, name, path, tasks, raw, vocab, t_build)


def _measure(
    args: argparse.Namespace, name: str, path: str, tasks: list[str], raw: bool, vocab: Tokenizer, t_build: float
) -> int:
    from localsym.session import GenParams, OneShot, RunOptions, Session, SessionConfig

    native = vocab.n_ctx_train
    lengths = parse_lengths(args.lengths, native)
    builder = Builder(vocab, int(1.25 * max(max(t for _, t in lengths), native)), args.page, args.seed)
    count = vocab.tokenize
    n_base = args.trials if args.baseline_trials is None else args.baseline_trials
    base_insts = {t: [builder.instance(t, native, i) for i in range(n_base)] for t in tasks}
    base_prompts = {t: [prompt_of(x, x.documents(builder.pages(native)), raw) for x in base_insts[t]] for t in tasks}
    base_tokens = max((len(count(p)) for ps in base_prompts.values() for p in ps), default=0)
    build_s = time.perf_counter() - t_build
    print(f"  built instances in {build_s:.1f} s (raw model prompts up to {base_tokens} tokens)", file=sys.stderr)

    trials: list[dict[str, Any]] = []
    seconds_per_length: dict[str, float] = {}
    t_start = time.perf_counter()
    with private_home("localsym-bench-ruler-"):  # the first trial of a length pays for its pages
        opts = RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads)
        for label, tokens in lengths:
            t_len = time.perf_counter()
            haystack = builder.pages(tokens)
            for task in tasks:
                for i in range(args.trials):
                    inst = builder.instance(task, tokens, i)
                    docs = inst.documents(haystack)
                    t0 = time.perf_counter()
                    cfg = SessionConfig(block_tokens=args.block, warm_mb=args.warm_mb, system="")
                    with Session.open(f"ruler-{task}-{tokens}-{i}", path, opts, cfg) as s:
                        rep = None
                        for source, text in docs:
                            rep = s.ingest_text(text, source, "file", report=rep)
                        assert rep is not None  # the instruction is always a document
                        t_ask = time.perf_counter()
                        q = inst.question + (inst.answer_prefix if raw else "")
                        with s.ask(q, GenParams(max_tokens=inst.gen_tokens), raw=raw) as turn:
                            answer = turn.text()
                        st = turn.stats
                        total = s.total_tokens
                    sc = score(answer, inst.refs)
                    # which needle documents the working set held (TurnStats.sources, where the
                    # session reports them): a miss without them is retrieval's
                    paths = {x.get("path") for x in getattr(st, "sources", None) or []}
                    wanted = inst.wanted()  # multikey's distractors are left out on purpose
                    held = sum(f"note-{k:02d}.txt" in paths for k in wanted)
                    trials.append(
                        {
                            "task": task,
                            "length": label,
                            "tokens": total,
                            "trial": i,
                            "refs": inst.refs,
                            "answer": answer.strip(),
                            "score": round(sc, 4),
                            "needles": len(wanted),
                            "distractors": len(inst.inserts) - len(wanted),
                            "needles_in_working_set": held if paths else None,
                            "computed_blocks": rep.computed_blocks,
                            "reused_blocks": rep.reused_blocks,
                            "restored_blocks": st.restored_blocks,
                            "reinjected_blocks": st.reinjected_blocks,
                            "blocks_in_working_set": st.blocks_in_working_set,
                            "select_ms": round(st.select_ms, 2),
                            # the working set chosen again while answering (blocks brought in)
                            "refreshes": len(getattr(st, "refreshes", None) or []),
                            "refreshed_blocks": sum(len(r["blocks"]) for r in getattr(st, "refreshes", None) or []),
                            "ingest_s": round(t_ask - t0, 2),
                            "ask_s": round(time.perf_counter() - t_ask, 2),
                        }
                    )
                    print(
                        f"  {task} {label} trial {i}: {sc:.2f} {answer.strip()[:90]!r} "
                        f"({trials[-1]['ingest_s']}+{trials[-1]['ask_s']} s, "
                        f"{rep.computed_blocks} blocks computed, {rep.reused_blocks} reused, "
                        f"needles held {held}/{len(wanted)}, {trials[-1]['refreshes']} refreshes)",
                        file=sys.stderr,
                    )
            seconds_per_length[label] = round(time.perf_counter() - t_len, 1)
    ours_s = time.perf_counter() - t_start

    # the raw model at its native context, and the oracle (instruction + needles only)
    t_base = time.perf_counter()
    base: list[dict[str, Any]] = []
    oracle: dict[tuple[str, int, int], float] = {}
    bopts = RunOptions(n_ctx=native, vram=args.vram, n_threads=args.threads)
    oopts = RunOptions(n_ctx=2048, vram=args.vram, n_threads=args.threads)
    for task in tasks:
        for i, (inst, prompt) in enumerate(zip(base_insts[task], base_prompts[task])):
            t0 = time.perf_counter()
            with OneShot(path, prompt, bopts, GenParams(max_tokens=inst.gen_tokens), raw=raw) as one:
                answer = "".join(one)
            base.append(
                {
                    "task": task,
                    "trial": i,
                    "tokens": one.stats.prompt_tokens,
                    "refs": inst.refs,
                    "answer": answer.strip(),
                    "score": round(score(answer, inst.refs), 4),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(f"  raw {task} trial {i}: {base[-1]['score']:.2f} {answer.strip()[:90]!r}", file=sys.stderr)
    base_s = time.perf_counter() - t_base
    t_oracle = time.perf_counter()
    for _, tokens in lengths:
        for task in tasks:
            if task == "cwe":
                continue  # the whole list is the needle
            for i in range(args.trials):
                inst = builder.instance(task, tokens, i)
                prompt = prompt_of(inst, inst.oracle_documents(), raw)
                with OneShot(path, prompt, oopts, GenParams(max_tokens=inst.gen_tokens), raw=raw) as one:
                    oracle[(task, tokens, i)] = score("".join(one), inst.refs)
    oracle_s = time.perf_counter() - t_oracle
    for t in trials:
        tokens = dict(lengths)[t["length"]]
        o = oracle.get((t["task"], tokens, t["trial"]))
        t["oracle_score"] = None if o is None else round(o, 4)
        t["miss"] = _miss(t["score"], o, t["needles"], t["needles_in_working_set"])

    per_task: dict[str, dict[str, dict[str, Any]]] = {}
    for task in tasks:
        b = [x["score"] for x in base if x["task"] == task]
        per_task[task] = {}
        for label, _ in lengths:
            cell = [x for x in trials if x["task"] == task and x["length"] == label]
            os_ = [x["oracle_score"] for x in cell if x["oracle_score"] is not None]
            per_task[task][label] = {
                "accuracy": _mean([x["score"] for x in cell]),
                "baseline_accuracy": _mean(b) if b else None,
                "trials": len(cell),
                "all_correct": _mean([float(x["score"] == 1.0) for x in cell]),
                "oracle_accuracy": _mean(os_) if os_ else None,
                "misses": {k: sum(x["miss"] == k for x in cell) for k in ("retrieval", "model", "context")},
                "seconds": round(sum(x["ingest_s"] + x["ask_s"] for x in cell), 1),
            }
    result: dict[str, Any] = {
        "model": name,
        "native_context": native,
        "form": "completion" if raw else "chat",
        "tasks": tasks,
        "lengths": {label: tokens for label, tokens in lengths},
        "trials": args.trials,
        "seed": args.seed,
        "hot": args.hot,
        "block": args.block,
        "page": args.page,
        "scoring": "RULER string_match_all: fraction of expected strings in the answer (whole words, any case)",
        "per_task": per_task,
        "baseline_tokens": max((x["tokens"] for x in base), default=None),
        "seconds": round(ours_s, 1),
        "seconds_per_length": seconds_per_length,
        "baseline_seconds": round(base_s, 1),
        "oracle_seconds": round(oracle_s, 1),
        "build_seconds": round(build_s, 1),
        "per_trial": trials,
        "baseline_trials": base,
    }
    labels = [label for label, _ in lengths]
    grid: list[list[float | None]] = [
        [per_task[t][labels[0]]["baseline_accuracy"]] + [per_task[t][label]["accuracy"] for label in labels]
        for t in tasks
    ]
    if args.heatmap:
        write_png(Path(args.heatmap), grid)
        result["heatmap"] = str(args.heatmap)
    emit(result, args, table)
    return 0


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def _miss(score: float, oracle: float | None, needles: int, held: int | None) -> str | None:
    """Why a trial lost points: ``retrieval`` (the working set lacked a needle document),
    ``model`` (the oracle, needles only, does no better: the model's own limit), or
    ``context`` (the needles were there, or are not reported, and the model answers from
    them alone but not in the session: the long context's interference or an unseen miss)."""
    if score >= 1.0:
        return None
    if held is not None and held < needles:
        return "retrieval"
    if oracle is None or oracle <= score:
        return "model"
    return "context"


def table(r: dict) -> str:
    labels = list(r["lengths"])
    head = (
        f"{'task':<17}{'raw@1x':>8}"
        + "".join(f"{label:>8}" for label in labels)
        + "  oracle  misses (retrieval/model/context)"
    )
    rows = []
    for task, cells in r["per_task"].items():
        first = cells[labels[0]]
        misses = [cells[label]["misses"] for label in labels]
        orc = [cells[label]["oracle_accuracy"] for label in labels]
        rows.append(
            f"{task:<17}{_f(first['baseline_accuracy']):>8}"
            + "".join(f"{cells[label]['accuracy']:>8.2f}" for label in labels)
            + f"  {'/'.join('-' if o is None else f'{o:.2f}' for o in orc):>6}  "
            + " ".join(f"{m['retrieval']}/{m['model']}/{m['context']}" for m in misses)
        )
    secs = ", ".join(f"{label} {s} s" for label, s in r["seconds_per_length"].items())
    return "\n".join(
        [
            f"bench ruler: {r['model']} (native {r['native_context']}, {r['form']} form), {r['trials']} trials a cell, "
            f"tokens {r['lengths']}",
            head,
            *rows,
            f"  localsym {r['seconds']} s ({secs}); raw model {r['baseline_seconds']} s at {r['baseline_tokens']} "
            f"tokens; oracle {r['oracle_seconds']} s" + (f"; heatmap {r['heatmap']}" if r.get("heatmap") else ""),
        ]
    )
