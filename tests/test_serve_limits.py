"""Launcher bounds (TGI's defaults and refusals) and the CLI's handling of bad ones."""

from __future__ import annotations

import pytest

from camelid.cli import main
from camelid.errors import CamelidError
from camelid.serve import make_limits
from tests.serve_helpers import STORIES


def test_tgi_defaults_follow_the_model_context():
    limits = make_limits(512)
    assert (limits.max_total_tokens, limits.max_input_tokens, limits.max_batch_prefill_tokens) == (512, 511, 561)
    assert make_limits(512, max_input_tokens=100).max_total_tokens == 101


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_input_tokens=256, max_total_tokens=256), "must be > 0 and < --max-total-tokens"),
        (dict(max_total_tokens=4096), "exceeds the model's context"),
        (dict(max_input_tokens=200, max_total_tokens=300, max_batch_prefill_tokens=100), "could never be scheduled"),
        (dict(max_concurrent_requests=0), "--max-concurrent-requests"),
    ],
)
def test_bad_limits_are_refused(kwargs, message):
    with pytest.raises(CamelidError, match=message):
        make_limits(512, **kwargs)


def test_cli_reports_bad_limits(capsys):
    rc = main(["serve", str(STORIES), "--max-input-length", "600", "--max-total-tokens", "512", "--port", "1"])
    assert rc == 2
    assert "--max-input-tokens (600) must be > 0 and < --max-total-tokens (512)" in capsys.readouterr().err


def test_cli_reports_bad_template(capsys):
    rc = main(["serve", str(STORIES), "--template", "no-such-template", "--port", "1"])
    assert rc == 2 and "unknown template 'no-such-template'" in capsys.readouterr().err


def test_cli_reports_template_the_tokenizer_cannot_spell(capsys):
    # codellama-70b-instruct needs the <step> special token; stories260K's 512-token vocabulary lacks it.
    rc = main(["serve", str(STORIES), "--template", "codellama-70b-instruct", "--port", "1"])
    assert rc == 2 and "<step>" in capsys.readouterr().err
