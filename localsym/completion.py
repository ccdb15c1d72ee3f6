"""Shell completion scripts for bash, zsh and fish, generated from the argparse parser, so
every command and flag `--help` lists completes, and nothing else. Model names complete
from `localsym list`, session names from `localsym sessions`, `load` paths as files."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field

# (command, positional dest) -> what completes there
_DYNAMIC = {"model": "models", "path": "files"}
_SESSION_FLAGS = ("-s", "--session")
_MODEL_FLAGS = ("-m", "--model")


@dataclass
class _Opt:
    strings: list[str]
    help: str
    takes_value: bool
    choices: list[str] = field(default_factory=list)


@dataclass
class _Cmd:
    name: str
    help: str
    opts: list[_Opt]
    positionals: list[tuple[str, str]]  # (dest, nargs as text)
    choices: list[str] = field(default_factory=list)  # the first positional's, when fixed


def _opts(p: argparse.ArgumentParser) -> tuple[list[_Opt], list[tuple[str, str]], list[str]]:
    opts: list[_Opt] = []
    pos: list[tuple[str, str]] = []
    choices: list[str] = []
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            continue
        if act.option_strings:
            opts.append(
                _Opt(
                    list(act.option_strings),
                    (act.help or "").replace("%%", "%"),
                    act.nargs != 0,
                    [str(c) for c in act.choices] if act.choices else [],
                )
            )
        else:
            if not pos and act.choices:
                choices = [str(c) for c in act.choices]
            pos.append((act.dest, str(act.nargs)))
    return opts, pos, choices


def _commands(parser: argparse.ArgumentParser) -> tuple[list[_Opt], list[_Cmd]]:
    top, _, _ = _opts(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    by_parser = {id(sub.choices[n]): h for n, h in helps.items() if n in sub.choices}
    cmds = []
    for name, p in sub.choices.items():
        helps.setdefault(name, by_parser.get(id(p), ""))  # an alias (ls)
        opts, pos, choices = _opts(p)
        cmds.append(_Cmd(name, helps.get(name, ""), opts, pos, choices))
    return top, cmds


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    top, cmds = _commands(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](top, cmds)


_LIST_MODELS = "command localsym list 2>/dev/null | awk 'NR>1 && $1 != \"no\" {print $1}'"
_LIST_SESSIONS = "command localsym sessions 2>/dev/null | awk '$1 != \"no\" {print $1}'"


def _bash(top: list[_Opt], cmds: list[_Cmd]) -> str:
    names = " ".join(c.name for c in cmds)
    top_words = " ".join(s for o in top for s in o.strings)
    cases, choice_cases = [], []
    for c in cmds:
        words = " ".join(s for o in c.opts for s in o.strings)
        pos = c.positionals[0][0] if c.positionals else ""
        kind = _DYNAMIC.get(pos, "")
        fixed = f"; fixed={shlex.quote(' '.join(c.choices))}" if c.choices else ""
        cases.append(f"        {c.name}) opts={shlex.quote(words)}; pos={kind or 'none'}{fixed} ;;")
        for o in c.opts:
            if o.choices:
                pats = "|".join(f"{c.name}:{s}" for s in o.strings)
                choice_cases.append(
                    f'        {pats}) COMPREPLY=($(compgen -W "{" ".join(o.choices)}" -- "$cur")); return ;;'
                )
            elif o.takes_value and any(s in _SESSION_FLAGS for s in o.strings):
                pats = "|".join(f"{c.name}:{s}" for s in o.strings)
                choice_cases.append(
                    f'        {pats}) COMPREPLY=($(compgen -W "$({_LIST_SESSIONS})" -- "$cur")); return ;;'
                )
            elif o.takes_value and any(s in _MODEL_FLAGS for s in o.strings):
                pats = "|".join(f"{c.name}:{s}" for s in o.strings)
                choice_cases.append(
                    f'        {pats}) COMPREPLY=($(compgen -W "$({_LIST_MODELS})" -- "$cur")); return ;;'
                )
            elif o.takes_value:
                pats = "|".join(f"{c.name}:{s}" for s in o.strings)
                choice_cases.append(f"        {pats}) return ;;")
    nl = "\n"
    return f"""# bash completion for localsym (`source <(localsym completion bash)`)
_localsym() {{
    local cur prev cmd="" i opts="" pos=none fixed=""
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{names} {top_words}" -- "$cur"))
        return
    fi
    case "$cmd" in
{nl.join(cases)}
        *) return ;;
    esac
    case "$cmd:$prev" in
{nl.join(choice_cases)}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n "$fixed" && "$prev" == "$cmd" ]]; then
        COMPREPLY=($(compgen -W "$fixed" -- "$cur"))
    elif [[ "$pos" == models && "$prev" == "$cmd" ]]; then
        COMPREPLY=($(compgen -W "$({_LIST_MODELS})" -- "$cur"))
    elif [[ "$pos" == files ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o default -F _localsym localsym
"""


def _zq(text: str) -> str:
    """Text inside a zsh _arguments description: no brackets, colons or quotes."""
    text = re.sub(r"[\[\]:]", " ", text).replace("'", "").replace("`", "")
    return " ".join(text.split())[:70]


def _zsh_spec(o: _Opt) -> list[str]:
    out = []
    for s in o.strings:
        spec = f"{s}[{_zq(o.help)}]"
        if o.choices:
            spec += f":value:({' '.join(o.choices)})"
        elif o.takes_value and s in _SESSION_FLAGS:
            spec += ":session:_localsym_sessions"
        elif o.takes_value and s in _MODEL_FLAGS:
            spec += ":model:_localsym_models"
        elif o.takes_value:
            spec += ":value: "
        out.append(f"'*{spec}'" if "-v" in o.strings else f"'{spec}'")
    return out


def _zsh(top: list[_Opt], cmds: list[_Cmd]) -> str:
    described = "\n".join(f"    '{c.name}:{_zq(c.help)}'" for c in cmds)
    top_specs = " \\\n    ".join(s for o in top if "--help" not in o.strings for s in _zsh_spec(o))
    cases = []
    for c in cmds:
        specs = [s for o in c.opts if "--help" not in o.strings for s in _zsh_spec(o)]
        for i, (dest, nargs) in enumerate(c.positionals, 1):
            action = {"models": "_localsym_models", "files": "_files"}.get(_DYNAMIC.get(dest, ""), " ")
            if i == 1 and c.choices:
                action = f"({' '.join(c.choices)})"
            specs.append(f"'{'*' if nargs in ('+', '*') else i}:{dest}:{action}'")
        body = " \\\n        ".join(specs)
        cases.append(f"    {c.name})\n      _arguments \\\n        {body}\n      ;;")
    nl = "\n"
    return f"""#compdef localsym
# zsh completion for localsym (`localsym completion zsh > "${{fpath[1]}}/_localsym"`)
_localsym_models() {{
  local -a models
  models=(${{(f)"$({_LIST_MODELS})"}})
  _describe -t models 'model' models
}}
_localsym_sessions() {{
  local -a sessions
  sessions=(${{(f)"$({_LIST_SESSIONS})"}})
  _describe -t sessions 'session' sessions
}}
_localsym() {{
  local curcontext="$curcontext" state line
  local -a commands
  commands=(
{described}
  )
  _arguments -C \\
    {top_specs} \\
    '1: :->command' \\
    '*:: :->args'
  case $state in
    command) _describe -t commands 'localsym command' commands ;;
    args)
      case $line[1] in
{nl.join(cases)}
      esac
      ;;
  esac
}}
if [[ "$funcstack[1]" == "_localsym" ]]; then
  _localsym "$@"
else
  compdef _localsym localsym
fi
"""


def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_flag(s: str) -> str:
    if s.startswith("--"):
        return f"-l {s[2:]}"
    return f"-s {s[1:]}" if len(s) == 2 else f"-o {s[1:]}"


def _fish(top: list[_Opt], cmds: list[_Cmd]) -> str:
    lines = [
        "# fish completion for localsym (`localsym completion fish > ~/.config/fish/completions/localsym.fish`)",
        "complete -c localsym -f",
        f"function __localsym_models; {_LIST_MODELS}; end",
        f"function __localsym_sessions; {_LIST_SESSIONS}; end",
    ]
    for o in top:
        flags = " ".join(_fish_flag(s) for s in o.strings)
        lines.append(f"complete -c localsym -n __fish_use_subcommand {flags} -d {_fq(o.help)}")
    for c in cmds:
        lines.append(f"complete -c localsym -n __fish_use_subcommand -a {c.name} -d {_fq(c.help)}")
    for c in cmds:
        cond = f"'__fish_seen_subcommand_from {c.name}'"
        for o in c.opts:
            flags = " ".join(_fish_flag(s) for s in o.strings)
            extra = ""
            if o.choices:
                extra = f" -x -a {_fq(' '.join(o.choices))}"
            elif o.takes_value and any(s in _SESSION_FLAGS for s in o.strings):
                extra = " -x -a '(__localsym_sessions)'"
            elif o.takes_value and any(s in _MODEL_FLAGS for s in o.strings):
                extra = " -x -a '(__localsym_models)'"
            elif o.takes_value:
                extra = " -r"
            lines.append(f"complete -c localsym -n {cond} {flags}{extra} -d {_fq(o.help)}")
        kind = _DYNAMIC.get(c.positionals[0][0], "") if c.positionals else ""
        if kind == "models":
            lines.append(f"complete -c localsym -n {cond} -a '(__localsym_models)'")
        elif kind == "files":
            lines.append(f"complete -c localsym -n {cond} -F")
        elif c.choices:
            lines.append(f"complete -c localsym -n {cond} -a {_fq(' '.join(c.choices))}")
    return "\n".join(lines) + "\n"
