"""`alignloop report RUN_DIR|SERIES_DIR [--out DIR]`: a self-contained HTML page (plots
embedded as PNG, also written beside it) of one run or of a nightly series.

A run: pass rate and score, loss parts, KL to the reference and entropy, response lengths,
judge error rate and cost, time per phase, per iteration; the best and worst responses of the
last iteration with their critiques. A series: train and eval pass rate per round, the rounds
table, then the report of its latest round.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from alignloop.loop.config import ConfigError
from alignloop.loop.data import read_records
from alignloop.loop.store import UMASK, RunStore, atomic_write_bytes
from alignloop.records import Judgment, Prompt, Sample
from alignloop.records.secrets import quote

PLOTTED = ("pass_rate", "mean_score", "kl_ref", "entropy", "judge_error_rate", "judge_cost_usd")
LOSS_KEYS = ("loss", "nll", "unlikelihood", "likelihood", "pg_loss", "kl_loss", "dpo_loss", "clip_frac")
PHASES = ("sample_s", "judge_s", "learn_s", "publish_s")


@dataclass
class Plot:
    name: str
    title: str
    png: bytes


def write_report(root: Path, out: Path | None = None) -> Path:
    root = Path(root)
    out = Path(out) if out else root / "report"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory; pass --out a directory for the report")
    if (root / "series.json").exists():
        title, plots, body = series_sections(root)
    elif (root / "state.json").exists():
        title, plots, body = run_sections(root)
    else:
        raise ConfigError(f"{root} is neither a run directory (no state.json) nor a series (no series.json)")
    # The page quotes prompts and responses: it is as private as the run it shows (owner-only
    # unless the run directory was made with shared_files: true, which leaves it group-readable).
    private = not root.stat().st_mode & 0o077
    files = {f"{p.name}.png": p.png for p in plots} | {"report.html": page(title, plots, body).encode("utf-8")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        if private:
            out.chmod(0o700)
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
            (out / name).chmod(0o600 if private else 0o644 & ~UMASK)
    except OSError as e:  # a parent that is a file, no permission, a full disk
        raise ConfigError(f"--out {out}: cannot write the report there ({e.strerror or e})") from None
    return out / "report.html"


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def checked_metrics(store: RunStore, keys) -> list[dict]:
    """The rows of metrics.jsonl, each an object with an `iteration` (a positive integer) and a
    number or null under each of `keys`: what a table or a plot shows. A row that is not is an
    error naming the file, the line and the field (alignloop writes only numbers there)."""
    rows = store.read_metrics()
    path = store.root / "metrics.jsonl"
    lines = (
        [n for n, text in enumerate(path.read_text(errors="replace").splitlines(), 1) if text.strip()] if rows else []
    )
    for row, n in zip(rows, lines):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{n}: not a JSON object but {quote(row, 40)}; {DAMAGED}")
        it = row.get("iteration")
        if not (is_number(it) and isinstance(it, int) and it >= 1):
            got = "no `iteration`" if "iteration" not in row else f"`iteration` is {quote(it, 40)}"
            raise ConfigError(f"{path}:{n}: {got}, not a positive integer; {DAMAGED}")
        for key in keys:
            if row.get(key) is not None and not is_number(row[key]):
                raise ConfigError(f"{path}:{n}: `{key}` is {quote(row[key], 40)}, not a number; {DAMAGED}")
    return rows


DAMAGED = (
    "the file is damaged (alignloop writes one object of numbers per iteration there); restore it or remove that line"
)


def run_sections(root: Path, prefix: str = "") -> tuple[str, list[Plot], str]:
    store = RunStore(root)
    rows = checked_metrics(store, [*PLOTTED, *PHASES, *loss_keys(store.read_metrics())])
    if not rows:
        raise ConfigError(f"{root}: no finished iteration yet (metrics.jsonl is empty); nothing to report")
    it = [m["iteration"] for m in rows]
    plots = [
        line_plot(
            f"{prefix}pass",
            "Pass rate and mean score",
            it,
            {k: col(rows, k) for k in ("pass_rate", "mean_score")},
            "iteration",
        ),
        line_plot(f"{prefix}loss", "Loss parts", it, {k: col(rows, k) for k in loss_keys(rows)}, "iteration"),
        line_plot(
            f"{prefix}kl",
            "KL to the reference and sampling entropy",
            it,
            {k: col(rows, k) for k in ("kl_ref", "entropy")},
            "iteration",
        ),
        length_plot(f"{prefix}lengths", store, it),
        line_plot(
            f"{prefix}judge",
            "Judge error rate and cost (USD)",
            it,
            {k: col(rows, k) for k in ("judge_error_rate", "judge_cost_usd")},
            "iteration",
        ),
        phase_plot(f"{prefix}phases", it, rows),
    ]
    from alignloop.loop.review import agreement_section  # people beside another judge (judge.type human)

    body = examples_section(store, it[-1]) + agreement_section(root)
    return f"alignloop run: {root.name}", plots, body


def series_sections(root: Path) -> tuple[str, list[Plot], str]:
    from alignloop.loop.series import Series

    rounds = [r for r in Series(root).rounds() if r.status != "running"]
    if not rounds:
        raise ConfigError(f"{root}: no finished round yet; nothing to report")
    ids = list(range(1, len(rounds) + 1))
    series_plot = line_plot(
        "rounds",
        "Pass rate per round (train: last iteration; eval: held-out, before and after)",
        ids,
        {
            "train": [r.train.get("pass_rate") for r in rounds],
            "eval before": [(r.eval_before or {}).get("pass_rate") for r in rounds],
            "eval after": [(r.eval_after or {}).get("pass_rate") for r in rounds],
        },
        "round",
        labels=[r.id for r in rounds],
    )
    table = (
        "<table><tr><th>round</th><th>status</th><th>prompts</th><th>train pass</th><th>eval before</th>"
        "<th>eval after</th><th>adapter</th><th>verdict</th></tr>"
    )
    for r in rounds:
        table += (
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    r.id,
                    r.status,
                    r.n_prompts,
                    fmt(r.train.get("pass_rate")),
                    fmt((r.eval_before or {}).get("pass_rate")),
                    fmt((r.eval_after or {}).get("pass_rate")),
                    f"v{r.adapter_version}",
                    r.verdict,
                )
            )
            + "</tr>"
        )
    table += "</table>"
    last = rounds[-1]
    _, plots, body = run_sections(root / "rounds" / last.id, prefix="last-")
    return (
        f"alignloop series: {root.name}",
        [series_plot, *plots],
        f"<h2>Rounds</h2>{table}<h2>Latest round: {html.escape(last.id)}</h2>{body}",
    )


def examples_section(store: RunStore, i: int) -> str:
    """The best and worst responses of iteration i by score (then verdict), with critiques."""
    d = store.iter_dir(i)
    judgments = {j.sample_id: j for j in read_records(d / "judgments.jsonl", Judgment, ConfigError)}
    by_prompt = {p.id: p for p in read_records(d / "prompts.jsonl", Prompt, ConfigError)}
    samples = read_records(d / "samples.jsonl", Sample, ConfigError)
    judged = [(s, judgments[s.id]) for s in samples if s.id in judgments and judgments[s.id].has_signal]

    def rank(pair):
        j = pair[1]
        return (j.score if j.score is not None else 0.0, j.verdict == "positive")

    judged.sort(key=rank)
    best, worst = judged[::-1][:3], judged[:3]

    def cards(pairs):
        out = ""
        for s, j in pairs:
            prompt = by_prompt.get(s.prompt_id)
            out += (
                f"<div class=card><p class=q>{shown(prompt.instruction if prompt else '(prompt not found)')}</p>"
                f"<pre>{shown(s.response)}</pre><p><b>{j.verdict or '-'}</b> · score {fmt(j.score)}"
                f"{' · ' + shown(j.critique) if j.critique else ''}</p></div>"
            )
        return out or "<p>no judged responses</p>"

    return (
        f"<h2>Best responses of iteration {i}</h2>{cards(best)}<h2>Worst responses of iteration {i}</h2>{cards(worst)}"
    )


# ---------------------------------------------------------------------------------------------
# plots (matplotlib, headless)
# ---------------------------------------------------------------------------------------------


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    return plt, fig, ax


def finish(plt, fig, ax, name: str, title: str) -> Plot:
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Plot(name, title, buf.getvalue())


def line_plot(name, title, x, series: dict[str, list], xlabel: str, labels: list[str] | None = None) -> Plot:
    plt, fig, ax = figure()
    drawn = 0
    for key, ys in series.items():
        pts = [(a, b) for a, b in zip(x, ys) if b is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
            drawn += 1
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not recorded by this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_xticks(x, labels or [str(v) for v in x], fontsize=8)
    return finish(plt, fig, ax, name, title)


def length_plot(name: str, store: RunStore, iterations: list[int]) -> Plot:
    plt, fig, ax = figure()
    lengths = []
    for i in iterations:
        samples = read_records(store.iter_dir(i) / "samples.jsonl", Sample, ConfigError)
        lengths.append([len(s.token_ids) if s.token_ids is not None else len(s.response.split()) for s in samples])
    ax.boxplot(lengths, positions=iterations)
    ax.set_xlabel("iteration")
    ax.set_ylabel("tokens")
    return finish(plt, fig, ax, name, "Response length per iteration")


def phase_plot(name: str, iterations: list[int], rows: list[dict]) -> Plot:
    plt, fig, ax = figure()
    bottom = [0.0] * len(rows)
    for key in PHASES:
        vals = [m.get(key) or 0.0 for m in rows]
        ax.bar(iterations, vals, bottom=bottom, label=key.removesuffix("_s"))
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.legend(fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("seconds")
    return finish(plt, fig, ax, name, "Time per phase")


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------

STYLE = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;color:#222}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px}img{width:100%}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}
.card{border:1px solid #ddd;padding:4px 12px;margin:6px 0}.q{color:#555}pre{white-space:pre-wrap}"""

# Counts the plots the browser actually decoded, so a headless check can read it from the DOM.
SCRIPT = """window.addEventListener('load',()=>{const imgs=[...document.querySelectorAll('img')];
document.body.dataset.plotsRendered=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;
document.body.dataset.plots=imgs.length;});"""


def page(title: str, plots: list[Plot], body: str) -> str:
    figures = "".join(
        f"<figure><img alt='{html.escape(p.title)}' src='data:image/png;base64,{base64.b64encode(p.png).decode()}'>"
        "</figure>"
        for p in plots
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
        f"<div class=plots>{figures}</div>{body}</body></html>"
    )


def col(rows: list[dict], key: str) -> list:
    return [m.get(key) for m in rows]


def loss_keys(rows: list[dict]) -> list[str]:
    present = {k for m in rows if isinstance(m, dict) for k in m}  # a row that is not an object is reported later
    return [k for k in sorted(present) if k in LOSS_KEYS or k.endswith("_loss")]


# A text shown on the page (a prompt, a response, a critique) is cut to this many characters:
# a 100 MB response must not make a 100 MB page.
SHOWN_CHARS = 4000


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` escaped for the page, cut to `limit` characters with a note of its full length."""
    if len(text) <= limit:
        return html.escape(text)
    return f"{html.escape(text[:limit])}<i>… (cut here: {len(text):,} characters in all)</i>"


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
