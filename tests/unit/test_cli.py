"""The CLI lists its subcommands and turns bad settings into one clear line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from freshrag.cli import app

COMMANDS = ["ingest", "load", "serve", "up", "search", "ask", "eval", "optimize", "settings"]


def test_help_lists_every_subcommand() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f" {command} " in result.output, command


def test_bad_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRAG_EMBED_BATCH_SIZE", "0")
    result = CliRunner().invoke(app, ["settings"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: invalid setting FRESHRAG_EMBED_BATCH_SIZE: "
        "Input should be greater than or equal to 1"
    ]


def test_settings_never_print_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRAG_OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("FRESHRAG_API_KEYS", "tenant-key-123=acme")
    result = CliRunner().invoke(app, ["settings"])
    assert result.exit_code == 0
    assert "sk-very-secret" not in result.output and "tenant-key-123" not in result.output
    assert '"acme"' in result.output
