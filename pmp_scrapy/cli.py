"""``pmp-scrapy``: the project's commands from any directory, no ``scrapy.cfg`` needed.

``pmp-scrapy crawl|status|report …`` are the project's Scrapy commands with the same arguments
(``scrapy.cmdline.execute`` with ``SCRAPY_SETTINGS_MODULE=pmp_scrapy.settings`` unless it is
set already); every other Scrapy command (``settings``, ``list``, ``version`` …) works too.
``pmp-scrapy simulator`` runs the PMP simulator (``python -m pmp_scrapy.simulator``) and
``pmp-scrapy credentials init`` writes a credentials file (see :mod:`pmp_scrapy.credentials`).
The exit code is the command's (crawl: 0 done, 1 fatal, 2 partial).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

from pmp_scrapy import __version__
from pmp_scrapy.credentials import (
    DEFAULT_FILE,
    FILE_SETTING,
    SECRET_NAMES,
    credentials_file_path,
    values_from_environment,
    values_from_prompt,
    write_credentials_file,
)
from pmp_scrapy.errors import PMPError

PROG = "pmp-scrapy"
HELP_COLUMNS = 80
SETTINGS_MODULE = "pmp_scrapy.settings"
OWN_COMMANDS = {
    "simulator": "Run the fake PMP + Zoho accounts server (--port, --scenario ...)",
    "credentials": "init [FILE] [--from-env] [--force]: write a 0600 credentials file",
}


def fail(message: str) -> None:
    """Print the project's one-line error to stderr (the crawl command's format)."""
    print(f"pmp_scrapy: error: {message}", file=sys.stderr, flush=True)


def project_commands() -> dict[str, str]:
    """``{name: short description}`` of the Scrapy commands in ``pmp_scrapy.commands``; a module
    that cannot be imported is listed with the reason instead of breaking the help."""
    from scrapy.commands import ScrapyCommand

    import pmp_scrapy.commands

    found: dict[str, str] = {}
    for module_info in sorted(pkgutil.iter_modules(pmp_scrapy.commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"pmp_scrapy.commands.{module_info.name}")
        except Exception as exc:  # noqa: BLE001 - the help must still list the rest
            found[module_info.name] = f"(cannot load: {type(exc).__name__})"
            continue
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, ScrapyCommand) and obj.__module__ == module.__name__:
                found[module_info.name] = obj().short_desc()
                break
    return found


def scrapy_command_names() -> set[str]:
    """Names of Scrapy's own commands and of those other packages register (``scrapy.commands``
    entry points), which ``pmp-scrapy`` passes to Scrapy unchanged."""
    import scrapy.commands

    names = {m.name for m in pkgutil.iter_modules(scrapy.commands.__path__) if not m.name.startswith("_")}
    return names | {ep.name for ep in entry_points(group="scrapy.commands")}


def usage() -> str:
    """The ``pmp-scrapy --help`` text: every subcommand with its one-line description."""
    commands = {**project_commands(), **OWN_COMMANDS}
    width = max(len(name) for name in commands) + 4
    listing = "\n".join(
        textwrap.fill(desc, HELP_COLUMNS, initial_indent=f"  {name:<{width - 2}}", subsequent_indent=" " * width)
        for name, desc in sorted(commands.items()))
    return (f"usage: {PROG} <command> [options] [args]\n\n"
            f"pmp_scrapy {__version__}: Patch Manager Plus patch inventory into SQL.\n"
            f"Runs from any directory with the settings of {SETTINGS_MODULE}\n"
            f"(SCRAPY_SETTINGS_MODULE overrides).\n\n"
            f"commands:\n{listing}\n\n"
            f"examples:\n"
            f"  {PROG} crawl dcapi_patches -a demo=1\n"
            f"  {PROG} status -s PMP_DATABASE_URL=sqlite:///pmp_demo.db\n"
            f"  {PROG} credentials init ~/.config/pmp_scrapy/credentials\n\n"
            f"Scrapy's other commands (settings, list, version ...) work too.\n"
            f'"{PROG} <command> -h" shows the options of a command.')


def run_scrapy(args: list[str]) -> int:
    """Run Scrapy command ``args[0]`` with ``args[1:]`` against the project's settings (sets
    ``SCRAPY_SETTINGS_MODULE`` in this process's environment when unset); returns its exit code."""
    os.environ.setdefault("SCRAPY_SETTINGS_MODULE", SETTINGS_MODULE)
    from scrapy.cmdline import execute

    try:
        execute([PROG, *args])
    except SystemExit as exc:
        return exit_status(exc.code)
    return 0


def exit_status(code: object) -> int:
    """The process exit status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def credentials_main(argv: list[str]) -> int:
    """``pmp-scrapy credentials init [FILE] [--from-env] [--force]``: write FILE (default
    ``$PMP_CREDENTIALS_FILE``, else ``~/.config/pmp_scrapy/credentials``) mode 0600, with the
    values typed at hidden prompts or, with ``--from-env``, taken from the environment."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} credentials",
        description="Write the credentials file PMP_CREDENTIALS_FILE points at: NAME=value lines, mode 0600, "
                    f"for servers without a desktop keyring. Names: {', '.join(SECRET_NAMES)}.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="init")
    init = actions.add_parser("init", help="create the file (refuses to overwrite without --force)")
    init.add_argument("file", nargs="?", type=Path,
                      help=f"where to write it (default: ${FILE_SETTING}, else {DEFAULT_FILE})")
    init.add_argument("--from-env", action="store_true",
                      help="copy the values from the environment instead of prompting")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    opts = parser.parse_args(argv)
    path = opts.file or credentials_file_path() or Path(DEFAULT_FILE)
    path = path.expanduser()
    if path.exists() and not opts.force:  # before asking for anything; the write re-checks (O_EXCL)
        fail(f"{path} exists; refusing to overwrite it (use --force to replace it)")
        return 1
    try:
        if opts.from_env:
            values = values_from_environment()
            if not values:
                fail(f"--from-env: none of {', '.join(SECRET_NAMES)} is set in the environment; nothing written")
                return 1
        else:
            values = prompt_for_values()
        written = write_credentials_file(path, values, force=opts.force)
    except PMPError as exc:
        fail(str(exc))
        return 1
    except (KeyboardInterrupt, EOFError):
        print(file=sys.stderr)
        fail("interrupted; nothing written")
        return 130
    print(f"wrote {written} (mode 0600): {', '.join(values)}")
    configured = credentials_file_path()
    if configured is None or configured.resolve() != written.resolve():
        print(f"point the crawl at it: export {FILE_SETTING}={written.resolve()}")
    return 0


def prompt_for_values() -> dict[str, str]:
    """Ask for each secret on the terminal without echo (``getpass``); raises
    :class:`~pmp_scrapy.errors.CredentialsError` when there is no terminal to ask on."""
    import getpass

    from pmp_scrapy.errors import CredentialsError

    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        raise CredentialsError("no terminal to prompt on; use --from-env") from None
    print("Values are not echoed; leave one empty to skip it.", file=sys.stderr)
    return values_from_prompt(getpass.getpass)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pmp-scrapy`` console script: dispatch ``argv`` (default
    ``sys.argv[1:]``) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"pmp_scrapy {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "simulator":
        from pmp_scrapy.simulator.__main__ import main as simulator_main

        return simulator_main(rest)
    if command == "credentials":
        return credentials_main(rest)
    if command not in project_commands() and command not in scrapy_command_names():
        fail(f"unknown command {command!r} (see {PROG} --help)")
        return 2
    return run_scrapy(args)


if __name__ == "__main__":
    sys.exit(main())
