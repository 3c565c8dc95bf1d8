"""`alignloop review RUN|SERIES`: the review page, and judgments imported from a file.

The page is served by the standard library (ThreadingHTTPServer) on 127.0.0.1 only, and
answers only requests that carry the random token printed with its address, as Jupyter's
does: another user of the machine, or a web page in the reviewer's browser, cannot read the
responses or post judgments. The page itself is one HTML file with its script and style
inline (review_page.html, package data): no build step and nothing fetched from elsewhere.

Every save goes through ReviewQueue.save (loop/review_queue.py): a new revision file created by a
hard link, so a save is atomic and two reviewers never both win the same revision.
"""

from __future__ import annotations

import hmac
import json
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from alignloop.judges.human import ReviewError, checked
from alignloop.loop.config import ConfigError
from alignloop.loop.review_queue import Conflict, ReviewQueue
from alignloop.loop.store import read_jsonl
from alignloop.records import Judgment, Sample
from alignloop.records.secrets import quote

MAX_BODY = 1 << 20  # bytes in one posted judgment: a critique is at most 20,000 characters


def find_queues(root: Path) -> dict[str, ReviewQueue]:
    """The review queues of a run directory or of a series' rounds, by their path under `root`."""
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory (give a run directory or a series directory)")
    pattern = "rounds/*/iter-*/review/queue.json" if (root / "series.json").exists() else "iter-*/review/queue.json"
    found = {str(p.parent.parent.relative_to(root)): ReviewQueue(p.parent.parent) for p in sorted(root.glob(pattern))}
    if not found:
        raise ConfigError(
            f"{root}: no review queue (a run whose judge.type is human writes one when it stops with exit 8)"
        )
    return found


def items(queues: dict[str, ReviewQueue]) -> list[dict]:
    """What the page shows: every queued sample with its prompt, response and latest saved judgment."""
    out = []
    for name, queue in queues.items():
        prompts, samples = queue.samples()
        saved, closed = queue.saved(), queue.closed
        for sid in queue.load()["sample_ids"]:
            sample = samples[sid]
            prompt = prompts[sample.prompt_id]
            out.append(
                {
                    "queue": name,
                    "sample_id": sid,
                    "messages": [m.model_dump() for m in prompt.messages],
                    "response": sample.response,
                    "saved": saved.get(sid),
                    "closed": closed,
                }
            )
    return out


def save(queues: dict[str, ReviewQueue], raw: object) -> dict:
    """Check and save one posted judgment ({"queue": ..., and HumanInput's fields})."""
    if not isinstance(raw, dict):
        raise ReviewError(f"expected a JSON object, got {type(raw).__name__}")
    raw = dict(raw)
    name = raw.pop("queue", None)
    queue = queues.get(name) if isinstance(name, str) else None
    if queue is None:
        raise ReviewError(f"queue {quote(str(name))} is not one of this page's ({', '.join(queues)})")
    _, samples = queue.samples()
    queued = set(queue.load()["sample_ids"])
    judgment, reviewer, base = checked(raw, {sid: samples[sid] for sid in queued})
    return queue.save(judgment, reviewer, base)


# import ---------------------------------------------------------------------------------------------
def import_judgments(root: Path, path: Path, reviewer: str | None = None) -> tuple[int, int]:
    """Save the judgments of a JSONL file (one object per line, HumanInput's fields; `reviewer`
    for lines that name none). Every line is checked before anything is saved: a bad one is a
    ConfigError naming file:line. A sample already judged is refused unless the line says the
    same (then it is skipped). Returns (saved, skipped)."""
    queues = find_queues(root)
    where: dict[str, tuple[ReviewQueue, Sample]] = {}
    twice: dict[str, list[str]] = {}  # a sample id in two open queues (two rounds of a series)
    for name, queue in queues.items():
        if queue.closed:
            continue
        _, samples = queue.samples()
        for sid in queue.load()["sample_ids"]:
            if sid in where:
                twice.setdefault(sid, [str(where[sid][0].iter_dir.relative_to(root))]).append(name)
            where[sid] = (queue, samples[sid])
    todo: list[tuple[ReviewQueue, Judgment, str, int]] = []
    skipped = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__})") from None
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if isinstance(raw, dict) and reviewer and "reviewer" not in raw:
                raw["reviewer"] = reviewer
            sid = raw.get("sample_id") if isinstance(raw, dict) else None
            if isinstance(sid, str) and sid in twice:
                raise ReviewError(
                    f"sample {quote(sid)} waits in {' and '.join(twice[sid])}: import into one of those directories"
                )
            if isinstance(sid, str) and sid in seen:
                raise ReviewError(f"sample {quote(sid)} is judged twice in this file (line {seen[sid]} too)")
            found = where.get(sid) if isinstance(sid, str) else None
            judgment, who, _ = checked(raw, {found[1].id: found[1]} if found else {})
        except (ValueError, RecursionError, ReviewError) as e:  # json.JSONDecodeError is a ValueError
            raise ConfigError(f"{path}:{n}: {e}") from None
        assert found is not None  # checked() refuses a sample that is not in a queue
        queue = found[0]
        seen[judgment.sample_id] = n
        current = queue.saved().get(judgment.sample_id)
        if current is not None:
            if Judgment.model_validate(current["judgment"]) == judgment:
                skipped += 1
                continue
            raise ConfigError(
                f"{path}:{n}: sample {quote(judgment.sample_id)} is already judged by {current['reviewer']}; "
                "change it on the review page"
            )
        todo.append((queue, judgment, who, 0))
    for queue, judgment, who, base in todo:
        try:
            queue.save(judgment, who, base)
        except Conflict as e:  # a reviewer saved it while the file was being read
            raise ConfigError(f"{path}: {e}; {len(todo)} line(s) were to be saved, rerun the import") from None
    return len(todo), skipped


# the page ---------------------------------------------------------------------------------------------
class ReviewServer(ThreadingHTTPServer):
    """The review page over `root`'s queues, on 127.0.0.1:`port` (0: a free one)."""

    daemon_threads = True

    def __init__(self, root: Path, port: int = 0, token: str | None = None):
        self.root, self.token = root, token or secrets.token_urlsafe(24)
        self.queues = find_queues(root)
        self.page = resources.files("alignloop.loop").joinpath("review_page.html").read_bytes()
        super().__init__(("127.0.0.1", port), ReviewHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/?token={self.token}"


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer

    def log_message(self, format, *args):  # noqa: A002 - the request line holds the token: not logged
        pass

    def allowed(self) -> bool:
        """The token, and a Host that is this address (a DNS-rebinding page names another)."""
        given = parse_qs(urlsplit(self.path).query).get("token", [""])[0] or self.headers.get("X-Review-Token", "")
        port = self.server.server_address[1]
        host_ok = self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}")
        if host_ok and hmac.compare_digest(given.encode(), self.server.token.encode()):
            return True
        self.reply(HTTPStatus.FORBIDDEN, b"403: open the address `alignloop review` printed, with its token\n")
        return False

    def do_GET(self):  # noqa: N802 - http.server's name
        if not self.allowed():
            return
        route = urlsplit(self.path).path
        if route == "/":
            self.reply(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif route == "/api/items":
            try:
                self.json(HTTPStatus.OK, {"items": items(self.server.queues)})
            except ConfigError as e:
                self.json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(e)})
        else:
            self.reply(HTTPStatus.NOT_FOUND, b"404\n")

    def do_POST(self):  # noqa: N802 - http.server's name
        if not self.allowed():
            return
        if urlsplit(self.path).path != "/api/judgments":
            return self.reply(HTTPStatus.NOT_FOUND, b"404\n")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self.json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
        if not 0 <= length <= MAX_BODY:
            return self.json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"at most {MAX_BODY} bytes"})
        try:
            raw = json.loads(self.rfile.read(length))
            self.json(HTTPStatus.OK, {"saved": save(self.server.queues, raw)})
        except Conflict as e:
            self.json(HTTPStatus.CONFLICT, {"error": str(e), "current": e.current})
        except (ValueError, RecursionError, ReviewError, ConfigError) as e:
            self.json(HTTPStatus.BAD_REQUEST, {"error": str(e)})

    def json(self, status: HTTPStatus, body: dict) -> None:
        self.reply(status, json.dumps(body).encode(), "application/json")

    def reply(self, status: HTTPStatus, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")  # the token is in the address
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        )
        self.end_headers()
        self.wfile.write(body)


def serve(root: Path, port: int = 0) -> None:
    """Serve the page until Ctrl-C."""
    try:
        server = ReviewServer(root, port)
    except OSError as e:  # the port is taken, or not ours to take
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e})") from None
    waiting = sum(1 for item in items(server.queues) if item["saved"] is None and not item["closed"])
    print(f"review page: {server.url}", flush=True)
    print(f"{waiting} sample(s) wait in {len(server.queues)} queue(s) of {root}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# agreement, for the report -------------------------------------------------------------------------------
def agreement(root: Path) -> list[dict]:
    """Per iteration whose samples both people and the other judge judged (a mixed human
    judge): how many, how often their verdicts agree, and the mean gap between their scores."""
    rows = []
    for other_path in sorted(root.glob("iter-*/review/other.jsonl")):
        final_path = other_path.parent.parent / "judgments.jsonl"
        if not final_path.exists():
            continue  # still waiting for people
        other = {j.sample_id: j for j in read_jsonl(other_path, Judgment)}
        pairs = [
            (j, other[j.sample_id])
            for j in read_jsonl(final_path, Judgment)
            if j.judge.startswith("human:") and j.sample_id in other and other[j.sample_id].has_signal
        ]
        verdicts = [(a.verdict, b.verdict) for a, b in pairs if a.verdict and b.verdict]
        gaps = [abs(a.score - b.score) for a, b in pairs if a.score is not None and b.score is not None]
        if pairs:
            rows.append(
                {
                    "iteration": int(other_path.parent.parent.name.split("-")[1]),
                    "both": len(pairs),
                    "verdicts_agree": sum(a == b for a, b in verdicts) / len(verdicts) if verdicts else None,
                    "mean_score_gap": sum(gaps) / len(gaps) if gaps else None,
                }
            )
    return rows


def agreement_section(root: Path) -> str:
    """The report's table of agreement between people and the other judge ('' without one)."""
    rows = agreement(root)
    if not rows:
        return ""

    def cell(v) -> str:
        return "-" if v is None else f"{v:.2f}"

    body = "".join(
        f"<tr><td>{r['iteration']}</td><td>{r['both']}</td><td>{cell(r['verdicts_agree'])}</td>"
        f"<td>{cell(r['mean_score_gap'])}</td></tr>"
        for r in rows
    )
    return (
        "<h2>People and the other judge</h2><table><tr><th>iteration</th><th>judged by both</th>"
        f"<th>verdicts agree</th><th>mean |score gap|</th></tr>{body}</table>"
    )
