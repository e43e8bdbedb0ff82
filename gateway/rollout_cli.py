"""`loraloop adapters promote|rollback|pause|resume|show`, `loraloop experiments ...` and
`loraloop segments list|show|users|create|delete`:
the operator's side of rollout, on the database directly (the gateways pick changes up
within LORALOOP_REGISTRY_REFRESH_S). Actions are audited as `cli:<user>`."""

from __future__ import annotations

import argparse
import getpass
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import experiments, registry, segment_assignments, segments
from adapters.errors import AdapterNotFound, NotFound
from adapters.schema import AdapterEvent, AdapterVersion, Experiment, utcnow
from gateway.admin.router import event_json, experiment_json, version_json
from gateway.settings import Settings

ALIAS_ACTIONS = ("promote", "rollback", "pause", "resume")


def add_adapter_commands(ad_sub: argparse._SubParsersAction) -> None:
    ad_sub.add_parser("show", help="a version's state, gate report, human verdicts, history").add_argument("name")
    ad_sub.add_parser("compare", help="judge two versions blind on held-out prompts (see: adapters compare -h)")
    for action in ALIAS_ACTIONS:
        cmd = ad_sub.add_parser(action, help=f"{action} the experiment on ALIAS"
                                + (" (or, with none, restore its previous champion)" if action == "rollback" else ""))
        cmd.add_argument("alias")
        cmd.add_argument("--reason", default="")


def add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("experiments", help="A/B experiments: canary vs champion on an alias")
    exp_sub = exp.add_subparsers(dest="action", required=True)
    start = exp_sub.add_parser("start", help="send a share of ALIAS's users to VERSION")
    start.add_argument("alias")
    start.add_argument("version")
    start.add_argument("--share", type=float, help="canary share of users (LORALOOP_EXPERIMENTS__DEFAULT_SHARE)")
    start.add_argument("--max-hours", type=float, help="roll back if undecided this long")
    start.add_argument("--reason", default="")
    exp_sub.add_parser("list")
    exp_sub.add_parser("show", help="the alias's latest experiment and its numbers").add_argument("alias")


def add_segment_commands(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("segments", help="segments of aliases: groups of users served their own adapter")
    seg_sub = seg.add_subparsers(dest="action", required=True)
    seg_sub.add_parser("list", help="segments' aliases, and declared labels without one").add_argument(
        "alias", nargs="?", help="only this alias's")
    seg_sub.add_parser("show", help="a segment's alias (ALIAS@SEGMENT): what it serves, traffic, history") \
        .add_argument("alias")
    users = seg_sub.add_parser("users", help="a learned segment's users (ALIAS@SEGMENT), by id")
    users.add_argument("alias")
    users.add_argument("--limit", type=int, default=100)
    users.add_argument("--after", default="", help="ids after this one (the last of the previous page)")
    create = seg_sub.add_parser("create", help="give SEGMENT of ALIAS its own alias (trained on its users only)")
    create.add_argument("alias")
    create.add_argument("segment")
    create.add_argument("--reason", default="")
    delete = seg_sub.add_parser("delete", help="stop serving a segment (ALIAS@SEGMENT) its own adapters: its users "
                                "get the alias's champion, its feedback trains the alias again")
    delete.add_argument("alias")
    delete.add_argument("--reason", default="")


def segments_cmd(session: Session, settings: Settings, args: argparse.Namespace) -> object:
    if args.action == "show":
        return segments.describe(session, args.alias)
    if args.action == "delete":
        row = segments.delete(session, args.alias, actor=actor(), reason=args.reason)
        return {"alias": row.name, "deleted_at": row.deleted_at.isoformat() if row.deleted_at else None}
    if args.action == "users":
        return segment_assignments.members(session, args.alias, min(max(args.limit, 1), 10_000), args.after)
    if args.action == "create":
        row = segments.create(session, args.alias, args.segment, actor=actor(), reason=args.reason,
                              max_segments=settings.max_segments)
        return {"alias": row.name, "parent": row.parent, "segment": row.segment}
    return segments.overview(session, args.alias)


def actor() -> str:
    return f"cli:{getpass.getuser()}"


def adapters(session: Session, settings: Settings, args: argparse.Namespace) -> object:
    if args.action == "show":
        version = session.get(AdapterVersion, args.name)
        if version is None:
            raise AdapterNotFound(f"adapter version {args.name!r} does not exist")
        events = session.scalars(select(AdapterEvent).where(AdapterEvent.version == args.name)
                                 .order_by(AdapterEvent.id))
        return {**version_json(version), "eval_report": version.eval_report,
                "human_eval": registry.human_verdicts(session, args.name),
                "history": [event_json(ev) for ev in events]}
    reason = args.reason or f"operator: {args.action}"
    if args.action == "rollback":
        serving = experiments.rollback(session, args.alias, actor=actor(), reason=reason)
        return {"alias": args.alias, "champion": serving}
    act = {"promote": experiments.promote, "pause": experiments.pause, "resume": experiments.resume}[args.action]
    return experiment_json(act(session, args.alias, actor=actor(), reason=reason))


def experiments_cmd(session: Session, settings: Settings, args: argparse.Namespace) -> object:
    if args.action == "start":
        cfg = settings.experiments
        return experiment_json(experiments.start(session, args.alias, args.version, args.share or cfg.default_share,
                                                 args.max_hours or cfg.default_max_hours, actor=actor(),
                                                 reason=args.reason))
    if args.action == "list":
        return [experiment_json(e) for e in session.scalars(select(Experiment).order_by(Experiment.id.desc()))]
    latest = session.scalars(select(Experiment).where(Experiment.alias == args.alias)
                             .order_by(Experiment.id.desc())).first()
    if latest is None:
        raise NotFound(f"alias {args.alias!r} has had no experiment")
    shown = experiment_json(latest)
    if latest.status in experiments.OPEN:  # the numbers as of now, not the last judgement
        numbers = experiments.arm_numbers(session, latest)
        _, _, shown["stats"] = experiments.judge(latest, numbers, settings.experiments.policy(), utcnow())
    return shown


def print_json(result: object) -> None:
    for item in result if isinstance(result, list) else [result]:
        print(json.dumps(item, default=str))
