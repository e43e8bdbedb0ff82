"""`loraloop demo`: serve, train, judge and roll out, driven by simulated users, and report.

    loraloop demo [--persona formal] [--judge module:function] [--minutes 15] [--scenario taste-change]

Processes, all real: `loraloop serve --dev` (gateway + vLLM on the demo model, with the
experiment judge and auto-start), `loraloop scheduler` (trains when enough new ratings
arrived; the gate decides), and this one: the simulated users and the progress line. The
settings below only make the loop turn in minutes instead of days (small rating
thresholds, a large canary share); the code paths are the production ones.

The run ends when a promoted champion reaches `--target` on held-out prompts (measured on
`--heldout-n` answers), after `--minutes`, or (taste-change) once the rollback happened.
The report (summary.json, thumbs-up.png) goes to `--out`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from adapters.settings import DEMO_MODEL_NAME
from demo import report
from demo.personas import AXES, BUILT_IN, persona
from demo.population import IDEAL, REALISTIC, Habits, Mix, Population, heldout_rates, parse_mix, segment_of

OPPOSITE = {"formal": "casual", "casual": "formal", "short": "long", "long": "short", "question": "no-question",
            "no-question": "question", "name": "no-name", "no-name": "name"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraloop demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--persona", default="formal", help=f"built in: {', '.join(BUILT_IN)}; any of "
                   f"{', '.join(AXES)} joined with +")
    p.add_argument("--judge", help="module:function, (prompt, response) -> bool: a taste the system never saw")
    p.add_argument("--mix", help="a population of tastes, e.g. formal:0.6,casual:0.4 (each end user keeps one)")
    p.add_argument("--regime", choices=["ideal", "realistic"], default="ideal",
                   help="how users rate: ideal (every answer, never wrong) or realistic (5%% of liked and "
                        "15%% of disliked answers get a thumb, 20%% of thumbs flipped); the three options "
                        "below override either")
    p.add_argument("--rate-liked", type=float, help="share of liked answers that get a thumb")
    p.add_argument("--rate-disliked", type=float, help="share of disliked answers that get a thumb")
    p.add_argument("--noise", type=float, help="share of thumbs flipped")
    p.add_argument("--declare-segments", action="store_true",
                   help="with --mix: the app declares each user's persona as their segment (X-Loraloop-Segment), "
                        "so each persona gets an adapter of its own; the target is then every persona's")
    p.add_argument("--scenario", choices=["learn", "taste-change"], default="learn",
                   help="taste-change: the users' taste flips when the first experiment starts (a rollback)")
    p.add_argument("--minutes", type=float, default=15, help="wall-time limit")
    p.add_argument("--target", type=float, default=0.85, help="held-out thumbs-up rate that ends the run")
    p.add_argument("--generations", type=int, default=0, help="stop after this many promotions (0: no limit)")
    p.add_argument("--heldout-n", type=int, default=300, help="held-out answers rated per measurement")
    p.add_argument("--users", type=int, default=40, help="end users (ids)")
    p.add_argument("--concurrency", type=int, default=6, help="users talking at once")
    p.add_argument("--regenerate", type=float, default=0.0,
                   help="chance a user asks again after a disliked answer (regeneration pairs for DPO)")
    p.add_argument("--method", default="auto", help="training method of the scheduled runs (loraloop train); "
                   "auto: chosen from the data at each run")
    p.add_argument("--steps", type=int, default=120, help="steps per training run")
    p.add_argument("--train-every", type=int, default=200, help="new ratings that trigger a training run")
    p.add_argument("--min-ratings", type=int, default=40, help="ratings per arm before the A/B test decides")
    p.add_argument("--share", type=float, default=0.5, help="canary share of users")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--data-dir", type=Path, help="default: a new folder under LORALOOP_DATA_DIR/demo")
    p.add_argument("--out", type=Path, help="report folder; default: the data dir's report/")
    p.add_argument("--seed", type=int, default=0)
    return p


def habits(args: argparse.Namespace) -> Habits:
    preset = REALISTIC if args.regime == "realistic" else IDEAL
    return Habits(preset.liked if args.rate_liked is None else args.rate_liked,
                  preset.disliked if args.rate_disliked is None else args.rate_disliked,
                  preset.noise if args.noise is None else args.noise)


def measure(url: str, model: str, mix: Mix, n: int) -> dict:
    """The held-out rate by the users' true taste, for the whole mix and per persona."""
    rates = heldout_rates(url, model, mix, n)
    overall = report.rate(*rates.pop("all"))
    if len(mix) > 1:
        overall["per_persona"] = {name: report.rate(*r) for name, r in rates.items()}
    return overall


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    mix = parse_mix(args.mix) if args.mix else [(persona(args.judge or args.persona), 1.0)]
    if args.scenario == "taste-change" and (len(mix) > 1 or args.judge or
                                            any(a not in OPPOSITE for a in args.persona.split("+"))):
        raise SystemExit("loraloop demo: --scenario taste-change needs one built-in persona of style axes "
                         f"({', '.join(OPPOSITE)}, joined with +)")
    if args.declare_segments and len(mix) < 2:
        raise SystemExit("loraloop demo: --declare-segments needs a --mix of at least two personas")
    rating = habits(args)
    home = Path(os.environ.get("LORALOOP_DATA_DIR", Path.home() / ".local/share/loraloop"))
    data = args.data_dir or home / "demo" / time.strftime("%Y%m%d-%H%M%S")
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "models").exists() and data != home:  # the demo model is built once, shared
        (home / "models").mkdir(parents=True, exist_ok=True)
        (data / "models").symlink_to(home / "models")
    (data / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_PORT": str(args.port),
           "LORALOOP_EXPERIMENTS__CHECK_INTERVAL_S": "2", "LORALOOP_EXPERIMENTS__MIN_RATINGS": str(args.min_ratings),
           "LORALOOP_EXPERIMENTS__DEFAULT_SHARE": str(args.share),
           "LORALOOP_EXPERIMENTS__DEFAULT_MAX_HOURS": str(max(args.minutes, 5) / 60 / 2),
           "LORALOOP_TRAIN_INTERVAL_MINUTES": "0.25", "LORALOOP_TRAIN_MIN_NEW_RATINGS": str(args.train_every),
           "LORALOOP_TRAIN_METHOD": args.method, "LORALOOP_TRAIN_STEPS": str(args.steps),
           # a declared segment gets its own alias after its first few thumbs, not 50
           "LORALOOP_SEGMENT_MIN_RATINGS": "20"}
    url = f"http://127.0.0.1:{args.port}"
    children: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Serving runs at a lower CPU priority: vLLM's CPU engine keeps its cores busy, and on a
        # small machine a training run would otherwise crawl. Users are served throughout,
        # slower while a run trains (in a fleet, training has machines of its own).
        children.append(_spawn(["serve", "--dev"], env, data / "logs" / "gateway.log", nice=10))
        _wait_ready(url, children[0], timeout=900)
        print(f"gateway and vLLM up at {url}; measuring the base on {args.heldout_n} held-out prompts", flush=True)
        base = measure(url, DEMO_MODEL_NAME, mix, args.heldout_n)
        print(f"base model: {base['rate']:.2f} thumbs-up on held-out prompts {base['ci95']}", flush=True)
        # One compute thread for training: beside vLLM's busy cores, torch's OpenMP threads
        # wait on each other at every barrier (measured: 7 steps/s alone, 0.06 beside vLLM).
        children.append(_spawn(["scheduler"], env | {"OMP_NUM_THREADS": "1"}, data / "logs" / "scheduler.log"))
        summary = _loop(args, url, mix, rating, base)
        summary["candidates"] = _candidates(data)
    finally:
        for child in reversed(children):  # scheduler first: a run killed midway is cleaned up next time
            child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
    out = args.out or data / "report"
    paths = report.write(out, summary, summary.pop("_rated"), summary["events"])
    print(f"report: {paths[0]} and {paths[1]}")
    return summary


def _loop(args: argparse.Namespace, url: str, mix: Mix, rating: Habits, base: dict) -> dict:
    users = Population(url, mix, users=args.users, concurrency=args.concurrency, seed=args.seed,
                       regenerate=args.regenerate, habits=rating, declare_segments=args.declare_segments)
    # with declared segments, each persona's own champion, measured on its own users' share
    segment_best = {segment_of(taste): base["per_persona"][taste.name] for taste, _ in mix} \
        if args.declare_segments else {}
    users.start()
    admin = httpx.Client(base_url=url, timeout=30)
    events: list[dict] = []
    seen: dict[int, str] = {}
    generations = [{"version": "base", "heldout": base, "promoted_at": 0.0}]
    champion_heldout, reached_at = base, None
    learned: dict[str, dict] = {}  # learned segments (a mix, undeclared): their members by true taste
    deadline = time.monotonic() + args.minutes * 60
    interrupted = False
    try:
        while time.monotonic() < deadline:
            time.sleep(5)
            now = time.monotonic() - users.started
            experiments = admin.get("/admin/experiments").json()["data"]
            for e in reversed(experiments):  # oldest first
                if seen.get(e["id"]) == e["status"]:
                    continue
                seen[e["id"]] = e["status"]
                action = {"running": "started", "promoted": "promoted", "rolled_back": "rolled_back"}.get(e["status"])
                if action is None:
                    continue
                events.append({"at": round(now, 1), "action": action, "version": e["canary"], "alias": e["alias"],
                               "reason": e["reason"] or ""})
                print(f"[{now / 60:5.1f} min] experiment {e['id']} on {e['alias']}: {e['canary']} {action}"
                      f"{': ' + e['reason'] if e['reason'] else ''}", flush=True)
                if action == "started" and args.scenario == "taste-change" and \
                        not any(ev["action"] == "taste_changed" for ev in events):
                    flipped = "+".join(OPPOSITE[a] for a in (args.persona.split("+")))
                    users.switch(persona(flipped))
                    events.append({"at": round(now, 1), "action": "taste_changed", "version": flipped,
                                   "reason": f"users now like {flipped}; the system is not told"})
                    print(f"[{now / 60:5.1f} min] the users' taste changes to {flipped}", flush=True)
                if action == "promoted" and "@" in e["alias"]:  # a segment's own champion
                    segment = e["alias"].partition("@")[2]
                    if segment in learned:  # measured on the taste most of its users have
                        learned[segment] = _members(admin, e["alias"], users)
                        taste = persona(learned[segment]["majority"])
                        share = learned[segment]["members"] / args.users
                    else:
                        [(taste, share)] = [(t, sh) for t, sh in users.mix if segment_of(t) == segment]
                    heldout = measure(url, e["canary"], [(taste, 1.0)], max(round(args.heldout_n * share), 1))
                    segment_best[segment] = heldout
                    generations.append({"version": e["canary"], "alias": e["alias"], "heldout": heldout,
                                        "promoted_at": round(now, 1)})
                    print(f"[{now / 60:5.1f} min] {e['alias']} generation ({e['canary']}): {heldout['rate']:.2f} "
                          f"on its users' held-out prompts {heldout['ci95']}", flush=True)
                    covered = {g["majority"] for g in learned.values()} >= {t.name for t, _ in mix} \
                        if learned else True  # every taste has a learned segment of its own
                    if covered and all(h["rate"] >= args.target for h in segment_best.values()):
                        reached_at = now
                elif action == "promoted":
                    champion_heldout = measure(url, e["canary"], users.mix, args.heldout_n)
                    generations.append({"version": e["canary"], "heldout": champion_heldout,
                                        "promoted_at": round(now, 1)})
                    print(f"[{now / 60:5.1f} min] generation {len(generations) - 1} ({e['canary']}): "
                          f"{champion_heldout['rate']:.2f} on held-out prompts {champion_heldout['ci95']}",
                          flush=True)
                    if champion_heldout["rate"] >= args.target and champion_heldout["rated"] >= args.heldout_n:
                        reached_at = now
            if len(mix) > 1 and not args.declare_segments and not learned:
                learned = _learned(admin, users)
                if learned:
                    ratings = sum(r.thumb is not None for r in users.rated)
                    segment_best = {label: base["per_persona"][g["majority"]] for label, g in learned.items()}
                    events.append({"at": round(now, 1), "action": "segments_learned", "version": "",
                                   "reason": f"after {ratings} ratings: " + "; ".join(
                                       f"{label}: {g['members']} users, {g['majority']} {g['share']:.2f}"
                                       for label, g in learned.items())})
                    print(f"[{now / 60:5.1f} min] {events[-1]['reason']}", flush=True)
            _progress(now, users, experiments)
            promoted = len(generations) - 1
            if reached_at is not None or (args.generations and promoted >= args.generations) or \
                    (args.scenario == "taste-change" and
                                          any(ev["action"] == "rolled_back" for ev in events)):
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        users.stop()
    if learned:
        learned = _learned(admin, users)
    return {
        "persona": args.mix or args.judge or args.persona, "scenario": args.scenario, "method": args.method,
        "habits": {"rate_liked": rating.liked, "rate_disliked": rating.disliked, "noise": rating.noise},
        "target": args.target, "minutes": round((time.monotonic() - users.started) / 60, 2),
        "requests": users.requests, "failed_requests": len(users.failures), "failures": users.failures[:20],
        "answers": len(users.rated), "ratings": sum(r.thumb is not None for r in users.rated),
        "base_heldout": base, "champion_heldout": champion_heldout,
        "reached_target": reached_at is not None, "interrupted": interrupted,
        "minutes_to_target": round(reached_at / 60, 2) if reached_at is not None else None,
        "generations": generations, "live": report.live_rates(users.rated), "events": events,
        **({"segment_champions": segment_best} if segment_best else {}),
        **({"learned_segments": learned} if learned else {}),
        "_rated": users.rated,
    }


def _learned(admin: httpx.Client, users: Population) -> dict[str, dict]:
    """The learned segments of alias "default" (none yet: {}), each with its members' true tastes."""
    found = [s for s in admin.get("/admin/segments", params={"alias": "default"}).json()["data"] if s.get("learned")]
    return {s["segment"]: _members(admin, s["alias"], users) for s in found}


def _members(admin: httpx.Client, alias: str, users: Population) -> dict:
    """A learned segment's users counted by their true persona: the majority, its share, and
    how many sit with users who want something else."""
    ids = [u["user"] for u in admin.get(f"/admin/segments/{alias}/users", params={"limit": 10_000}).json()["data"]]
    tastes = Counter(users.persona_of(int(u.removeprefix("user-"))).name for u in ids if u.startswith("user-"))
    majority, most = tastes.most_common(1)[0] if tastes else ("", 0)
    return {"alias": alias, "members": len(ids), "by_persona": dict(tastes), "majority": majority,
            "share": most / max(len(ids), 1), "wrong": len(ids) - most}


def _progress(now: float, users: Population, experiments: list[dict]) -> None:
    recent = [r for r in users.rated if r.at > now - 60]
    arms = {}
    for arm in ("champion", "canary"):
        mine = [r for r in recent if r.arm == arm]
        thumbs = [r.thumb for r in mine if r.thumb is not None]
        if mine:
            arms[arm] = (f"{arm} {sum(r.liked for r in mine) / len(mine):.2f} of {len(mine)}"
                         f" (thumbs {sum(thumbs)}/{len(thumbs)})")
    running = [e for e in experiments if e["status"] == "running"]
    phase = "collecting feedback / training"
    if running:
        stats = running[0].get("stats") or {}
        phase = (f"A/B {running[0]['canary']}: log-lambda {stats.get('log_lambda', 0):.1f} of "
                 f"{stats.get('threshold', 0):.1f}")
    print(f"[{now / 60:5.1f} min] {users.requests} requests, {len(users.failures)} failed | liked last 60 s: "
          f"{', '.join(arms.values()) or '-'} | {phase}", flush=True)


def _candidates(data: Path) -> list[dict]:
    """Every version the trainer made, with the gate's verdict and where it ended."""
    from sqlalchemy import select

    from adapters.db import make_engine, make_sessionmaker
    from adapters.schema import AdapterVersion

    engine = make_engine(f"sqlite:///{data / 'loraloop.db'}")
    with make_sessionmaker(engine)() as session:
        rows = [{"version": v.name, "state": v.state.value, **{f"gate_{k}": (v.eval_report or {}).get(k)
                                                                for k in ("passed", "reasons", "metrics")}}
                for v in session.scalars(select(AdapterVersion).order_by(AdapterVersion.created_at))]
    engine.dispose()
    return rows


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM (kill, a CI timeout) unwinds like Ctrl-C: the report of what happened so far
    is written and the children are stopped, not orphaned."""
    raise KeyboardInterrupt


def _spawn(command: list[str], env: dict, log: Path, nice: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *command], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child owns it
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)


def _wait_ready(url: str, gateway: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited ({gateway.returncode}); see its log")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the gateway was not ready in time")


if __name__ == "__main__":
    main()
