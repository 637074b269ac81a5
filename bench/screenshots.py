"""Screenshots of every console page for the README and docs/console/: a seeded gateway in
process (fake models, embedded Redis), photographed by Debian's chromium through Playwright.

Not a test and not a benchmark: run it after changing a page, and commit the pictures.
Run: `.venv/bin/python -m bench.screenshots [--out docs/console]`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from bench import redis_url, run, workdir
from bot.usage import Call, Prices, RedisUsage
from tests.console_site import (
    ALICE,
    BOB,
    CHROMIUM_ARGS,
    Site,
    console_site,
    find_chromium,
    seed,
)

PAGES = (
    ("overview", "/"),
    ("conversations", "/conversations"),
    ("conversation", None),  # the first conversation's page, found on /conversations
    ("usage", "/usage?days=30"),
    ("models", "/models"),
    ("dead-letters", "/dead-letters"),
    ("pairing", "/pairing"),
    ("logs", "/logs"),
)


async def backfill(site: Site) -> None:
    """Two weeks of earlier usage (as if turns had run on those days), for the charts."""
    now = time.time()
    for back in range(1, 15):
        usage = RedisUsage(
            site.app.redis.client,
            prices=Prices(site.app.config),
            log=site.app.log,
            clock=lambda back=back: now - back * 86400,
        )
        for who, model, scale in ((ALICE, "local/local-model", 1), (BOB, "backup/backup-model", 2)):
            tokens_in = 900 * scale + 137 * ((back * 7) % 11)
            call = Call(
                model=model,
                kind="turn",
                tokens_in=tokens_in,
                tokens_out=tokens_in // 6,
                cost_nusd=0 if model.startswith("local") else tokens_in * 3000,
                local=model.startswith("local"),
            )
            await usage.record(sender=who, conversation=who, calls=[call])


async def shoot(out: Path, chromium: str) -> None:
    from playwright.async_api import async_playwright

    with workdir("switchboard-shots-", keep=False) as folder:
        async with redis_url(folder) as url, console_site(url, folder) as site:
            await seed(site)
            for n in range(3):  # a few more turns, so the usage chart has something to show
                await site.say(ALICE if n % 2 else BOB, f"question {n}")
            await backfill(site)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                await page.goto(f"{site.base}/login")
                await page.screenshot(path=str(out / "login.png"))
                await page.goto(site.sign_in)
                for name, path in PAGES:
                    if path is None:
                        html = await page.content()
                        found = re.search(r'href="(/conversations/[0-9a-f]+)"', html)
                        assert found, "no conversation to show"
                        path = found[1]
                    await page.goto(f"{site.base}{path}")
                    await page.wait_for_load_state("networkidle")
                    await page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                    print(f"{out / name}.png")
                await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/console", type=Path)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("no chromium: apt-get install chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    run(shoot(args.out, chromium))
    return 0


if __name__ == "__main__":
    sys.exit(main())
