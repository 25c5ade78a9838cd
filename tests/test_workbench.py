"""The review workbench in a real browser (issue 8): Debian's Chromium driven headless by Playwright.

Skips with the reason when Playwright or a Chromium binary is missing. Screenshots go to build/screenshots/
(or $SHANGPIN_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shangpin.service import ServiceSettings, create_app
from shangpin.storage.catalog import product_to_input
from shangpin.storage.keys import KeyStore
from shangpin.storage.review import Thresholds
from tests.factories import tiny_products

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("SHANGPIN_ARTIFACTS", ROOT / "build" / "screenshots"))
CHROMIUM = os.environ.get("SHANGPIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs the playwright package (pip install playwright)"
)
if CHROMIUM is None:
    pytest.skip(
        "needs a Chromium binary (Debian: apt install chromium; or set SHANGPIN_CHROMIUM)",
        allow_module_level=True,
    )


class _Server:
    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture()
def site(service_model: Path, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A running service with 60 stored products' suggestions pending; (base URL, write key, read key)."""
    url = f"sqlite:///{tmp_path / 'wb.db'}"
    with KeyStore(url) as store:
        _k, write = store.create("write", name="reviewer")
        _k, read = store.create("read", name="viewer")
    app = create_app(
        ServiceSettings(model_dir=service_model, db_url=url, thresholds=Thresholds(default=1.01))
    )
    products = []
    for p in tiny_products(60, seed=11):
        obj = product_to_input(p)
        for key in ("attributes", "category", "tags"):
            obj.pop(key, None)
        products.append(obj)
    with _Server(app) as base:
        answer = httpx.post(
            f"{base}/v1/enrich",
            json={"products": products, "store": True},
            headers={"Authorization": f"Bearer {write}"},
            timeout=120,
        )
        answer.raise_for_status()
        yield base, write, read


def _api(base: str, token: str, path: str, **params: Any) -> Any:
    return httpx.get(f"{base}{path}", params=params, headers={"Authorization": f"Bearer {token}"}).json()


def test_review_in_the_browser_lands_in_the_audit_trail(site: tuple[str, str, str]) -> None:
    base, write, read = site
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    before = _api(base, write, "/v1/suggestions", limit=1)["total"]
    assert before >= 55
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/ui/queue")
        assert "/ui/login" in page.url  # pages need a key
        page.fill("#token", "sp_wrong_key")
        page.click("button[type=submit]")
        assert page.locator(".error").is_visible()
        page.fill("#token", write)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/queue")
        page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=True)
        rows = page.locator("table.queue tbody tr")
        first_id = rows.nth(0).get_attribute("data-id")
        second_id = rows.nth(1).get_attribute("data-id")

        page.keyboard.press("a")  # accept the first
        page.wait_for_selector(f'tr[data-id="{first_id}"].done')
        page.keyboard.press("e")  # edit the second (now current)
        page.locator(f'tr[data-id="{second_id}"] input.edit').fill("Corrected In Browser")
        page.keyboard.press("Enter")
        page.wait_for_selector(f'tr[data-id="{second_id}"].done')
        page.screenshot(path=str(ARTIFACTS / "queue-after-review.png"), full_page=True)

        (accepted,) = _api(base, write, "/v1/audit", suggestion_id=first_id)
        assert (
            accepted["action"] == "accept"
            and accepted["actor"].startswith("key:")
            and "reviewer" in accepted["actor"]
        )
        (edited,) = _api(base, write, "/v1/audit", suggestion_id=second_id)
        assert edited["action"] == "edit" and edited["after"]["value"] == "Corrected In Browser"
        assert edited["before"]["status"] == "pending" and edited["model_version"]

        page.keyboard.press("u")  # undo the edit
        page.wait_for_selector(f'tr[data-id="{second_id}"]:not(.done)')
        assert _api(base, write, "/v1/audit", suggestion_id=second_id)[0]["action"] == "undo"

        product_id = rows.nth(0).get_attribute("data-product")
        page.goto(f"{base}/ui/products/{product_id}")
        assert page.locator("h2", has_text="Audit history").is_visible()
        assert page.locator("table.audit tbody tr").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "product.png"), full_page=True)

        zh = {"id": "zh-1", "title": "李宁 男子 跑步鞋 黑色 42码 轻便透气", "description": "网面 透气 减震"}
        stored = httpx.post(
            f"{base}/v1/enrich",
            json={"products": [zh], "store": True},
            headers={"Authorization": f"Bearer {write}"},
            timeout=60,
        )
        assert stored.status_code == 200
        page.goto(f"{base}/ui/products/zh-1")
        heading = page.locator("h1")
        assert heading.get_attribute("lang") == "zh" and "跑步鞋" in heading.inner_text()
        page.screenshot(path=str(ARTIFACTS / "product-zh.png"), full_page=True)

        page.goto(f"{base}/ui/insights")
        page.screenshot(path=str(ARTIFACTS / "insights.png"), full_page=True)
        browser.close()


def test_fifty_suggestions_cleared_with_the_keyboard_alone(site: tuple[str, str, str]) -> None:
    base, write, read = site
    pending = _api(base, write, "/v1/suggestions", limit=1)["total"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{base}/ui/login")
        page.keyboard.type(write)  # the key field has focus
        page.keyboard.press("Enter")
        page.wait_for_url("**/ui/queue")
        for i in range(50):
            row = page.locator("tr.cur")
            row_id = row.get_attribute("data-id")
            page.keyboard.press("a" if i % 5 else "r")
            page.wait_for_selector(f'tr[data-id="{row_id}"].done')
            if page.locator("tr[data-id]:not(.done)").count() == 0:
                page.wait_for_load_state("load")
                page.wait_for_selector("tr.cur", timeout=10_000)
        browser.close()
    assert _api(base, write, "/v1/suggestions", limit=1)["total"] == pending - 50
    decisions = _api(base, write, "/v1/audit", limit=1000)
    assert sum(a["action"] in ("accept", "reject") for a in decisions) == 50


def test_a_read_key_browses_but_cannot_review(site: tuple[str, str, str]) -> None:
    base, write, read = site
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{base}/ui/login")
        page.fill("#token", read)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/queue")
        assert page.locator(".warn", has_text="scope read").is_visible()
        page.keyboard.press("a")
        page.goto(f"{base}/ui/products")
        assert page.locator("table.list tbody tr").count() >= 50
        browser.close()
    assert _api(base, write, "/v1/audit", limit=10) == [] or all(
        a["action"] == "auto_accept" for a in _api(base, write, "/v1/audit", limit=10)
    )
    # The API refuses the cookie without the same-origin header (CSRF) and a read key's writes.
    cookie = {"shangpin_key": read}
    assert httpx.post(f"{base}/v1/suggestions/1/accept", cookies=cookie).status_code == 401
    forbidden = httpx.post(
        f"{base}/v1/suggestions/1/accept", cookies=cookie, headers={"X-Requested-With": "shangpin"}
    )
    assert forbidden.status_code == 403
    assert json.loads(forbidden.text)["detail"].startswith("this key has scope 'read'")
