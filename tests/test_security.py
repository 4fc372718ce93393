"""Security sweep: after a full faulty run, no secret and no unredacted personal data in any
output; the database and the log file are private (0600)."""

from __future__ import annotations

import stat
from pathlib import Path

from conftest import SlackReceiver, assert_no_secrets, crawl_env, db_rows, scrapy_command

from pmp_scrapy.simulator import DEMO_CREDENTIALS, DatasetSpec, Fault, Scenario, Simulator

PERSONAL = ["admin@example.com", "10.20.30.40", "2001:db8::1"]  # in every simulated error page


def test_no_secret_or_personal_data_in_any_output(tmp_path: Path, slack: SlackReceiver) -> None:
    db_path, log_file = tmp_path / "pmp.db", tmp_path / "pmp.log"
    scenario = Scenario(
        dataset=DatasetSpec(managed_systems=600, no_patch_share=0.0),
        token_ttl=2.0,  # proactive refreshes during the run (above the slot queue wait)
        faults=[Fault(page=2, kind="http_401", attempts=(1,)),  # a refresh on 401
                Fault(page=3, kind="http_503", attempts=(1,)),  # retried, sample logged
                Fault(page=5, kind="http_500"),  # a gap with a sample stored
                Fault(page=7, kind="html_200")],  # a JSON parse error with an HTML sample
    )
    with Simulator(scenario=scenario) as sim:
        env = crawl_env(sim, db_path, DOWNLOAD_DELAY=0.15, PMP_BATCH_PAGES=0, PMP_CHECKPOINT_EVERY=3,
                        LOG_FILE=log_file, LOG_LEVEL="DEBUG", SLACK_WEBHOOK_URL=slack.url, PMP_SLACK_MIN_INTERVAL=0.5)
        result = scrapy_command(["crawl", "dcapi_patches", "-s", "AUTOTHROTTLE_ENABLED=False"], env=env,
                                timeout=120)
        tokens = [str(t) for t in sim.issued_tokens]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(tokens) >= 3  # run start, 401, proactive
    log_text = log_file.read_text()
    assert '"event_type": "token_refresh"' in log_text and "page 3 attempt 1 failed" in log_text
    assert slack.posts

    samples = "\n".join(str(r[0]) for r in db_rows(db_path, "SELECT response_sample FROM dcapi_extraction_gaps"))
    assert "[email]" in samples and "[ip]" in samples
    database = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("pmp.db"))
    outputs = {"log file": log_text, "stdout": result.stdout, "stderr": result.stderr, "database": database,
               "gap samples": samples, "slack payloads": b"".join(p.raw for p in slack.posts)}
    secrets = [DEMO_CREDENTIALS["client_secret"], DEMO_CREDENTIALS["refresh_token"], DEMO_CREDENTIALS["api_key"],
               slack.url, slack.url.split("/", 3)[3], *tokens]
    assert_no_secrets(outputs, secrets)
    assert_no_secrets(outputs, PERSONAL)

    for path in (db_path, log_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
