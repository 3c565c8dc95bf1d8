"""`alignloop` command line. Thin on purpose: it parses and validates the config before
importing torch or Ray, so --help, --dry-run and config errors answer at once."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from alignloop.loop.config import ConfigError, load_config, to_yaml
from alignloop.loop.exits import Exit
from alignloop.records.secrets import mask_secrets


def main(argv: list[str] | None = None) -> int:
    """`alignloop`; a crash (a bug) prints its traceback masked, like every other text on its
    way to the user: an exception's message may hold a key. `round --json` has printed its
    line by then."""
    try:
        return command(argv)
    except Exception:  # noqa: BLE001 - any bug; KeyboardInterrupt and SystemExit pass
        print(mask_secrets(traceback.format_exc()), end="", file=sys.stderr, flush=True)
        return Exit.CRASH


def complain(error: object) -> None:
    """An error for the user, on stderr, masked: a message may quote a value holding a key."""
    print(mask_secrets(f"alignloop: {error}"), file=sys.stderr)


def command(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="alignloop", description="Online alignment rounds: sample, judge, learn, broadcast."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) an online alignment run")
    run.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set learner.lr=1e-4 (repeatable)",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in its run directory")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start the run over: remove what alignloop wrote in the run directory (only an alignloop run directory; other files stay)",
    )
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")

    train_p = sub.add_parser("train", help="train offline on judged data (CUT triplets or alignloop records)")
    train_p.add_argument("config", help="YAML config: model, learner (objective) and seed are used")
    train_p.add_argument("--data", required=True, help="CUT-format JSONL, alignloop records JSONL, or a run directory")
    train_p.add_argument("--out", help="adapter directory to write (default: <run_dir>/offline-adapter)")
    train_p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    rnd = sub.add_parser("round", help="run one nightly round of a series: new prompts, gate, promote")
    rnd.add_argument("config", help="YAML config with a `round:` section, e.g. configs/nightly.yaml")
    rnd.add_argument(
        "--round",
        dest="round_id",
        default=None,
        help="round id (default: today's UTC date, e.g. 2026-12-01); rerunning an id resumes or reports it",
    )
    rnd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rnd.add_argument(
        "--fresh-optimizer", action="store_true", help="start the optimizer afresh (round.fresh_optimizer)"
    )
    rnd.add_argument("--json", action="store_true", help="print a one-line JSON summary at the end (for schedulers)")
    rnd.add_argument(
        "--rollback",
        metavar="ROUND",
        help="promote an earlier promoted round again: round.serve's endpoints, then `current` (nothing is trained)",
    )

    report = sub.add_parser("report", help="an HTML page with plots of a run directory or a series")
    report.add_argument("run_dir")
    report.add_argument("--out", help="where report.html and the PNG plots go (default: RUN_DIR/report)")

    status = sub.add_parser("status", help="the metrics table of a run directory, or the rounds of a series")
    status.add_argument("run_dir")

    review = sub.add_parser("review", help="the review page for people's judgments (judge.type human), or --import")
    review.add_argument("run_dir", help="a run directory, or a series directory (every round's queues)")
    review.add_argument("--port", type=int, default=0, help="the port on 127.0.0.1 (default: a free one)")
    review.add_argument("--import", dest="import_file", metavar="FILE.jsonl", help="save the judgments of a file")
    review.add_argument("--reviewer", help="--import: the reviewer of lines that name none")

    args = parser.parse_args(argv)
    try:
        if args.command == "review":
            return review_command(args)
        if args.command == "status":  # a damaged run or series file is a ConfigError naming it
            return show_status(Path(args.run_dir))
        if args.command == "report":
            from alignloop.loop.report import write_report

            print(f"report: {write_report(Path(args.run_dir), args.out)}")
            return Exit.OK
        if args.command == "round" and args.fresh_optimizer:
            args.overrides.append("round.fresh_optimizer=true")
        cfg = load_config(args.config, args.overrides)
        if args.command == "train":
            return train_offline(cfg, args.data, args.out)
        if args.command == "round":
            # `--round ""` is a bad id, refused by the series, not today's date
            today = time.strftime("%Y-%m-%d", time.gmtime())
            if args.rollback is not None:
                return run_round(cfg, args.rollback, args.json, rollback=True)
            return run_round(cfg, today if args.round_id is None else args.round_id, args.json)
        if args.resume and args.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one")
        if args.dry_run:
            print(to_yaml(cfg), end="")
            return Exit.OK
    except ConfigError as e:
        complain(e)
        if args.command == "round" and args.json:  # a scheduler reads this line, whatever happened
            print(json.dumps({"series": None, "code": Exit.CONFIG, "round": args.round_id}))
        return Exit.CONFIG

    from alignloop.loop.api import run as run_cycle  # running imports torch and Ray

    code = guarded(lambda: run_cycle(cfg, resume=args.resume, overwrite=args.overwrite))
    if code == 0:
        print(f"done: {cfg.resolved_run_dir} (alignloop status {cfg.resolved_run_dir})")
    return code


def guarded(work) -> int:
    """Run `work`, turning the errors a user can act on into a message and an exit code."""
    from alignloop.loop.data import DataError
    from alignloop.loop.lock import Locked
    from alignloop.loop.review_queue import WaitingForJudgments
    from alignloop.loop.roles.protocols import ActorLost
    from alignloop.loop.steps import JudgeErrorRate
    from alignloop.policies.adapter import AdapterMismatch
    from alignloop.policies.model import ModelNotFound

    try:
        work()
    except (ConfigError, DataError, ModelNotFound) as e:
        complain(e)
        return Exit.CONFIG
    except JudgeErrorRate as e:  # the run stopped itself on purpose; everything finished is saved
        complain(f"stopped: {e}")
        return Exit.JUDGE_ERRORS
    except Locked as e:
        complain(e)
        return Exit.LOCKED
    except ActorLost as e:  # killed, out of memory, or its node removed; nothing finished is lost
        complain(f"stopped: {e}")
        return Exit.ACTOR_LOST
    except AdapterMismatch as e:  # a sampler (an inference server) serves other weights than published
        complain(f"stopped: {e}; every finished step is saved: fix the sampler, then rerun with --resume")
        return Exit.ACTOR_LOST
    except WaitingForJudgments as e:  # on purpose: people judge, then the same command goes on
        complain(f"waiting: {e}")
        return Exit.WAITING
    return Exit.OK


def review_command(args) -> int:
    """Serve the review page until Ctrl-C, or import a file of judgments (a bad line: exit 2)."""
    from alignloop.loop.review import import_judgments, serve

    if args.import_file is None:
        serve(Path(args.run_dir), args.port)
        return Exit.OK
    saved, skipped = import_judgments(Path(args.run_dir), Path(args.import_file), args.reviewer)
    print(f"imported {saved} judgment(s) from {args.import_file}" + (f"; {skipped} already saved" if skipped else ""))
    print("rerun the run (--resume) or the round to collect them")
    return Exit.OK


def run_round(cfg, round_id: str, as_json: bool, rollback: bool = False) -> int:
    """The round (or with `rollback` its promotion again), its message, and with `as_json` its
    one JSON line, printed whatever happened (a crash's line says code 1 before the traceback)."""
    from alignloop.loop.api import run_round as run_one_round
    from alignloop.loop.series import rollback as rollback_round

    work = rollback_round if rollback else run_one_round
    result: list = []
    code: int = Exit.CRASH
    try:
        code = guarded(lambda: result.append(work(cfg, round_id)))
        if result:
            code = result[0].code
            print(mask_secrets(result[0].message), file=sys.stderr if code else sys.stdout)
    finally:
        if as_json:
            summary = result[0].summary() if result else {"code": code, "round": round_id}
            print(json.dumps({"series": str(cfg.series_dir), **summary}), flush=True)
    return code


def train_offline(cfg, data: str, out: str | None) -> int:
    from alignloop.loop.data import DataError
    from alignloop.loop.offline import train
    from alignloop.policies.model import ModelNotFound

    try:
        result = train(cfg, data, out)
    except (DataError, ModelNotFound) as e:
        complain(e)
        return Exit.CONFIG
    print(json.dumps(result, indent=2))
    print(f"adapter: {result['adapter']} (start a run from it with --set model.adapter={result['adapter']})")
    return Exit.OK


COLUMNS = [
    ("iter", "iteration", "d"),
    ("pass", "pass_rate", ".3f"),
    ("score", "mean_score", ".3f"),
    ("loss", "loss", ".3f"),
    ("train", "n_train", "d"),
    ("errors", "n_judge_errors", "d"),
    ("tokens", "tokens_sampled", "d"),
    ("sample_s", "sample_s", ".1f"),
    ("judge_s", "judge_s", ".1f"),
    ("learn_s", "learn_s", ".1f"),
    ("adapter", "adapter_version", "d"),
]


def show_status(run_dir: Path) -> int:
    if (run_dir / "series.json").exists():
        return show_series(run_dir)
    from alignloop.loop.store import RunStore

    store = RunStore(run_dir)
    state = store.load_state()  # a damaged file is a ConfigError: reported, exit 2
    if state is None:
        print(f"alignloop: {run_dir} is not a run directory (no state.json)", file=sys.stderr)
        return Exit.CONFIG
    from alignloop.loop.report import checked_metrics

    rows = checked_metrics(store, [key for _, key, _ in COLUMNS])  # wrong types: a ConfigError naming the line
    print(
        f"{run_dir}: last finished step: iteration {state.iteration} {state.step}; "
        f"adapter v{state.adapter_version}; {len(rows)} iteration(s) complete"
    )
    print(format_table(rows))
    return Exit.OK


def format_table(rows: list[dict], columns=COLUMNS) -> str:
    def cell(row, key, spec):
        v = row.get(key)
        if isinstance(v, float) and spec == "d":  # a count saved as 3.0 (or an odd 2.5, inf) still shows
            return format(int(v), "d") if v.is_integer() else format(v, ".3f")
        return "-" if v is None else format(v, spec)

    table = [[h for h, _, _ in columns]] + [[cell(r, k, s) for _, k, s in columns] for r in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in table)


SERIES_COLUMNS = [
    ("round", "id", "s"),
    ("status", "status", "s"),
    ("prompts", "n_prompts", "d"),
    ("iters", "iterations", "d"),
    ("train_pass", "train_pass", ".3f"),
    ("eval_before", "before", ".3f"),
    ("eval_after", "after", ".3f"),
    ("promoted", "promoted", "s"),
    ("adapter", "adapter_version", "d"),
]


def show_series(root: Path) -> int:
    from alignloop.loop.series import Series

    series = Series(root)
    try:
        rounds = series.rounds()
    except ConfigError as e:
        complain(e)
        return Exit.CONFIG
    rows = [
        {
            "id": r.id,
            "status": r.status,
            "n_prompts": r.n_prompts,
            "iterations": r.iterations,
            "train_pass": r.train.get("pass_rate"),
            "before": (r.eval_before or {}).get("pass_rate"),
            "after": (r.eval_after or {}).get("pass_rate"),
            "adapter_version": r.adapter_version,
            "promoted": {"promoted": "yes", "rejected": "no"}.get(r.status, "-"),
        }
        for r in rounds
    ]
    promoted = series.promoted()
    now = (
        f"current: {series.current} -> v{promoted.adapter_version} of round {promoted.id}"
        if promoted
        else "current: none promoted yet"
    )
    print(f"{root}: series of {len(rounds)} round(s); {now}")
    print(format_table(rows, SERIES_COLUMNS))
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
