"""The READMEs document every setting exactly as the code defines it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeguard.config import HELP_ZH, OPTIONS, reference_table

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("readme", "lang"), [("README.md", "en"), ("README.zh-CN.md", "zh")])
def test_readme_embeds_the_current_configuration_reference(readme: str, lang: str) -> None:
    text = (REPO / readme).read_text()
    table = reference_table(lang)
    assert table in text, f"{readme}: regenerate the table with config.reference_table({lang!r})"
    for opt in OPTIONS:
        assert f"`{opt.env}`" in text


@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_readme_starts_with_the_two_commands(readme: str) -> None:
    text = (REPO / readme).read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[0:2] for line in first_block.strip().splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]


@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_readme_shows_the_seed_callback_paths(readme: str) -> None:
    text = (REPO / readme).read_text()
    for path in (
        "/callback/disable-interception",
        "/callback/enable-interception",
        "/callback/status",
    ):
        assert path in text
    assert '{"status": "success", "message": "Interception disabled successfully"}' in text


def test_every_option_has_a_chinese_help_text() -> None:
    assert set(HELP_ZH) == {opt.field for opt in OPTIONS}
