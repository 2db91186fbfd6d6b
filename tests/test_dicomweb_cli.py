"""The DICOMweb options of the CLI end to end: ``convert --from-dicomweb``, ``push --dicomweb``,
``verify``, against Orthanc and the FHIR test server (inside a private network namespace)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fhirimg.cli import _dicomweb as _dw
from fhirimg.cli import app
from fhirimg.cli._app import err_console
from fhirimg.cli._options import Network
from fhirimg.convert import ConvertOptions
from fhirimg.dicomweb import StudyQuery
from tests.helpers import REPO, SAMPLE, bundles, orthanc_or_skip
from tests.servers.faultproxy import FaultProxy

runner = CliRunner()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc-cli")) as server:
        yield server


@pytest.mark.dicomweb
def test_cli_push_convert_verify(pacs: Any, tmp_path: Path, clean_fhir: Any) -> None:
    url = pacs.dicomweb_url
    out, again = tmp_path / "out", tmp_path / "from-pacs"
    result = runner.invoke(
        app, ["convert", str(SAMPLE), "-o", str(out), "-j", "1", "-q", "--dicomweb-url", url]
    )
    assert result.exit_code == 1, result.output  # the sample holds a truncated file on purpose

    result = runner.invoke(app, ["push", "--dicomweb", url, str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert '"stored": 20' in result.stdout

    result = runner.invoke(app, ["convert", "--from-dicomweb", url, "-o", str(again), "-q"])
    assert result.exit_code == 0, result.output
    for name, bundle in bundles(out).items():
        assert bundles(again)[name]["entry"][-1] == bundle["entry"][-1]

    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0, result.output

    server = clean_fhir.base_url
    result = runner.invoke(app, ["push", "--dicomweb", url, "--server", server, str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped 20" in result.output  # instances already confirmed: journal
    result = runner.invoke(app, ["verify", "--server", server, "--json"])
    assert result.exit_code == 0, result.output
    assert load_json(result.stdout)["summary"]["checked"] == 5
    _verify_with_fhir_credentials(server)


def _verify_with_fhir_credentials(server: str) -> None:
    """``verify --server`` takes ``push``'s credentials: basic auth and OAuth2 client credentials
    (a proxy in front of the FHIR server asks for them), secrets from the environment only."""
    verify = ["verify", "--retries", "0", "--json", "--server"]
    with FaultProxy(server) as proxy:
        proxy.require_basic("alice", "pw-SECRET-1")
        result = runner.invoke(app, [*verify, proxy.base_url])
        assert result.exit_code == 3, result.output
        assert "401" in result.output
        result = runner.invoke(
            app,
            [*verify, proxy.base_url, "--user", "alice"],
            env={"FHIRIMG_PASSWORD": "pw-SECRET-1"},
        )
        assert result.exit_code == 0, result.output
        assert load_json(result.stdout)["summary"]["checked"] == 5
        assert "pw-SECRET-1" not in result.output
    with FaultProxy(server) as proxy:
        proxy.enable_oauth("fhirimg", "cs-SECRET-9")
        oauth = [
            "--token-url",
            proxy.token_url,
            "--client-id",
            "fhirimg",
            "--scope",
            "system/*.read",
        ]
        result = runner.invoke(
            app, [*verify, proxy.base_url, *oauth], env={"FHIRIMG_CLIENT_SECRET": "cs-SECRET-9"}
        )
        assert result.exit_code == 0, result.output
        assert load_json(result.stdout)["summary"]["checked"] == 5
        assert proxy.tokens_issued == 1
        assert "cs-SECRET-9" not in result.output
        result = runner.invoke(
            app, [*verify, proxy.base_url, *oauth], env={"FHIRIMG_CLIENT_SECRET": "wrong"}
        )
        assert result.exit_code == 3, result.output
        assert "token endpoint" in result.output


def load_json(text: str) -> Any:
    import orjson

    return orjson.loads(text)


@pytest.mark.parametrize(
    "args",
    [
        ["convert"],
        ["convert", "--accession", "A1", str(SAMPLE)],  # --since filters files (issue 16)
        ["convert", "--from-dicomweb", "http://127.0.0.1:9/dw", str(SAMPLE)],
        ["convert", "--from-dicomweb", "http://127.0.0.1:9/dw", "--since", "yesterday"],
        ["push"],
        ["verify", "--server", "http://127.0.0.1:9/fhir", str(SAMPLE)],
        ["verify", "--user", "alice", str(SAMPLE)],
        ["verify", "--server", "http://127.0.0.1:9/fhir", "--user", "a", "--token", "t"],
        ["verify", "--server", "http://127.0.0.1:9/fhir", "--token-url", "http://127.0.0.1:9/t"],
    ],
)
def test_cli_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output


def test_unreachable_pacs_gives_up_as_told(tmp_path: Path) -> None:
    """``convert --from-dicomweb``'s runner takes the network options: no retries here,
    so an unreachable PACS is exit 3 at once (the defaults retry for about 10 s)."""
    with pytest.raises(typer.Exit) as exited:
        _dw.run_convert_from_dicomweb(
            "http://127.0.0.1:9/dw",
            None,
            StudyQuery(),
            ConvertOptions(out_dir=tmp_path),
            network=Network(timeout=1.0, retries=0),
        )
    assert exited.value.exit_code == 3


def test_cli_unreachable_pacs_cannot_start(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "convert", "--from-dicomweb", "http://127.0.0.1:9/dw", "-o", str(tmp_path), "-q",
            "--timeout", "1", "--retries", "0",
        ],
    )  # fmt: skip
    assert result.exit_code == 3, result.output


def test_docs_name_every_dicomweb_option() -> None:
    doc = (REPO / "docs" / "dicomweb.md").read_text()
    for command in ("convert", "push", "verify"):
        help_text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        options = set(
            re.findall(
                r"(--(?:dicomweb|from-dicomweb|study|since|patient(?![\w-])|accession(?![\w-])|modality|qido)[\w-]*)",
                help_text,
            )
        )
        if command == "verify":
            options |= set(re.findall(r"(--server)", help_text))
        for option in options:
            assert option in doc, f"{command} {option} is not in docs/dicomweb.md"


class _SeenBar(_dw._Bar):
    """The CLI's bar, keeping what it was told (a bar is transient: a fast run leaves no text)."""

    events: list[tuple[str, int, int | None]] = []

    def __call__(self, stage: str, advance: int, total: int | None) -> None:
        self.events.append((stage, advance, total))
        super().__call__(stage, advance, total)


@pytest.mark.dicomweb
def test_progress_bar_on_a_terminal_unless_quiet(
    pacs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pacs.dicomweb_url
    out = tmp_path / "out"
    args = ["convert", str(SAMPLE / "study_b_mr"), "-o", str(out), "-j", "1", "-q"]
    assert runner.invoke(app, [*args, "--dicomweb-url", url]).exit_code == 0
    push = ["push", "--dicomweb", url, str(out), "--force"]
    monkeypatch.setattr(_dw, "_Bar", _SeenBar)
    seen = _SeenBar.events

    result = runner.invoke(app, push)  # stderr is not a terminal: no bar
    assert result.exit_code == 0, result.output
    assert seen == []
    monkeypatch.setattr(err_console, "_force_terminal", True)
    result = runner.invoke(app, [*push, "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == []
    result = runner.invoke(app, push)
    assert result.exit_code == 0, result.output
    assert sum(n for _, n, _ in seen) == 4
    assert {(stage, total) for stage, _, total in seen} == {("store", 4)}

    seen.clear()
    options = ConvertOptions(out_dir=tmp_path / "again", jobs=1)
    _dw.run_convert_from_dicomweb(url, None, StudyQuery(), options, progress=False)
    assert seen == []
    _dw.run_convert_from_dicomweb(url, None, StudyQuery(), options, progress=True)
    studies = len(bundles(tmp_path / "again"))
    assert seen.count(("read", 1, studies)) == studies
    assert seen.count(("write", 1, studies)) == studies
