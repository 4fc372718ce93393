"""The credentials file (``PMP_CREDENTIALS_FILE``): where it is, reading and checking it, and
writing it for ``pmp-scrapy credentials init``. ``NAME=value`` lines, ``#`` comments and blank
lines; refused unless it is a regular file owned by the current user with no group/other
permission bits. A value is never logged nor put in a message: only names, paths and line numbers."""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pmp_scrapy.errors import CredentialsError

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

OAUTH_NAMES = ("PMP_CLIENT_ID", "PMP_CLIENT_SECRET", "PMP_REFRESH_TOKEN")
#: Every secret a credentials file may hold, in the order ``credentials init`` asks for them.
SECRET_NAMES = (*OAUTH_NAMES, "PMP_API_KEY", "SLACK_WEBHOOK_URL")
FILE_SETTING = "PMP_CREDENTIALS_FILE"
DEFAULT_FILE = "~/.config/pmp_scrapy/credentials"
MAX_FILE_BYTES = 64 * 1024
_NAME_SHAPE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


# --- the credentials file -------------------------------------------------------------------------

def credentials_file_path(settings: BaseSettings | None = None,
                          environ: Mapping[str, str] | None = None) -> Path | None:
    """The file ``PMP_CREDENTIALS_FILE`` names (the Scrapy setting, else the environment variable;
    ``~`` expanded), or ``None`` when it is unset or empty."""
    value = settings.get(FILE_SETTING) if settings is not None else None
    if not value:
        value = (os.environ if environ is None else environ).get(FILE_SETTING)
    return Path(str(value)).expanduser() if value else None


def _refuse(path: Path, why: str) -> CredentialsError:
    return CredentialsError(f"credentials file {path}: {why}")


def read_credentials_file(path: Path) -> dict[str, str]:
    """Read ``NAME=value`` lines from ``path`` after checking, on the opened file itself, that it
    is a regular file owned by the current user with mode 0600 or 0400 (no group/other bits).
    Raises :class:`CredentialsError` (path, line number and fix; never a value) otherwise."""
    quoted = shlex.quote(str(path))
    try:
        # O_NONBLOCK: a FIFO must be refused, not waited on; no effect on a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _refuse(path, f"not found (create it with: pmp-scrapy credentials init {quoted})") from None
    except PermissionError:
        raise _refuse(path, "permission denied") from None
    except OSError as exc:
        raise _refuse(path, f"cannot open it ({exc.strerror or type(exc).__name__})") from None
    try:
        info = os.fstat(fd)  # the file opened, not the name: no swap between check and read
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "not a regular file")
        if info.st_uid != os.geteuid():
            raise _refuse(path, f"owned by uid {info.st_uid}, not by you (uid {os.geteuid()}); refusing it "
                                f"(fix: chown {os.geteuid()} {quoted} && chmod 600 {quoted})")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise _refuse(path, f"mode {mode:04o} gives group/others access; refusing it (fix: chmod 600 {quoted})")
        data = b""
        while len(data) <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1)):
            data += chunk
        if len(data) > MAX_FILE_BYTES:
            raise _refuse(path, f"larger than {MAX_FILE_BYTES // 1024} KB; not a credentials file")
    except OSError as exc:
        raise _refuse(path, f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(path, "not UTF-8 text") from None
    return parse_credentials(text, path)


def parse_credentials(text: str, path: Path | str = "<text>") -> dict[str, str]:
    """Parse credentials-file ``text``: ``NAME=value`` per line (whitespace around either is
    ignored), ``#`` comment lines and blank lines. Names must be in :data:`SECRET_NAMES`, each at
    most once, with a non-empty value. Errors name the line, never its value."""
    values: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep:
            raise CredentialsError(f"credentials file {path} line {number}: expected NAME=value")
        if name not in SECRET_NAMES:
            # Echo the name only when it looks like one: a pasted secret may hold '=' too.
            shown = f" {name}" if _NAME_SHAPE.fullmatch(name) else ""
            raise CredentialsError(f"credentials file {path} line {number}: unknown name{shown} "
                                   f"(allowed: {', '.join(SECRET_NAMES)})")
        if name in values:
            raise CredentialsError(f"credentials file {path} line {number}: {name} given again "
                                   f"(first on line {first_line[name]})")
        if not value:
            raise CredentialsError(f"credentials file {path} line {number}: {name} has an empty value")
        values[name] = value
        first_line[name] = number
    return values


def check_credentials_file(settings: BaseSettings | None = None,
                           environ: Mapping[str, str] | None = None) -> Path | None:
    """Read and check the file ``PMP_CREDENTIALS_FILE`` names, if any (for a pre-flight that
    needs no secret, e.g. demo mode, to refuse a bad file in one line); returns its path.
    Raises :class:`CredentialsError` as :func:`read_credentials_file` does."""
    path = credentials_file_path(settings, environ)
    if path is not None:
        read_credentials_file(path)
    return path




# --- writing the file ----------------------------------------------------------------------------

def values_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The :data:`SECRET_NAMES` set (non-empty) in ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    return {name: environ[name].strip() for name in SECRET_NAMES if environ.get(name, "").strip()}


def values_from_prompt(prompt: Callable[[str], str]) -> dict[str, str]:
    """Ask for each of :data:`SECRET_NAMES` with ``prompt`` (``getpass.getpass``: nothing echoed);
    an empty answer leaves that name out."""
    values = {}
    for name in SECRET_NAMES:
        answer = prompt(f"{name} (empty to skip): ").strip()
        if answer:
            values[name] = answer
    return values


def write_credentials_file(path: Path, values: Mapping[str, str], *, force: bool = False) -> Path:
    """Create ``path`` (``~`` expanded) holding ``values`` as ``NAME=value`` lines, mode 0600 from
    its first byte (``os.open`` with ``O_EXCL``); a missing parent directory is created mode 0700.
    An existing file is refused unless ``force``, and then replaced atomically (``os.replace`` of
    a 0600 temporary file), so no reader ever sees a partial file. Returns the path written."""
    path = path.expanduser()
    bad = [name for name in values if name not in SECRET_NAMES]
    if bad:
        raise CredentialsError(f"unknown credential names: {', '.join(bad)}")
    if not values:
        raise CredentialsError(f"no credentials to write (give at least one of {', '.join(SECRET_NAMES)})")
    for name, value in values.items():
        if not value.strip() or "\n" in value or "\r" in value:
            raise CredentialsError(f"{name}: a value must be one non-empty line")
    if path.exists() and not force:
        raise CredentialsError(f"{path} exists; refusing to overwrite it (use --force to replace it)")
    text = "# pmp_scrapy credentials (NAME=value); keep this file mode 0600\n"
    text += "".join(f"{name}={values[name].strip()}\n" for name in SECRET_NAMES if name in values)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if force else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise CredentialsError(f"{path} exists; refusing to overwrite it (use --force to replace it)") from None
    except OSError as exc:
        raise CredentialsError(f"cannot create {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask may have removed the owner's bits
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if target != path:
            os.replace(target, path)
    except OSError as exc:
        target.unlink(missing_ok=True)  # ours: created above with O_EXCL
        raise CredentialsError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    return path
