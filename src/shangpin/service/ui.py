"""The review workbench: server-rendered pages over the same stores and API as the REST routes.

Pages read with the caller's key from an HTTP-only cookie set by the login page; every review action is a call
from the page's script to the REST API (`/v1/suggestions/...`), so it lands in the audit trail like any client's.
The API accepts that cookie only together with the `X-Requested-With: shangpin` header, which a cross-site form
cannot send (CSRF).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from shangpin.errors import NotFoundError
from shangpin.storage.keys import ApiKey
from shangpin.storage.review import STATUSES, ReviewStore, suggestion_to_dict
from shangpin.text import has_han

COOKIE = "shangpin_key"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "shangpin"
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
_IMAGE_TYPES = {".jpg", ".jpeg", ".png", ".gif", ".webp"}


class LoginRequired(Exception):
    """No valid key in the cookie: the page redirects to the login form."""


@dataclass
class UiContext:
    """What the pages need from the app: the key check, the review store, the ranker, the served model."""

    verify: Callable[[str], ApiKey | None]
    reviews: Callable[[], ReviewStore]
    ranker: Any
    model_dir: Path
    model_version: str
    auth: bool
    anonymous: ApiKey


def highlight(text: str, spans: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any] | None]]:
    """`text` cut into (piece, suggestion or None) so each non-overlapping span can be marked where it lies."""
    pieces: list[tuple[str, dict[str, Any] | None]] = []
    at = 0
    for s in sorted(spans, key=lambda s: (s["start"], -s["end"])):
        start, end = s["start"], s["end"]
        if start < at or end > len(text) or start >= end:
            continue  # overlapping or stale span: listed in the table, not marked
        if start > at:
            pieces.append((text[at:start], None))
        pieces.append((text[start:end], s))
        at = end
    if at < len(text):
        pieces.append((text[at:], None))
    return pieces


def ui_router(ctx: UiContext) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def caller(request: Request) -> ApiKey:
        if not ctx.auth:
            return ctx.anonymous
        token = request.cookies.get(COOKIE)
        key = ctx.verify(token) if token else None
        if key is None:
            raise LoginRequired()
        return key

    Caller = Annotated[ApiKey, Depends(caller)]

    def page(request: Request, name: str, key: ApiKey, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {
                "key": key,
                "can_write": key.allows("write"),
                "auth": ctx.auth,
                "model_version": ctx.model_version,
                **context,
            },
        )

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, error: str | None = None) -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html", {"error": error, "auth": ctx.auth})

    @router.post("/login")
    def login(token: Annotated[str, Form()]) -> Response:
        key = ctx.verify(token.strip())
        if key is None:
            return RedirectResponse("/ui/login?error=unknown+or+revoked+key", status_code=303)
        answer = RedirectResponse("/ui/queue", status_code=303)
        answer.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", max_age=12 * 3600)
        return answer

    @router.post("/logout")
    def logout() -> Response:
        answer = RedirectResponse("/ui/login", status_code=303)
        answer.delete_cookie(COOKIE)
        return answer

    @router.get("", include_in_schema=False)
    @router.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/ui/queue", status_code=303)

    @router.get("/queue", response_class=HTMLResponse)
    def queue(
        request: Request,
        key: Caller,
        attribute: str | None = None,
        category: str | None = None,
        stage: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> HTMLResponse:
        store = ctx.reviews()
        items, total = store.suggestions(
            status="pending",
            attribute=attribute or None,
            category=category or None,
            stage=stage or None,
            limit=limit,
        )
        titles = store.titles([s.product_id for s in items])
        rows = [{**suggestion_to_dict(s), "title": titles.get(s.product_id, "")} for s in items]
        return page(
            request,
            "queue.html",
            key,
            rows=rows,
            total=total,
            attribute=attribute or "",
            category=category or "",
            stage=stage or "",
            attributes=store.pending_attributes(),
        )

    @router.get("/products", response_class=HTMLResponse)
    def products(
        request: Request,
        key: Caller,
        category: str | None = None,
        status: str | None = None,
        min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
        max_score: Annotated[float | None, Query(ge=0, le=1)] = None,
        q: str | None = None,
        page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
    ) -> HTMLResponse:
        per_page = 50
        items, total = ctx.reviews().products(
            category=category or None,
            status=status or None,
            min_score=min_score,
            max_score=max_score,
            query=q or None,
            limit=per_page,
            offset=(page_no - 1) * per_page,
        )
        return page(
            request,
            "products.html",
            key,
            items=items,
            total=total,
            page_no=page_no,
            pages=max(1, -(-total // per_page)),
            filters={"category": category or "", "status": status or "", "q": q or ""},
            min_score=min_score,
            max_score=max_score,
            statuses=STATUSES,
        )

    @router.get("/products/{product_id:path}", response_class=HTMLResponse)
    def product(request: Request, key: Caller, product_id: str) -> HTMLResponse:
        store = ctx.reviews()
        info = store.product(product_id)
        items, _total = store.suggestions(status=None, product_id=product_id, limit=1000)
        live = [suggestion_to_dict(s) for s in items if s.status != "superseded"]
        spans: dict[str, list[dict[str, Any]]] = {"title": [], "description": []}
        for s in live:
            if s["field"] in spans and s["start"] is not None and s["status"] != "rejected":
                spans[s["field"]].append(s)
        return page(
            request,
            "product.html",
            key,
            product=info,
            title_pieces=highlight(info["title"], spans["title"]),
            description_pieces=highlight(info.get("description") or "", spans["description"]),
            attributes=[s for s in live if s["stage"] in ("extract_attributes", "predict_attributes")],
            categories=[s for s in live if s["stage"] == "categorize"],
            tags=[s for s in live if s["stage"] == "recommend_tags"],
            audit=store.audit(product_id=product_id, limit=200),
            image_url=f"/ui/image/{quote(product_id, safe='')}" if _image_file(info) else None,
            lang="zh" if has_han(info["title"] + (info.get("description") or "")) else "en",
        )

    @router.get("/image/{product_id:path}")
    def image(_key: Caller, product_id: str) -> Response:
        path = _image_file(ctx.reviews().product(product_id))
        if path is None:
            raise NotFoundError(f"product {product_id!r} has no readable image file.")
        return FileResponse(path)

    @router.get("/insights", response_class=HTMLResponse)
    def insights(request: Request, key: Caller, category: str | None = None) -> HTMLResponse:
        weights: list[tuple[str, float]] = []
        resolved = None
        categories: list[str] = []
        if ctx.ranker is not None:
            categories = list(ctx.ranker.catalog_.nodes)
            if category:
                try:
                    weights = ctx.ranker.facets(category)
                    resolved = category
                except Exception as exc:  # unknown category: shown on the page
                    resolved = f"{exc}"
        counts = ctx.reviews().status_counts(category=category or None)
        table = []
        for attribute, by_status in sorted(counts.items()):
            decided = sum(by_status.get(s, 0) for s in ("accepted", "edited", "rejected"))
            good = by_status.get("accepted", 0) + by_status.get("edited", 0)
            table.append(
                {
                    "attribute": attribute or "(category)",
                    "pending": by_status.get("pending", 0),
                    "auto": by_status.get("auto_accepted", 0),
                    "accepted": by_status.get("accepted", 0),
                    "edited": by_status.get("edited", 0),
                    "rejected": by_status.get("rejected", 0),
                    "acceptance": (good / decided) if decided else None,
                }
            )
        top = max((w for _a, w in weights), default=1.0) or 1.0
        return page(
            request,
            "insights.html",
            key,
            category=category or "",
            resolved=resolved,
            weights=[(a, w, w / top) for a, w in weights],
            table=table,
            categories=categories,
            has_ranker=ctx.ranker is not None,
        )

    @router.get("/reports", response_class=HTMLResponse)
    def reports(request: Request, key: Caller) -> HTMLResponse:
        folder = ctx.model_dir / "reports"
        files = sorted(p.name for p in folder.glob("*.html")) if folder.is_dir() else []
        return page(request, "reports.html", key, files=files, folder=str(folder))

    @router.get("/reports/{name}")
    def report(_key: Caller, name: str) -> Response:
        path = ctx.model_dir / "reports" / name
        if "/" in name or not name.endswith(".html") or not path.is_file():
            raise NotFoundError(f"no report {name!r} in {ctx.model_dir / 'reports'}.")
        return FileResponse(path, media_type="text/html")

    return router


def _image_file(product: dict[str, Any]) -> Path | None:
    image = product.get("image")
    if not image:
        return None
    path = Path(image)
    return path if path.suffix.lower() in _IMAGE_TYPES and path.is_file() else None
