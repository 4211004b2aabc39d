"""``rankhouse COMMAND ARGS...``: the console script. ``rankhouse tune SPACE.yaml`` is
``python -m platform.tune SPACE.yaml``, with the same arguments, for every command."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

COMMANDS = {
    "tune": "search LoRA ranks and hyperparameters over a search space",
    "promote": "register a search's best adapter, gated on a holdout",
    "separate": "separate audio files with an adapter",
    "analyze": "the structure of audio files (sections, beats, energy) with a structure adapter",
    "generate": "music from a prompt with an ACE-Step adapter",
    "export": "merge an adapter into its base (a rankhouse or an MSST checkpoint)",
    "data": "render, check and pre-decode stem datasets; convert ACE-Step songs; check a study's data",
    "base": "train a family's embedded base model",
}


def usage() -> str:
    lines = ["usage: rankhouse COMMAND [ARGS...]   (the same as python -m platform.COMMAND [ARGS...])", "",
             "commands:"]
    lines += [f"  {name:<10} {doc}" for name, doc in COMMANDS.items()]
    lines += ["", "rankhouse COMMAND --help describes a command's arguments."]
    return "\n".join(lines)


def control_plane() -> None:
    """Make ``import platform`` mean rankhouse's control plane. Run as ``python -m``, the
    working directory comes first on ``sys.path``; a console script's path starts at the
    environment's ``bin``, so the name would find the standard library's ``platform``. Ours is
    loaded from its folder instead; it re-exports the standard library's names, so libraries
    that ask ``platform`` for the machine still get their answers."""
    current = sys.modules.get("platform")
    folder = Path(__file__).resolve().parent.parent / "platform"
    if current is not None and getattr(current, "__path__", None) and Path(current.__path__[0]).resolve() == folder:
        return
    spec = importlib.util.spec_from_file_location("platform", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["platform"] = module
    spec.loader.exec_module(module)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rankhouse: error: {command!r} is not a command; use one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    control_plane()
    from platform.cli import run

    run(importlib.import_module(f"platform.{command}").main, rest)
