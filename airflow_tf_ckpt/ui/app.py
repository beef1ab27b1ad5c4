"""The Checkpoints page's FastAPI app, mounted by the plugin in the Airflow api-server at ``/tf-ckpt``.

Security, route by route:

- The app has an app-level ``Depends(get_user)``: EVERY route (the page, its script, the JSON) needs
  an Airflow login (the UI's ``_token`` cookie or a ``Bearer`` token); anonymous gets 401.
- Reads need the Plugins view and read access (GET) on every DAG that watches the dir; the two
  actions (quarantine, unquarantine) need write access (PUT) on those DAGs, so a viewer gets 403.
  A dir named only by ``[tf_ckpt] ui_dirs`` needs that access on all DAGs.
- A request names a dir by its id from ``GET api/dirs`` and a step by a prefix that discovery
  found in that dir: never a path or a bucket.
- The browser gets URLs, step names and numbers only: storage options (tokens, keys) stay in the
  hook, and storage errors go through the hook's redaction before they are sent.

Blocking work (listings, a plan) runs in plain ``def`` routes, which FastAPI runs in a thread pool.
"""

from __future__ import annotations

import threading
import time
from importlib import resources
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from airflow_tf_ckpt import config
from airflow_tf_ckpt.core.errors import CheckpointError
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, discover
from airflow_tf_ckpt.ui import sources, views

DIRS_TTL_S = 30.0  # how long the list of dirs (read from the serialized DAGs) is reused
LISTING_TTL_S = 5.0  # a listing older than this is redone in the background on the next request
STATE_TTL_S = 2.0  # the first paint's summary and rows (two requests at once) share one state-file read
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}


def _auth():  # -> (get_user, get_auth_manager, DagDetails, AccessView)
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagDetails
    from airflow.api_fastapi.core_api.security import get_user

    return get_user, get_auth_manager, DagDetails, AccessView


def _get_user_dep():
    return _auth()[0]


class _Cache:
    """Values (the list of dirs) kept a few seconds, one refresh at a time per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, ttl: float, make: Any) -> Any:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._items.get(key)
            if hit is not None and time.monotonic() - hit[0] < ttl:
                return hit[1]
            value = make()
            self._items[key] = (time.monotonic(), value)
            return value

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


_cache = _Cache()
_hooks: dict[str | None, Any] = {}


def _serialized_dags() -> list[tuple[str, dict[str, Any]]]:
    """``(dag_id, serialized dag)`` of every active DAG, latest version (read from the metadata DB)."""
    from airflow.models.dag import DagModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dag_ids = list(session.scalars(select(DagModel.dag_id).where(DagModel.is_stale.is_(False))))
        rows = (
            SerializedDagModel.get_latest_serialized_dags(dag_ids=dag_ids, session=session) if dag_ids else []
        )
        return [(r.dag_id, (r.data or {}).get("dag") or {}) for r in rows]


def configured_dirs() -> tuple[list[sources.WatchedDir], list[str]]:
    """The dirs of the DAGs plus ``[tf_ckpt] ui_dirs`` (cached ``DIRS_TTL_S``) and discovery notes."""

    def make() -> tuple[list[sources.WatchedDir], list[str]]:
        notes: list[str] = []
        try:
            dags = _serialized_dags()
        except Exception as exc:  # noqa: BLE001 - no DB (a misconfigured api-server): ui_dirs still work
            dags, notes = [], [f"cannot read the serialized DAGs: {type(exc).__name__}"]
        dirs = sources.watched_dirs(sorted(dags), config.ui_dirs(), config.ui_conn_id(), notes)
        return dirs, notes

    return _cache.get("dirs", DIRS_TTL_S, make)


def _hook(conn_id: str | None) -> Any:
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

    if conn_id not in _hooks:
        _hooks[conn_id] = CheckpointStorageHook(conn_id)
    return _hooks[conn_id]


def _dags_of(d: sources.WatchedDir) -> list[str | None]:
    """The DAGs whose access a dir needs; ``None`` (all DAGs) too for a dir that ``ui_dirs`` names."""
    ids: list[str | None] = list(
        sorted({w.split(" ", 1)[0].split(".", 1)[0] for w in d.used_by if not w.startswith("[")})
    )
    return [None, *ids] if any(w.startswith("[") for w in d.used_by) or not ids else ids


def _authorize(request: Request, d: sources.WatchedDir, method: str) -> None:
    _, get_auth_manager, DagDetails, AccessView = _auth()
    user = request.state.tf_ckpt_user
    am = get_auth_manager()
    if method == "GET" and not am.is_authorized_view(access_view=AccessView.PLUGINS, user=user):
        raise HTTPException(403, "Forbidden")
    for dag_id in _dags_of(d):
        if not am.is_authorized_dag(method=method, details=DagDetails(id=dag_id), user=user):
            raise HTTPException(
                403,
                "Forbidden: needs "
                + ("write" if method != "GET" else "read")
                + " access to "
                + (f"DAG {dag_id}" if dag_id else "all DAGs"),
            )


def _dir(dir_id: str) -> sources.WatchedDir:
    for d in configured_dirs()[0]:
        if d.id == dir_id:
            return d
    raise HTTPException(404, "no such checkpoint dir (ids come from api/dirs)")


def _redacted(d: sources.WatchedDir, exc: BaseException) -> str:
    return _hook(d.conn_id).redact(f"{type(exc).__name__}: {exc}")[:2000]


class _Listings:
    """The dirs' listings, kept between requests: stale-while-revalidate, one refresh at a time.

    A listing of a 10,000-step dir on an object store takes seconds (minutes on the emulator), so a
    request never waits for one unless it asks to (``wait``): the page paints from the last listing
    (or, for a dir never listed, from the state file alone) and a listing older than
    ``LISTING_TTL_S`` is redone in the background.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}

    def get(
        self,
        d: sources.WatchedDir,
        wait: bool,
        fresh: bool = True,
    ) -> tuple[CheckpointDir | None, float | None]:
        """``(listing or None, its age in seconds)``. Without ``wait`` it never blocks (a stale
        listing, refreshed in the background, or None for a dir never listed, whose listing
        starts with the first request that waits); with ``wait`` it returns a fresh listing, or
        with ``fresh=False`` any listing (waiting only for a dir never listed)."""
        deadline = time.monotonic() + 600
        while True:
            with self._lock:
                e = self._items.setdefault(
                    d.id, {"cdir": None, "at": 0.0, "done": None, "error": None, "gen": 0}
                )
                if e["error"] is not None and e["done"] is None:
                    error, e["error"] = e["error"], None
                    raise HTTPException(502, f"cannot list {d.url}: {error}")
                # a dir never listed is first listed by a request that waits (the page's second
                # phase): the first paint's own requests then do not share the CPU with a listing
                due = (e["cdir"] is None and wait) or (
                    e["cdir"] is not None and time.monotonic() - e["at"] > LISTING_TTL_S
                )
                if due and e["done"] is None:
                    e["done"] = threading.Event()
                    threading.Thread(
                        target=self._refresh, args=(d, e, e["gen"]), daemon=True, name=f"tf-ckpt-ls-{d.id}"
                    ).start()
                cdir, at, done = e["cdir"], e["at"], e["done"]
            # ``wait``: also wait for a refresh in flight, so that the answer is at most a TTL old
            if not wait or done is None or (cdir is not None and not fresh) or time.monotonic() > deadline:
                return cdir, None if cdir is None else time.monotonic() - at
            done.wait(max(0.0, deadline - time.monotonic()))

    def _refresh(self, d: sources.WatchedDir, e: dict[str, Any], gen: int) -> None:
        try:
            cdir = discover(_hook(d.conn_id).get_location(d.url), d.prefix)
            with self._lock:
                if e["gen"] == gen:  # not made before an action changed the dir
                    e["cdir"], e["at"] = cdir, time.monotonic()
        except Exception as exc:  # noqa: BLE001 - reported to the next request, redacted
            with self._lock:
                e["error"] = _redacted(d, exc)
        finally:
            with self._lock:
                done, e["done"] = e["done"], None
            done.set()

    def invalidate(self, d: sources.WatchedDir) -> None:
        """After an action: the next request waits for (or paints without) a new listing."""
        with self._lock:
            if d.id in self._items:
                self._items[d.id].update(cdir=None, gen=self._items[d.id]["gen"] + 1)


_listings = _Listings()


def _listing(d: sources.WatchedDir) -> CheckpointDir:
    """The kept listing of the dir, however old (the page asked for a fresh one just before)."""
    cdir, _ = _listings.get(d, wait=True, fresh=False)
    if cdir is None:
        raise HTTPException(504, f"listing {d.url} takes too long; try again")
    return cdir


def _fresh_listing(d: sources.WatchedDir) -> CheckpointDir:
    """A listing made now (for actions: they must not act on what an old listing showed)."""
    try:
        return discover(_hook(d.conn_id).get_location(d.url), d.prefix)
    except (CheckpointError, OSError, ValueError) as exc:
        raise HTTPException(502, f"cannot list {d.url}: {_redacted(d, exc)}") from None


def _state_only(d: sources.WatchedDir) -> Any:
    """The dir's state file, parsed (kept ``STATE_TTL_S``: the page asks for the summary and the
    first rows at once, and the second request waits for the first one's read instead of making
    its own)."""
    from airflow_tf_ckpt.core.formats.state import STATE_FILENAME, read_state

    def make() -> Any:
        try:
            return read_state(_hook(d.conn_id).get_location(d.url), STATE_FILENAME)
        except (CheckpointError, OSError, ValueError) as exc:
            raise HTTPException(502, f"cannot read the state file of {d.url}: {_redacted(d, exc)}") from None

    return _cache.get(f"state:{d.id}", STATE_TTL_S, make)


def create_app() -> FastAPI:
    """The app. ``get_user`` is imported here, at plugin load, inside the api-server."""
    get_user = _get_user_dep()

    async def remember_user(request: Request, user: Any = Depends(get_user)) -> None:
        request.state.tf_ckpt_user = user

    app = FastAPI(
        title="TensorFlow checkpoints",
        dependencies=[Depends(remember_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_exception_handler(HTTPException, _html_or_json)  # type: ignore[arg-type]  # Starlette's stub: any Exception
    _routes(app)
    return app


async def _html_or_json(request: Request, exc: HTTPException) -> Response:
    """The page itself answers 401/403 with a short page (inside the iframe), the API with JSON."""
    page = request.url.path.rstrip("/").endswith("/tf-ckpt")
    if page and "text/html" in request.headers.get("accept", ""):
        msg = "Your Airflow session has expired: log in again." if exc.status_code == 401 else str(exc.detail)
        return HTMLResponse(
            f"<!doctype html><title>Checkpoints</title><p>{_esc(msg)}</p>", status_code=exc.status_code
        )
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _static(name: str) -> str:
    return resources.files("airflow_tf_ckpt.ui").joinpath("static", name).read_text("utf-8")


def _page() -> str:
    """index.html with its stylesheet and script inlined: one request for the page instead of
    three before the first data request (on a loaded api-server each one costs hundreds of ms).
    The files stay served under ``static/`` too."""
    html = _static("index.html")
    css, js = _static("app.css"), _static("app.js").replace("</script", "<\\/script")
    html = html.replace('<link rel="stylesheet" href="static/app.css">', f"<style>\n{css}</style>")
    return html.replace('<script src="static/app.js"></script>', f"<script>\n{js}</script>")


def _routes(app: FastAPI) -> None:
    _page_routes(app)
    _listing_routes(app)
    _detail_routes(app)
    _action_routes(app)


def _page_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(_page(), headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "not found")
        return Response(_static(name), media_type=STATIC[name])


def _read(request: Request, dir_id: str) -> tuple[sources.WatchedDir, CheckpointDir]:
    d = _dir(dir_id)
    _authorize(request, d, "GET")
    return d, _listing(d)


def _first(
    request: Request, dir_id: str, wait: bool
) -> tuple[sources.WatchedDir, CheckpointDir | None, float | None]:
    d = _dir(dir_id)
    _authorize(request, d, "GET")
    cdir, age = _listings.get(d, wait=wait)
    return d, cdir, age


def _listing_routes(app: FastAPI) -> None:
    """The dirs, and a dir's summary and step rows (the first paint)."""

    @app.get("/api/dirs")
    def dirs(request: Request) -> dict[str, Any]:
        found, notes = configured_dirs()
        shown = []
        for d in found:
            try:
                _authorize(request, d, "GET")
            except HTTPException:
                continue
            shown.append(d.to_dict())
        return {"dirs": shown, "notes": notes[:50]}

    @app.get("/api/dirs/{dir_id}/summary")
    def summary(request: Request, dir_id: str, wait: bool = True) -> dict[str, Any]:
        """``wait=false`` (the page's first paint): the state file alone until a listing exists."""
        d, cdir, age = _first(request, dir_id, wait)
        if cdir is None:
            return {
                **views.preliminary(_state_only(d), d.prefix)["summary"],
                "preliminary": True,
                **d.to_dict(),
            }
        return {**views.summary(cdir, d.prefix), "listed_s_ago": age, **d.to_dict()}

    @app.get("/api/dirs/{dir_id}/steps")
    def steps(
        request: Request,
        dir_id: str,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=views.MAX_PAGE)] = 50,
        status: str | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        d, cdir, age = _first(request, dir_id, wait)
        if cdir is None:
            if status not in (None, "", "all", "committed"):
                return {"preliminary": True, "total": 0, "offset": offset, "limit": limit, "rows": []}
            out = views.preliminary(_state_only(d), d.prefix, offset, limit)
            out.pop("summary")
            return out
        return {**_guard(d, lambda: views.step_rows(cdir, offset, limit, status)), "listed_s_ago": age}


def _detail_routes(app: FastAPI) -> None:
    """A dir's metrics, retention plan (dry run), quarantine records and promotions."""

    @app.get("/api/dirs/{dir_id}/metrics")
    def metrics(request: Request, dir_id: str) -> dict[str, Any]:
        d, cdir = _read(request, dir_id)
        return _guard(d, lambda: views.metrics_series(cdir))

    @app.get("/api/dirs/{dir_id}/steps/{prefix}/metrics")
    def step_metrics(request: Request, dir_id: str, prefix: str) -> dict[str, Any]:
        d, cdir = _read(request, dir_id)
        _step(cdir, prefix)
        return {"prefix": prefix, "evaluators": _guard(d, lambda: views.step_metrics(cdir, prefix))}

    @app.get("/api/dirs/{dir_id}/retention")
    def retention(request: Request, dir_id: str) -> dict[str, Any]:
        d, cdir = _read(request, dir_id)
        plans = [
            _guard(
                d,
                lambda r=r: views.retention_plan(
                    cdir, r.label, lambda: _policies(d, r), r.prefix or d.prefix
                ),
            )
            for r in d.retention
        ]
        return {"plans": plans}

    @app.get("/api/dirs/{dir_id}/quarantine")
    def quarantine(request: Request, dir_id: str) -> dict[str, Any]:
        d, cdir = _read(request, dir_id)
        return {"records": _guard(d, lambda: views.quarantine_records(cdir))}

    @app.get("/api/dirs/{dir_id}/promotions")
    def promotions(request: Request, dir_id: str) -> dict[str, Any]:
        d, cdir = _read(request, dir_id)
        out = _guard(d, lambda: views.promotions(cdir))
        out["aliases"] = _guard(
            d,
            lambda: views.destination_aliases(out["records"], lambda url: _hook(d.conn_id).get_location(url)),
        )
        return out


def _action_routes(app: FastAPI) -> None:
    """Quarantine and unquarantine: write permission on the dir (a viewer gets 403)."""

    @app.post("/api/dirs/{dir_id}/steps/{prefix}/quarantine")
    def quarantine_one(
        request: Request,
        dir_id: str,
        prefix: str,
        reason: Annotated[str, Body(embed=True, min_length=1, max_length=500)],
    ) -> dict[str, Any]:
        from airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step

        d = _dir(dir_id)
        _authorize(request, d, "PUT")
        cdir = _fresh_listing(d)
        _step(cdir, prefix)
        user = getattr(request.state.tf_ckpt_user, "get_name", lambda: "?")()
        res = _guard(
            d, lambda: quarantine_step(cdir.location, prefix, f"{reason} (by {user} in the Airflow UI)")
        )
        _listings.invalidate(d)
        return {"prefix": res.prefix, "quarantined": True}

    @app.post("/api/dirs/{dir_id}/steps/{prefix}/unquarantine")
    def unquarantine_one(request: Request, dir_id: str, prefix: str) -> dict[str, Any]:
        from airflow_tf_ckpt.core.sidecars.quarantine import release_quarantine

        d = _dir(dir_id)
        _authorize(request, d, "PUT")
        cdir = _fresh_listing(d)
        _step(cdir, prefix)
        _guard(d, lambda: release_quarantine(cdir.location, prefix))
        _listings.invalidate(d)
        return {"prefix": prefix, "quarantined": False}


def _policies(d: sources.WatchedDir, spec: sources.RetentionSpec) -> list[Any]:
    """The policies the GC task would apply: built by ``CheckpointRetentionOperator`` itself from
    its serialized options, so the page's dry run and the task can never read them differently."""
    from airflow_tf_ckpt.operators.retention import CheckpointRetentionOperator

    op = CheckpointRetentionOperator(task_id=spec.task_id, ckpt_dir=d.url, prefix=spec.prefix, **spec.options)
    return op.policies()


def _step(cdir: CheckpointDir, prefix: str) -> None:
    if not any(s.prefix == prefix for s in cdir.steps):
        raise HTTPException(404, f"no step {prefix!r} in this dir")


def _guard(d: sources.WatchedDir, fn: Any) -> Any:
    """Run a core call; its errors become a 409 (bad data) or 502 (storage) with a redacted text."""
    try:
        return fn()
    except CheckpointError as exc:
        raise HTTPException(409, _redacted(d, exc)) from None
    except OSError as exc:
        raise HTTPException(502, _redacted(d, exc)) from None
