"""Admit an adapter trained elsewhere: register it as a candidate and put it through the
same eval gate as loraloop's own runs.

    python -m trainer.admit PATH [--prefix NAME] [--alias ALIAS] [--tenant T]   (also: loraloop adapters add)

The gate needs prompts the adapter is judged on: the feedback store's held-out pairs and
prompts; with an empty store and the demo base model, prompts from the demo domain. Exit
status 1 when the gate refuses it (the reasons are printed); an alias is only moved to an
approved adapter.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from sqlalchemy import select

from adapters import integrity, registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.errors import InvalidAdapter
from adapters.schema import CONVERSATION_KINDS, AdapterState, Interaction
from adapters.settings import DEMO_MODEL_NAME, StoreSettings
from trainer.data import DataConfig, build, is_heldout, prompt_key
from trainer.gate import GateConfig, evaluate


def heldout_data(sessions, demo: bool, n: int = 16) -> tuple[list[dict], list]:  # type: ignore[no-untyped-def]
    """(held-out pairs, held-out prompts) to judge an adapter on."""
    with sessions() as session:
        pairs = build(session, "dpo", DataConfig())["heldout"]
        logged = session.scalars(select(Interaction.prompt).where(Interaction.prompt.is_not(None),
                                                                  Interaction.kind.in_(CONVERSATION_KINDS))
                                .limit(2000))
        prompts = [p for p in logged if is_heldout(prompt_key(p), DataConfig.heldout_fraction)]
    prompts = [p["prompt"] for p in pairs] + prompts
    if not prompts and demo:
        from trainer.demo_model.corpus import NAMES, TASKS, make_prompt

        rng = random.Random(0)
        prompts = [[{"role": "user", "content": make_prompt(rng.randrange(len(TASKS)), rng.choice(NAMES), rng)}]
                   for _ in range(n)]
    return pairs[:n], prompts[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loraloop adapters add", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--prefix", default="adapter")
    parser.add_argument("--alias")
    parser.add_argument("--tenant", help="only this tenant's keys may see and call it (default: every tenant)")
    parser.add_argument("--max-lora-rank", type=int, default=16, help="the engine's --max-lora-rank")
    args = parser.parse_args(argv)

    from trainer.demo_model import ensure_demo_model

    settings = StoreSettings()
    base_model = settings.base_model or str(ensure_demo_model(settings.data_dir))
    engine = make_engine(settings.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            version = registry.register(session, Path(args.path), settings.adapter_store,
                                        settings.base_model or DEMO_MODEL_NAME, prefix=args.prefix,
                                        limits=integrity.Limits(args.max_lora_rank,
                                                                base_config=integrity.base_model_config(base_model)),
                                        tenant=args.tenant)
            name, path, state = version.name, Path(version.path), version.state
    except InvalidAdapter as exc:  # refused before it became a version: nothing recorded
        sys.exit(f"error: {exc.message}")
    if state != AdapterState.candidate:
        print(json.dumps({"name": name, "state": state.value, "note": "already registered"}))
        return 0
    pairs, prompts = heldout_data(sessions, demo=not settings.base_model)
    if not prompts:
        sys.exit("no held-out prompts to judge the adapter on: serve some traffic first")
    report = evaluate(base_model, path, pairs, prompts, GateConfig(max_lora_rank=args.max_lora_rank))
    with sessions.begin() as session:
        version = registry.transition(session, name, AdapterState.approved if report.passed else AdapterState.rejected)
        version.eval_report = json.loads(report.to_json())
        if report.passed and args.alias:
            registry.set_champion(session, args.alias, name, actor="adapters add", reason="passed the gate",
                                  tenant=args.tenant)
        final = version.state.value
    engine.dispose()
    print(json.dumps({"name": name, "state": final, "reasons": report.reasons, "metrics": report.metrics}))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
