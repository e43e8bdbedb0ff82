"""The operator's CLI for rollout: experiments start/show/list, adapters pause/resume/promote/
rollback/show, on the database the gateways share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters import registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.schema import AdapterState
from gateway.cli import main
from tests.fake_vllm import BASE
from tests.unit.harness import fake_adapter


def run(capsys: pytest.CaptureFixture, *argv: str) -> list[dict]:
    main(list(argv))
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_an_operator_runs_an_experiment_from_the_cli(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORALOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORALOOP_DATABASE_URL", db_url)
    engine = make_engine(db_url)
    upgrade(engine)
    with make_sessionmaker(engine).begin() as session:
        old, new = (registry.register(session, fake_adapter(tmp_path / n, i), tmp_path / "store", BASE, prefix=n,
                                      state=AdapterState.approved).name for i, n in enumerate(("old", "new")))
        registry.set_champion(session, "default", old)
    engine.dispose()

    (started,) = run(capsys, "experiments", "start", "default", new, "--share", "0.2", "--reason", "weekly")
    assert (started["status"], started["canary"], started["champion"], started["canary_share"]) == \
        ("running", new, old, 0.2)
    with pytest.raises(SystemExit, match="already has an experiment"):
        main(["experiments", "start", "default", new])
    (shown,) = run(capsys, "experiments", "show", "default")
    assert shown["stats"]["arms"]["canary"]["ratings"] == 0 and shown["stats"]["log_lambda"] == 0
    assert run(capsys, "adapters", "pause", "default")[0]["status"] == "paused"
    assert run(capsys, "adapters", "resume", "default")[0]["status"] == "running"
    (promoted,) = run(capsys, "adapters", "promote", "default", "--reason", "looked at the numbers")
    assert promoted["status"] == "promoted" and promoted["decided_by"].startswith("cli:")
    assert run(capsys, "adapters", "rollback", "default") == [{"alias": "default", "champion": old}]
    (detail,) = run(capsys, "adapters", "show", new)
    assert detail["state"] == "retired" and detail["human_eval"] == {"win": 0, "loss": 0, "tie": 0}
    assert [(h["action"], h["to"]) for h in detail["history"]] == [
        ("transition", "canary"), ("experiment_start", None), ("experiment_pause", None),
        ("experiment_resume", None), ("transition", "champion"), ("transition", "retired")]
    assert [e["status"] for e in run(capsys, "experiments", "list")] == ["promoted"]
    with pytest.raises(SystemExit, match="no previous champion"):
        main(["adapters", "rollback", "default"])


def test_an_operator_lists_a_learned_segments_users_and_deletes_it(tmp_path: Path, db_url: str,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters import segment_assignments, segments
    from adapters.segment_assignments import Placement

    monkeypatch.setenv("LORALOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORALOOP_DATABASE_URL", db_url)
    engine = make_engine(db_url)
    upgrade(engine)
    with make_sessionmaker(engine).begin() as session:
        registry.lock_alias(session, "default", create=True)
        segments.create(session, "default", "taste-1", actor="scheduler", learned=True)
        segment_assignments.place(session, "default", "default", {
            f"u{i}": Placement("taste-1", 8, 0.5) for i in range(3)}, actor="scheduler", reason="split")
    engine.dispose()
    assert [u["user"] for u in run(capsys, "segments", "users", "default@taste-1", "--limit", "2")] == ["u0", "u1"]
    assert [u["user"] for u in run(capsys, "segments", "users", "default@taste-1", "--after", "u1")] == ["u2"]
    (listed,) = run(capsys, "segments", "list")
    assert (listed["alias"], listed["learned"]) == ("default@taste-1", True)
    (deleted,) = run(capsys, "segments", "delete", "default@taste-1", "--reason", "not useful")
    assert deleted["alias"] == "default@taste-1" and deleted["deleted_at"]
    assert run(capsys, "segments", "users", "default@taste-1") == []  # its users unassigned
    assert run(capsys, "segments", "list") == []
