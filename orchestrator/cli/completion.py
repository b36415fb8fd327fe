"""Shell completion scripts, written from the command line's own parser.

Static scripts rather than argcomplete: completing runs no Python (no delay on
TAB, no dependency), and the script is made from the same ``argparse`` parser
that reads the command line, so it cannot name an option that does not exist.
zsh runs the bash function through its ``bashcompinit`` layer.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from typing import Final

from orchestrator.plan.model import CAMPAIGN_TYPES, RESULT_FILTERS

SHELLS: Final = ("bash", "zsh")

#: Options whose value is a file or a folder (the rest take values nobody can guess).
_FILES: Final = frozenset({"report", "metrics_file", "token_file"})
_FOLDERS: Final = frozenset({"state_dir"})
#: Options checked by the plan's rules rather than by argparse, with the words they take.
_WORDS: Final = {"type_campaign": CAMPAIGN_TYPES, "result": RESULT_FILTERS}

_BASH: Final = """\
# bash completion for orchestrator: source <(orchestrator completion bash)
_orchestrator() {{
    local cur prev cmd i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    COMPREPLY=()
    case "$cmd" in
{commands}
        *) COMPREPLY=($(compgen -W {top} -- "$cur")) ;;
    esac
}}
complete -o filenames -o bashdefault -F _orchestrator orchestrator
"""

_ZSH: Final = """\
# zsh completion for orchestrator: source <(orchestrator completion zsh), after compinit
autoload -U +X bashcompinit && bashcompinit
"""


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser``'s command for ``shell`` (bash or zsh)."""
    commands = _subcommands(parser)
    top = [*commands, *_options(parser)]
    bash = _BASH.format(
        commands="\n".join(_command_case(name, sub) for name, sub in commands.items()),
        top=shlex.quote(" ".join(top)),
    )
    return bash if shell == "bash" else _ZSH + bash


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public way to walk a parser
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings]


def _command_case(name: str, parser: argparse.ArgumentParser) -> str:
    """The bash ``case`` branch completing the words after ``orchestrator NAME``."""
    lines = [f"        {name})", '            case "$prev" in']
    for action in parser._actions:
        if action.option_strings and _takes_value(action):
            words = " | ".join(action.option_strings)
            lines.append(f"                {words}) {_value_completion(action)}; return ;;")
    lines.append("            esac")
    options = shlex.quote(" ".join(_options(parser)))
    lines.append('            if [[ "$cur" == -* ]]; then')
    lines.append(f'                COMPREPLY=($(compgen -W {options} -- "$cur"))')
    lines.append("            else")
    lines.append(f"                {_positional_completion(parser)}")
    lines.append("            fi")
    lines.append("            ;;")
    return "\n".join(lines)


def _takes_value(action: argparse.Action) -> bool:
    # nargs "?" (--resume) may stand alone: what follows is completed as usual.
    return action.nargs not in (0, "?")


def _value_completion(action: argparse.Action) -> str:
    choices = action.choices or _WORDS.get(action.dest)
    if choices:
        words = shlex.quote(" ".join(str(choice) for choice in choices))
        return f'COMPREPLY=($(compgen -W {words} -- "$cur"))'
    if action.dest == "token_env":
        return 'COMPREPLY=($(compgen -e -- "$cur"))'
    if action.dest in _FILES:
        return 'COMPREPLY=($(compgen -f -- "$cur"))'
    if action.dest in _FOLDERS:
        return 'COMPREPLY=($(compgen -d -- "$cur"))'
    return ":"


def _positional_completion(parser: argparse.ArgumentParser) -> str:
    for action in _positionals(parser):
        if action.choices:
            return _value_completion(action)
        if action.dest == "plan":
            return 'COMPREPLY=($(compgen -f -- "$cur"))'
    return ":"


def _positionals(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    return (action for action in parser._actions if not action.option_strings)
