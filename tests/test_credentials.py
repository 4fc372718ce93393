"""Credentials on headless servers: the credentials file (``PMP_CREDENTIALS_FILE``), the order
``-s`` setting > file > keyring > environment, the one-line message naming every source tried,
and ``pmp-scrapy credentials init``.

Pure functions are tested in-process with real keyring backends (an in-memory one, keyring's
``fail`` and ``null``); the crawl and the init command run as subprocesses, as an operator would.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import keyring
import pytest
from conftest import assert_no_secrets, expected_table, mapping_table, scrapy_command, scrapy_env
from keyring.backend import KeyringBackend
from keyring.backends import fail, null
from scrapy.settings import Settings

from pmp_scrapy.credentials import (
    KEYRING_SERVICE,
    NO_BACKEND,
    OAUTH_NAMES,
    SECRET_NAMES,
    check_credentials_file,
    credentials_file_path,
    parse_credentials,
    read_credentials_file,
    require_secrets,
    resolve_secret,
    write_credentials_file,
)
from pmp_scrapy.errors import ConfigError, CredentialsError
from pmp_scrapy.simulator import DEMO_CREDENTIALS, DatasetSpec, Scenario, Simulator

OAUTH = {"PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"], "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
         "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"]}
SMALL = DatasetSpec(managed_systems=120, no_patch_share=0.0)  # 4 pages of 30
FAIL_BACKEND = "keyring.backends.fail.Keyring"


class MemoryKeyring(KeyringBackend):
    """A keyring holding ``values`` ({(service, name): secret}). Its class is not viable (no
    priority), so keyring's own backend detection never picks it."""

    def __init__(self, values: dict[tuple[str, str], str] | None = None) -> None:
        super().__init__()
        self.values = dict(values or {})

    def get_password(self, service: str, username: str) -> str | None:
        return self.values.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.values[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.values.pop((service, username), None)


class BrokenKeyring(MemoryKeyring):
    """A backend whose service went away (D-Bus gone, wallet locked)."""

    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("org.freedesktop.DBus.Error.ServiceUnknown")


class NoKeyringRaising(MemoryKeyring):
    """A backend answering like keyring's chainer with nothing behind it."""

    def get_password(self, service: str, username: str) -> str | None:
        from keyring.errors import NoKeyringError

        raise NoKeyringError("No recommended backend was available.")


UseKeyring = Callable[[KeyringBackend], None]


@pytest.fixture
def use_keyring() -> Iterator[UseKeyring]:
    """``use_keyring(backend)`` makes ``backend`` this process's keyring until the test ends."""
    previous = keyring.get_keyring()
    yield keyring.set_keyring
    keyring.set_keyring(previous)


def write_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def oauth_file(path: Path, mode: int = 0o600, **extra: str) -> Path:
    values = {**OAUTH, **extra}
    return write_file(path, "# test credentials\n\n" + "".join(f"{k}={v}\n" for k, v in values.items()), mode)


# --- precedence: -s setting > credentials file > keyring > environment -----------------------------

def test_precedence_setting_over_file_over_keyring_over_environment(tmp_path: Path, use_keyring: UseKeyring) -> None:
    name = "PMP_CLIENT_SECRET"
    path = write_file(tmp_path / "creds", f"{name}=from-file\n")
    use_keyring(MemoryKeyring({(KEYRING_SERVICE, name): "from-keyring"}))
    environ = {name: "from-env", "PMP_CREDENTIALS_FILE": str(path)}
    setting = Settings({name: "from-setting"})

    assert resolve_secret(name, setting, environ) == "from-setting"
    assert resolve_secret(name, Settings(), environ) == "from-file"
    assert resolve_secret(name, None, environ) == "from-file"
    without_file = {name: "from-env"}
    assert resolve_secret(name, Settings(), without_file) == "from-keyring"
    use_keyring(MemoryKeyring())
    assert resolve_secret(name, Settings(), without_file) == "from-env"
    assert resolve_secret(name, Settings(), {}) is None


def test_each_name_comes_from_the_first_source_that_has_it(tmp_path: Path, use_keyring: UseKeyring) -> None:
    path = write_file(tmp_path / "creds", f"PMP_CLIENT_ID={OAUTH['PMP_CLIENT_ID']}\n")
    use_keyring(MemoryKeyring({(KEYRING_SERVICE, "PMP_CLIENT_SECRET"): OAUTH["PMP_CLIENT_SECRET"]}))
    environ = {"PMP_REFRESH_TOKEN": OAUTH["PMP_REFRESH_TOKEN"], "PMP_CLIENT_ID": "ignored: the file has it"}
    settings = Settings({"PMP_CREDENTIALS_FILE": str(path)})
    assert require_secrets(OAUTH_NAMES, settings, environ) == OAUTH


def test_the_file_setting_wins_over_the_file_variable_and_tilde_is_expanded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_file(tmp_path / "a", "PMP_API_KEY=key-a\n")
    write_file(tmp_path / "b", "PMP_API_KEY=key-b\n")
    environ = {"PMP_CREDENTIALS_FILE": "~/b"}
    assert credentials_file_path(Settings({"PMP_CREDENTIALS_FILE": "~/a"}), environ) == tmp_path / "a"
    assert resolve_secret("PMP_API_KEY", Settings({"PMP_CREDENTIALS_FILE": "~/a"}), environ) == "key-a"
    assert resolve_secret("PMP_API_KEY", Settings(), environ) == "key-b"
    assert credentials_file_path(Settings(), {"PMP_CREDENTIALS_FILE": ""}) is None


# --- the message when a secret is missing ------------------------------------------------------------

def test_missing_credentials_message_names_every_source_in_one_line(use_keyring: UseKeyring) -> None:
    use_keyring(fail.Keyring())
    with pytest.raises(CredentialsError) as caught:
        require_secrets(OAUTH_NAMES, Settings(), {"PMP_CLIENT_ID": "x", "PMP_REFRESH_TOKEN": "y"})
    assert isinstance(caught.value, ConfigError)  # the crawl command prints it as one line, exit 1
    assert str(caught.value) == (
        "missing credentials PMP_CLIENT_SECRET; tried setting (-s): not given; "
        "credentials file: PMP_CREDENTIALS_FILE not set; "
        "keyring: no keyring backend available (headless server: use PMP_CREDENTIALS_FILE); "
        "environment: PMP_CLIENT_SECRET not set")


def test_missing_message_says_what_a_file_and_a_working_keyring_lacked(tmp_path: Path, use_keyring: UseKeyring) -> None:
    path = write_file(tmp_path / "creds", f"PMP_CLIENT_ID={OAUTH['PMP_CLIENT_ID']}\n")
    use_keyring(MemoryKeyring({(KEYRING_SERVICE, "PMP_CLIENT_SECRET"): OAUTH["PMP_CLIENT_SECRET"]}))
    with pytest.raises(CredentialsError) as caught:
        require_secrets(OAUTH_NAMES, None, {"PMP_CREDENTIALS_FILE": str(path)})
    message = str(caught.value)
    assert message == (
        "missing credentials PMP_REFRESH_TOKEN; tried setting (-s): not given; "
        f"credentials file: {path} has no PMP_CLIENT_SECRET, PMP_REFRESH_TOKEN; "
        f"keyring: no PMP_REFRESH_TOKEN under service {KEYRING_SERVICE}; "
        "environment: PMP_REFRESH_TOKEN not set")
    assert_no_secrets({"message": message}, list(OAUTH.values()))


@pytest.mark.parametrize("backend", [fail.Keyring(), null.Keyring(), NoKeyringRaising()],
                         ids=["fail", "null", "NoKeyringError"])
def test_no_keyring_backend_is_its_own_reason(backend: KeyringBackend, use_keyring: UseKeyring) -> None:
    use_keyring(backend)
    with pytest.raises(CredentialsError, match=r"; keyring: no keyring backend available \(headless server: "
                                               r"use PMP_CREDENTIALS_FILE\); ") as caught:
        require_secrets(("PMP_API_KEY",), Settings(), {})
    assert NO_BACKEND in str(caught.value)


def test_a_failing_keyring_backend_is_a_reason_not_a_crash(use_keyring: UseKeyring) -> None:
    use_keyring(BrokenKeyring())
    assert resolve_secret("PMP_API_KEY", None, {"PMP_API_KEY": "env-key"}) == "env-key"
    with pytest.raises(CredentialsError, match=r"; keyring: lookup failed \(RuntimeError\); environment: "):
        require_secrets(("PMP_API_KEY",), None, {})


# --- the file: format -----------------------------------------------------------------------------------

def test_file_format_comments_blank_lines_whitespace_and_equals_in_values(tmp_path: Path) -> None:
    path = write_file(tmp_path / "creds", "# pmp\n\n   # indented comment\nPMP_CLIENT_ID = 1000.ABC \n"
                                          "PMP_API_KEY=c2VjcmV0==\nSLACK_WEBHOOK_URL=https://hooks.example/x?a=b#c\n")
    assert read_credentials_file(path) == {"PMP_CLIENT_ID": "1000.ABC", "PMP_API_KEY": "c2VjcmV0==",
                                           "SLACK_WEBHOOK_URL": "https://hooks.example/x?a=b#c"}


@pytest.mark.parametrize(("line", "expected"), [
    ("PMP_CLIENT_SECRT=s3cr3t-value", "line 3: unknown name PMP_CLIENT_SECRT (allowed: PMP_CLIENT_ID, "),
    ("s3cr3t-value", "line 3: expected NAME=value"),
    ("s3cr3t-value==", "line 3: unknown name (allowed: "),  # a pasted base64 secret: its part before '='
    ("PMP_CLIENT_ID=s3cr3t-value", "line 3: PMP_CLIENT_ID given again (first on line 2)"),
    ("PMP_API_KEY=", "line 3: PMP_API_KEY has an empty value"),
], ids=["unknown", "no-equals", "pasted-base64", "twice", "empty"])
def test_file_format_errors_name_the_line_never_the_value(tmp_path: Path, line: str, expected: str) -> None:
    path = write_file(tmp_path / "creds", f"# header\nPMP_CLIENT_ID=1000.ABC\n{line}\n")
    with pytest.raises(CredentialsError) as caught:
        resolve_secret("PMP_CLIENT_ID", Settings({"PMP_CREDENTIALS_FILE": str(path)}), {})
    message = str(caught.value)
    assert message.startswith(f"credentials file {path} {expected}"), message
    assert "s3cr3t" not in message and "1000.ABC" not in message and "\n" not in message


# --- the file: who may read it ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o666])
def test_file_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = oauth_file(tmp_path / "creds", mode)
    with pytest.raises(CredentialsError) as caught:
        require_secrets(OAUTH_NAMES, None, {"PMP_CREDENTIALS_FILE": str(path), **OAUTH})
    assert str(caught.value) == (f"credentials file {path}: mode {mode:04o} gives group/others access; "
                                 f"refusing it (fix: chmod 600 {path})")
    assert_no_secrets({"message": str(caught.value)}, list(OAUTH.values()))


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_file_is_accepted(tmp_path: Path, mode: int) -> None:
    path = oauth_file(tmp_path / "creds", mode)
    assert require_secrets(OAUTH_NAMES, None, {"PMP_CREDENTIALS_FILE": str(path)}) == OAUTH


def test_fix_in_the_message_quotes_a_path_with_spaces(tmp_path: Path) -> None:
    path = oauth_file(tmp_path / "my creds", 0o644)
    with pytest.raises(CredentialsError, match=r"\(fix: chmod 600 '.*/my creds'\)$"):
        read_credentials_file(path)


def test_missing_file_directory_and_fifo_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CredentialsError, match=r"nope: not found \(create it with: pmp-scrapy credentials init "):
        resolve_secret("PMP_API_KEY", None, {"PMP_CREDENTIALS_FILE": str(missing), "PMP_API_KEY": "env"})
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(CredentialsError, match=r"dir: not a regular file$"):
        read_credentials_file(directory)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    with pytest.raises(CredentialsError, match=r"fifo: not a regular file$"):
        read_credentials_file(fifo)  # refused at once: never waits for a writer
    assert time.monotonic() - started < 5


def test_oversized_or_binary_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    big = write_file(tmp_path / "big", "# " + "x" * 70_000 + "\n")
    with pytest.raises(CredentialsError, match=r"big: larger than 64 KB; not a credentials file$"):
        read_credentials_file(big)
    binary = tmp_path / "binary"
    binary.write_bytes(b"PMP_API_KEY=s3cr3t\xff\n")
    binary.chmod(0o600)
    with pytest.raises(CredentialsError, match=r"binary: not UTF-8 text$") as caught:
        read_credentials_file(binary)
    assert "s3cr3t" not in str(caught.value) and "xff" not in str(caught.value)


def test_check_credentials_file_refuses_a_bad_file_even_when_no_secret_is_needed(tmp_path: Path) -> None:
    assert check_credentials_file(Settings(), {}) is None
    path = oauth_file(tmp_path / "creds")
    assert check_credentials_file(Settings({"PMP_CREDENTIALS_FILE": str(path)}), {}) == path
    path.chmod(0o640)
    with pytest.raises(CredentialsError, match=r"mode 0640 gives group/others access"):
        check_credentials_file(None, {"PMP_CREDENTIALS_FILE": str(path)})


def test_symlink_to_a_private_file_is_followed_and_checked(tmp_path: Path) -> None:
    target = oauth_file(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target)  # e.g. a Kubernetes secret volume
    assert read_credentials_file(link) == OAUTH
    target.chmod(0o644)
    with pytest.raises(CredentialsError, match=r"link: mode 0644 "):
        read_credentials_file(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = oauth_file(tmp_path / "creds")
    os.chown(path, 65534, -1)
    with pytest.raises(CredentialsError) as caught:
        read_credentials_file(path)
    assert str(caught.value).startswith(f"credentials file {path}: owned by uid 65534, not by you (uid 0)")


# --- a real crawl, no keyring backend -----------------------------------------------------------------

def crawl(sim: Simulator, db_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``scrapy crawl dcapi_patches`` against ``sim`` on a machine with no keyring backend and no
    credential in the environment."""
    values = {"PMP_BASE_URL": sim.url, "PMP_ACCOUNTS_URL": sim.url, "PMP_DATABASE_URL": f"sqlite:///{db_path}",
              "DOWNLOAD_DELAY": "0", "PMP_BACKOFF_BASE": "0.05", "PMP_BATCH_PAGES": "0",
              "PYTHON_KEYRING_BACKEND": FAIL_BACKEND, **env}
    return scrapy_command(["crawl", "dcapi_patches", "-s", "AUTOTHROTTLE_ENABLED=False"], env=values, timeout=120)


def test_credentials_file_works_for_a_real_crawl_without_a_keyring_backend(tmp_path: Path, db_path: Path) -> None:
    path = oauth_file(tmp_path / "creds")
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        result = crawl(sim, db_path, PMP_CREDENTIALS_FILE=str(path))
        expected = expected_table(sim)
        tokens = sim.issued_tokens
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pmp_scrapy: exit 0:" in result.stdout
    assert mapping_table(db_path) == expected
    assert tokens  # the file's credentials got a token from the accounts server
    assert_no_secrets({"stdout": result.stdout, "stderr": result.stderr, "database": db_path.read_bytes()},
                      [*OAUTH.values(), *tokens])


def test_world_readable_file_is_refused_in_one_line_and_exit_1(tmp_path: Path, db_path: Path) -> None:
    path = oauth_file(tmp_path / "creds", 0o644)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        result = crawl(sim, db_path, PMP_CREDENTIALS_FILE=str(path), **OAUTH)  # the environment must not rescue it
        requests = list(sim.requests)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines() == [(
        f"pmp_scrapy: error: credentials file {path}: mode 0644 gives group/others access; "
        f"refusing it (fix: chmod 600 {path})")]
    assert requests == [] and not db_path.exists()
    assert_no_secrets({"stdout": result.stdout, "stderr": result.stderr}, list(OAUTH.values()))


def test_crawl_without_credentials_names_every_source(tmp_path: Path, db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        result = crawl(sim, db_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines() == [(
        "pmp_scrapy: error: missing credentials PMP_CLIENT_ID, PMP_CLIENT_SECRET, PMP_REFRESH_TOKEN; "
        "tried setting (-s): not given; credentials file: PMP_CREDENTIALS_FILE not set; "
        f"keyring: {NO_BACKEND}; environment: PMP_CLIENT_ID, PMP_CLIENT_SECRET, PMP_REFRESH_TOKEN not set")]


# --- pmp-scrapy credentials init ----------------------------------------------------------------------

def init(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pmp-scrapy credentials init ARGS`` with umask 0 (the mode must not depend on it)."""
    return subprocess.run([sys.executable, "-m", "pmp_scrapy.cli", "credentials", "init", *args],
                          env=scrapy_env(env), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0), check=False)


def assert_private(path: Path) -> None:
    info = path.stat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()


def test_credentials_init_from_env_creates_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "credentials"
    result = init([str(path), "--from-env"], env=OAUTH)
    assert result.returncode == 0, result.stderr
    assert_private(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_credentials_file(path) == OAUTH
    assert result.stdout.splitlines() == [
        f"wrote {path} (mode 0600): PMP_CLIENT_ID, PMP_CLIENT_SECRET, PMP_REFRESH_TOKEN",
        f"point the crawl at it: export PMP_CREDENTIALS_FILE={path}"]
    assert_no_secrets({"stdout": result.stdout, "stderr": result.stderr}, list(OAUTH.values()))
    # The crawl's resolution reads it back.
    assert require_secrets(OAUTH_NAMES, None, {"PMP_CREDENTIALS_FILE": str(path)}) == OAUTH

    again = init([str(path), "--from-env"], env={**OAUTH, "PMP_API_KEY": "new-key"})
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        f"pmp_scrapy: error: {path} exists; refusing to overwrite it (use --force to replace it)",
    ]
    assert read_credentials_file(path) == OAUTH

    forced = init([str(path), "--from-env", "--force"], env={"PMP_API_KEY": "new-key"})
    assert forced.returncode == 0, forced.stderr
    assert_private(path)
    assert read_credentials_file(path) == {"PMP_API_KEY": "new-key"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["credentials"]  # no temporary file left


def test_credentials_init_defaults_to_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "configured"
    result = init(["--from-env"], env={"PMP_CREDENTIALS_FILE": str(path), "PMP_API_KEY": "k-123"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote {path} (mode 0600): PMP_API_KEY"]
    assert read_credentials_file(path) == {"PMP_API_KEY": "k-123"}


def test_credentials_init_from_an_empty_environment_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    result = init([str(path), "--from-env"])
    assert result.returncode == 1
    assert result.stderr.splitlines() == [(
        f"pmp_scrapy: error: --from-env: none of {', '.join(SECRET_NAMES)} is set in the environment; "
        "nothing written")]
    assert not path.exists()


def test_write_refuses_a_value_spanning_lines(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"^PMP_API_KEY: a value must be one non-empty line$"):
        write_credentials_file(tmp_path / "c", {"PMP_API_KEY": "abc\nPMP_CLIENT_ID=evil"})
    assert not (tmp_path / "c").exists()
    assert parse_credentials("PMP_API_KEY=abc\n") == {"PMP_API_KEY": "abc"}


def on_terminal(args: list[str], env: dict[str, str], answers: list[tuple[str, str]],
                timeout: float = 60) -> tuple[int, str]:
    """Run ``python ARGS`` with a pseudo-terminal as its controlling terminal (where getpass
    asks), typing each answer once its prompt shows; returns the exit code and the screen."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        try:
            os.execve(sys.executable, [sys.executable, *args], env)
        finally:
            os._exit(127)
    screen, search_from, pending = b"", 0, list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            screen += data
            while pending and (at := screen.find(pending[0][0].encode(), search_from)) >= 0:
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
                search_from = at + 1
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), screen.decode("utf-8", "replace")


def test_credentials_init_prompts_without_echoing_the_values(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    answers = [(f"{name} (empty to skip): ", OAUTH.get(name, "")) for name in SECRET_NAMES]
    code, screen = on_terminal(["-m", "pmp_scrapy.cli", "credentials", "init", str(path)], scrapy_env(), answers)
    assert code == 0, screen
    for name in SECRET_NAMES:
        assert f"{name} (empty to skip): " in screen
    assert f"wrote {path} (mode 0600): PMP_CLIENT_ID, PMP_CLIENT_SECRET, PMP_REFRESH_TOKEN" in screen
    assert_no_secrets({"terminal": screen}, list(OAUTH.values()))
    assert_private(path)
    assert read_credentials_file(path) == OAUTH


def test_credentials_init_without_a_terminal_says_to_use_from_env(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    result = subprocess.run([sys.executable, "-m", "pmp_scrapy.cli", "credentials", "init", str(path)],
                            env=scrapy_env(), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, start_new_session=True, check=False)  # no terminal
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["pmp_scrapy: error: no terminal to prompt on; use --from-env"]
    assert not path.exists()
