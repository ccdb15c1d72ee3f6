"""Prefill and decode speed: localsym's runtime against llama-cpp-python's own `Llama`,
same model, same prompt, same threads and settings, alternating in one run."""

from __future__ import annotations

import argparse
import statistics
import time

from localsym.bench import emit
from localsym.bench.corpus import stdlib_text


def _ours(path, opts, prompt: list[int], gen: int) -> tuple[float, float, str]:
    from localsym.runtime.engine import Engine, GenParams, GenStats

    with Engine(path, opts) as eng:
        eng.ctx.decode(prompt[:8], 0)  # warm-up: first graph build and page-in
        eng.ctx.clear()
        stats = GenStats()
        text = "".join(eng.generate(prompt, 0, GenParams(max_tokens=gen), stats=stats))
        return stats.prefill_tok_s, stats.decode_tok_s, text


def _llama(path, plan, threads: int, prompt: list[int], gen: int) -> tuple[float, float, str]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=plan.n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=plan.n_gpu_layers,
        flash_attn=plan.flash_attn,
        verbose=False,
    )
    try:
        llm.eval(prompt[:8])  # the same warm-up
        llm.reset()
        # Prefill and decode through Llama's own generation loop (its sampler, greedy).
        toks: list[int] = []
        t0 = time.perf_counter()
        t1 = prefill = 0.0
        for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            if not toks and not t1:
                t1 = time.perf_counter()  # the first token came from the prefill's logits
                prefill = len(prompt) / (t1 - t0)
            if tok == llm.token_eos():
                break
            toks.append(tok)
            if len(toks) >= gen:
                break
        decode = (len(toks) - 1) / (time.perf_counter() - t1) if len(toks) > 1 else 0.0
        text = llm.detokenize(toks).decode("utf-8", errors="replace")
        return prefill, decode, text
    finally:
        llm.close()


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model
    from localsym.flags import run_options
    from localsym.runtime.bridge import Model, default_threads
    from localsym.runtime.engine import make_plan
    from localsym.runtime.model_info import model_info

    name = args.model or default_model()
    path = model_store.resolve(name)
    opts = run_options(args)
    opts.n_threads = opts.n_threads or default_threads()
    if opts.n_ctx is None:
        opts.n_ctx = 2048
    plan = make_plan(model_info(path), opts)
    vocab = Model(path, vocab_only=True)
    text = stdlib_text(args.prompt_tokens * 8)
    prompt = vocab.tokenize(text, add_special=True)[: args.prompt_tokens]
    vocab.close()
    ours, theirs = [], []
    for _ in range(args.reps):  # alternate, so drift in machine speed hits both alike
        ours.append(_ours(path, opts, prompt, args.gen_tokens))
        theirs.append(_llama(path, plan, opts.n_threads, prompt, args.gen_tokens))
    med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
    result = {
        "model": name,
        "prompt_tokens": len(prompt),
        "gen_tokens": args.gen_tokens,
        "threads": opts.n_threads,
        "n_ctx": plan.n_ctx,
        "n_gpu_layers": plan.n_gpu_layers,
        "flash_attn": plan.flash_attn,
        "reps": args.reps,
        "localsym": {"prefill_tok_s": round(med(ours, 0), 2), "decode_tok_s": round(med(ours, 1), 2)},
        "llama_cpp_python": {"prefill_tok_s": round(med(theirs, 0), 2), "decode_tok_s": round(med(theirs, 1), 2)},
        "same_text": ours[0][2] == theirs[0][2],
    }
    ours_r, theirs_r = result["localsym"], result["llama_cpp_python"]
    result["prefill_ratio"] = round(ours_r["prefill_tok_s"] / max(theirs_r["prefill_tok_s"], 1e-9), 3)
    result["decode_ratio"] = round(ours_r["decode_tok_s"] / max(theirs_r["decode_tok_s"], 1e-9), 3)

    def table(r: dict) -> str:
        return "\n".join(
            [
                f"bench speed: {r['model']}, {r['prompt_tokens']} prompt + {r['gen_tokens']} generated tokens, "
                f"{r['threads']} threads, median of {r['reps']}",
                f"{'':<20}{'prefill tok/s':>14}{'decode tok/s':>14}",
                f"{'localsym':<20}{r['localsym']['prefill_tok_s']:>14.1f}{r['localsym']['decode_tok_s']:>14.1f}",
                f"{'llama-cpp-python':<20}{r['llama_cpp_python']['prefill_tok_s']:>14.1f}{r['llama_cpp_python']['decode_tok_s']:>14.1f}",
                f"{'ratio':<20}{r['prefill_ratio']:>14.3f}{r['decode_ratio']:>14.3f}",
                f"same greedy text: {r['same_text']}",
            ]
        )

    emit(result, args, table)
    return 0
