"""The `loraloop` command.

    loraloop serve [--dev]              gateway + (with no LORALOOP_UPSTREAMS) a supervised vLLM
    loraloop demo-model                 build (or find) the demo base model, print its folder
    loraloop keys create|list|revoke    API keys
    loraloop adapters add|list          register adapter folders
    loraloop aliases set ALIAS VERSION  point an alias at a version
    loraloop segments list|show|create  segments of an alias, each served its own adapter
    loraloop db upgrade                 apply database migrations
    loraloop data export|report|purge   feedback as training data (runs trainer.data)
    loraloop train --method M           train a candidate: dpo|kto|sft|reward|grpo [--qlora] (trainer.train)
    loraloop scheduler [--once]         train on a schedule when feedback is new (trainer.scheduler)
    loraloop demo [--persona P]         simulated users drive feedback, training, A/B and promotion (demo.run)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from adapters import integrity, registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.errors import LoraloopError
from adapters.schema import AdapterState, Scope
from gateway import auth, rollout_cli
from gateway.settings import DEMO_MODEL_NAME, Settings

log = logging.getLogger("loraloop")


def build_demo_model(settings: Settings) -> Path:
    """Builds the demo model in a child process: torch stays out of the gateway's memory."""
    out = subprocess.run([sys.executable, "-m", "trainer.demo_model", "--data-dir", str(settings.data_dir)],
                         stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def sessions_for(settings: Settings):  # type: ignore[no-untyped-def]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    return make_sessionmaker(engine)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    from gateway import listeners
    from gateway.app import create_app
    from gateway.engine.supervisor import EngineSupervisor, new_api_key

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    supervisor = None
    if settings.embedded:
        model = settings.base_model or str(build_demo_model(settings))
        name = settings.served_model_name or (DEMO_MODEL_NAME if not settings.base_model else settings.base_model)
        engine = settings.engine
        if not settings.base_model and engine.dtype == "auto":
            # The demo model is tiny: fp32 costs nothing and gives tokens identical to HF/PEFT.
            engine = engine.model_copy(update={"dtype": "float32"})
        # a key per start: no other local process can load adapters into the vLLM on loopback
        supervisor = EngineSupervisor(model, name, engine, settings.data_dir / "logs" / "vllm.log",
                                      api_key=settings.upstream_api_key or new_api_key())
        supervisor.start()
        settings = settings.model_copy(update={"upstreams": [supervisor.url], "served_model_name": name,
                                               "upstream_api_key": supervisor.api_key})
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turning that into an
    # exception lets the engine be stopped below instead of orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        listeners.run(create_app(settings), settings.host, settings.port, settings.admin_host,
                      settings.admin_port, args.access_log, settings.forwarded_allow_ips)
    except SystemExit:
        pass
    finally:
        if supervisor is not None:
            supervisor.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> None:
    sessions = sessions_for(settings)
    with sessions.begin() as session:
        if args.action == "create":
            plaintext, row = auth.create_key(session, args.name, Scope(args.scope), args.tenant,
                                             log_prompts=args.log_prompts, rate_limit_rpm=args.rate_limit)
            print(json.dumps({"id": row.id, "name": row.name, "scope": row.scope.value, "tenant": row.tenant,
                              "log_prompts": row.log_prompts, "rate_limit_rpm": row.rate_limit_rpm,
                              "key": plaintext}))
            print("store this key now: it is not shown again", file=sys.stderr)
        elif args.action == "revoke":
            row = auth.revoke_key(session, args.id)
            print(json.dumps({"id": row.id, "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}))
        else:
            for row in auth.list_keys(session):
                print(json.dumps({"id": row.id, "name": row.name, "prefix": row.prefix,
                                  "scope": row.scope.value, "tenant": row.tenant,
                                  "log_prompts": row.log_prompts, "rate_limit_rpm": row.rate_limit_rpm,
                                  "revoked": row.revoked_at is not None}))


def cmd_adapters(settings: Settings, args: argparse.Namespace) -> None:
    sessions = sessions_for(settings)
    with sessions.begin() as session:
        if args.action not in ("add", "list"):
            rollout_cli.print_json(rollout_cli.adapters(session, settings, args))
        elif args.action == "add":
            # approved without the gate, but never without the integrity checks against the base
            base = integrity.base_model_config(settings.base_model or str(build_demo_model(settings)))
            limits = integrity.Limits(settings.engine.max_lora_rank, base_config=base)
            version = registry.register(
                session, Path(args.path), settings.adapter_store, settings.base_model or DEMO_MODEL_NAME,
                prefix=args.prefix, limits=limits, state=AdapterState.approved, tenant=args.tenant)
            if args.alias:
                registry.set_champion(session, args.alias, version.name, actor=rollout_cli.actor(),
                                      reason="adapters add --approve --alias", tenant=args.tenant)
            print(json.dumps({"name": version.name, "state": version.state.value, "path": version.path}))
        else:
            for v in registry.list_versions(session):
                print(json.dumps({"name": v.name, "kind": v.kind, "state": v.state.value, "path": v.path}))


def cmd_aliases(settings: Settings, args: argparse.Namespace) -> None:
    with sessions_for(settings).begin() as session:
        registry.set_champion(session, args.alias, args.version, actor=rollout_cli.actor(), reason="aliases set",
                              tenant=args.tenant)
    print(json.dumps({"alias": args.alias, "champion": args.version}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraloop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (and an embedded vLLM)")
    serve.add_argument("--dev", action="store_true",
                       help="development mode: no API keys (sets LORALOOP_ENVIRONMENT/AUTH)")
    serve.add_argument("--access-log", action="store_true")
    sub.add_parser("demo-model", help="build the demo base model")
    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=[s.value for s in Scope], default="app")
    create.add_argument("--tenant", default="default")
    create.add_argument("--no-log-prompts", dest="log_prompts", action="store_false",
                        help="store no prompts or answers of this key's calls (they never train)")
    create.add_argument("--rate-limit", type=int, metavar="RPM",
                        help="requests per minute for this key (0: unlimited; default: LORALOOP_RATE_LIMIT_RPM)")
    keys_sub.add_parser("revoke").add_argument("id", type=int)
    keys_sub.add_parser("list")
    adapters = sub.add_parser("adapters", help="adapter versions")
    ad_sub = adapters.add_subparsers(dest="action", required=True)
    add = ad_sub.add_parser("add", help="publish a PEFT LoRA folder to the store and register it")
    add.add_argument("path")
    add.add_argument("--prefix", default="adapter", help="version names are PREFIX-<hash>")
    add.add_argument("--approve", action="store_true",
                     help="operator approval: servable at once, WITHOUT the eval gate (for adapters "
                          "evaluated elsewhere); default: the gate decides")
    add.add_argument("--alias", help="also make it this alias's champion (if approved)")
    add.add_argument("--tenant", help="only this tenant's keys may see and call it (default: every tenant)")
    ad_sub.add_parser("list")
    rollout_cli.add_adapter_commands(ad_sub)
    rollout_cli.add_experiment_commands(sub)
    rollout_cli.add_segment_commands(sub)
    aliases = sub.add_parser("aliases", help="aliases")
    al_sub = aliases.add_subparsers(dest="action", required=True)
    set_ = al_sub.add_parser("set")
    set_.add_argument("alias")
    set_.add_argument("version")
    set_.add_argument("--tenant", help="a new alias belongs to this tenant only (default: shared)")
    sub.add_parser("data", help="export|report|purge training data from feedback (see: loraloop data -h)")
    sub.add_parser("train", help="train a candidate: dpo, kto, sft, reward model, grpo (see: loraloop train -h)")
    sub.add_parser("scheduler", help="scheduled training (see: loraloop scheduler -h)")
    sub.add_parser("demo", help="the whole loop with simulated users, and a report (see: loraloop demo -h)")
    db = sub.add_parser("db", help="database")
    db.add_argument("action", choices=["upgrade"])
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    trainer_commands = {"data": "trainer.data", "train": "trainer.train", "scheduler": "trainer.scheduler",
                        "demo": "demo.run"}
    if argv[:2] == ["adapters", "compare"]:  # generates through the gateway, then records: trainer side
        os.execv(sys.executable, [sys.executable, "-m", "trainer.compare", *argv[2:]])
    if argv[:2] == ["adapters", "add"] and "--approve" not in argv:
        # Without an operator's explicit approval, an adapter goes through the eval gate,
        # which runs the model: the trainer's job.
        os.execv(sys.executable, [sys.executable, "-m", "trainer.admit", *argv[2:]])
    if argv[:1] and argv[0] in trainer_commands:
        # Training data and training are the trainer's business: hand over to it (the gateway
        # never imports the trainer, nor torch).
        module = trainer_commands[argv[0]]
        os.execv(sys.executable, [sys.executable, "-m", module, *argv[1:]])
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every upstream request at INFO: a log line per completion, on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if getattr(args, "dev", False):
        os.environ.setdefault("LORALOOP_ENVIRONMENT", "development")
        os.environ.setdefault("LORALOOP_AUTH", "none")
    try:
        settings = Settings()
        if args.command == "serve":
            cmd_serve(settings, args)
        elif args.command == "demo-model":
            print(build_demo_model(settings))
        elif args.command == "keys":
            cmd_keys(settings, args)
        elif args.command == "adapters":
            cmd_adapters(settings, args)
        elif args.command == "aliases":
            cmd_aliases(settings, args)
        elif args.command == "experiments":
            with sessions_for(settings).begin() as session:
                rollout_cli.print_json(rollout_cli.experiments_cmd(session, settings, args))
        elif args.command == "segments":
            with sessions_for(settings).begin() as session:
                rollout_cli.print_json(rollout_cli.segments_cmd(session, settings, args))
        elif args.command == "db":
            sessions_for(settings)
    except LoraloopError as exc:
        sys.exit(f"error: {exc.message}")


if __name__ == "__main__":
    main()
