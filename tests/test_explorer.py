"""The explorer page in a real headless Chromium against a real devnet (nodes and a miner as processes).

The browser is Debian's `chromium` (/usr/bin/chromium) driven through
Playwright; the test is skipped, with the reason, only where that browser
is not installed. It keeps one screenshot of the page at SCREENSHOT
(out/ is ignored by git).
"""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pouw.devnet import Devnet, DevnetOptions

pytestmark = pytest.mark.slow

SCREENSHOT = Path(__file__).resolve().parents[1] / "out" / "explorer-screenshot.png"
"""The test's artefact: the explorer's front page after the devnet's task was mined."""
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def find_chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.skip("Debian's chromium package is not installed (as root: apt-get install -y chromium); "
                    "the explorer test needs a real browser")
    return path


def wait_until(predicate, timeout: float, what: str, step: float = 0.5):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def field(page_or_locator, name: str) -> str:
    return page_or_locator.locator(f"[data-field={name}]").first.get_attribute("data-value")


def expected_paid(block: dict, net, rewards: dict[str, int]) -> int:
    """What the block paid its winner, from RPC data: fees, plus the block reward for standing-task work (the standing
    task, modes 1 and 3) or the task's escrow (modes 0 and 2): docs/protocol.md §5."""
    header = block["header"]
    paid = sum(tx["fee"] for tx in block["transactions"])
    if header["task_id"] in rewards and header["task_mode"] in (0, 2):
        return paid + rewards[header["task_id"]]
    return paid + net.params.block_reward


def check_row(row, rpc, net, rewards) -> int:
    """The row's numbers against `getblock`; returns its height."""
    height = int(row.get_attribute("data-height"))
    block = rpc.call("getblock", ref=height)
    header = block["header"]
    assert row.get_attribute("data-hash") == block["hash"]
    assert field(row, "winner") == header["miner"]
    assert int(field(row, "dice")) == header["dice_ppm"]
    shown_dice = float(row.locator("[data-field=dice]").inner_text())
    assert abs(shown_dice - header["dice_ppm"] / 1e6) <= 0.00005
    assert field(row, "task") == header["task_id"]
    assert int(field(row, "mode")) == header["task_mode"]
    assert int(field(row, "reward")) == expected_paid(block, net, rewards)
    return height


def test_explorer_page_follows_the_chain_live_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    options = DevnetOptions(root=tmp_path / "net", nodes=2, miners=1, blocks=6, phase1=12, phase2=8, tasks=(60,),
                            timeout=600, explorer_port=0)
    with Devnet(options, emit=lambda line: None) as net:
        net.start()
        url = net.explorer_url
        assert url and url.startswith("http://127.0.0.1:")
        [task_id] = net.submit_tasks()
        rewards = {task_id: 60 * 100_000_000}
        rpc = net.client(0)

        # Bounded work for anyone on the port: bad references are 400/404, pages are capped.
        for path, code in (("api/block/" + "ab" * 40, 404), ("api/blocks?limit=-1", 400), ("api/task/00", 404),
                           ("etc/passwd", 404), ("static/../node.json", 404)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url + path, timeout=10)
            assert err.value.code == code, path

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                problems: list[str] = []
                foreign: list[str] = []
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
                page.on("request", lambda req: None if req.url.startswith(url) else foreign.append(req.url))
                page.goto(url)
                page.evaluate("window.__explorerLoad = 'the first load'")

                # The status bar: network, tip and phase as RPC has them, and a running countdown.
                page.wait_for_selector("[data-test=tip-height][data-value]")
                assert page.locator("[data-test=network]").inner_text().startswith("devnet")
                countdown = page.locator("[data-test=countdown]")
                wait_until(lambda: countdown.get_attribute("data-value") not in (None, ""), 20, "the countdown")
                first = int(countdown.get_attribute("data-value"))
                wait_until(lambda: int(countdown.get_attribute("data-value")) != first, 10, "the countdown to move")

                # A new block appears without a reload.
                shown = int(page.locator("[data-test=tip-height]").get_attribute("data-value"))
                new_row = page.locator(f"tr[data-test=block-row][data-height='{shown + 1}']")
                new_row.wait_for(timeout=180_000)
                assert page.evaluate("window.__explorerLoad") == "the first load", "the page reloaded"

                def status_matches():
                    info = rpc.call("getinfo")
                    tip = page.locator("[data-test=tip-hash]").get_attribute("data-value")
                    height = int(page.locator("[data-test=tip-height]").get_attribute("data-value"))
                    return info if (tip == info["tip"] and height == info["height"]) else None

                info = wait_until(status_matches, 20, "the status bar to show RPC's tip")
                assert int(page.locator("[data-test=slot]").get_attribute("data-value")) in (info["slot"], info["slot"] - 1, info["slot"] + 1)
                rows = page.locator("tr[data-test=block-row]")
                wait_until(lambda: rows.first.get_attribute("data-height") == str(info["height"]), 10, "the block list")
                heights = [check_row(rows.nth(i), rpc, net, rewards) for i in range(rows.count())]
                assert heights == list(range(info["height"], 0, -1))

                # The block page, opened from its row.
                new_row.locator("[data-field=height] a").click()
                view = page.locator("[data-test=block-view]")
                view.wait_for()
                block = rpc.call("getblock", ref=shown + 1)
                assert view.get_attribute("data-hash") == block["hash"]
                assert field(view, "winner") == block["header"]["miner"]
                assert int(field(view, "dice")) == block["header"]["dice_ppm"]
                assert int(field(view, "slot")) == block["header"]["slot"]
                assert field(view, "prev-hash") == block["header"]["prev_hash"]
                assert field(view, "model") == block["work"]["model_digest"]
                assert int(field(view, "checkpoints")) == block["work"]["checkpoints"]
                assert int(field(view, "reward")) == expected_paid(block, net, rewards)

                # The task page: mined at height 3 + M (mature M blocks after inclusion, then selected two ahead), with its figures.
                wait_until(lambda: rpc.call("gettask", task_id=task_id)["status"] == "mined", 360, "the task to be mined")
                task = rpc.call("gettask", task_id=task_id)
                page.locator("a.brand").click()
                task_link = page.locator(f"tr[data-test=task-row][data-task='{task_id}'] a").first
                task_link.wait_for(timeout=30_000)
                task_link.click()
                task_view = page.locator("[data-test=task-view]")
                task_view.wait_for()
                assert task_view.get_attribute("data-task") == task_id
                wait_until(lambda: field(task_view, "status") == "mined", 20, "the page to say mined")
                assert int(field(task_view, "reward")) == task["reward"]
                assert int(field(page, "result-height")) == task["result"]["height"]
                assert int(field(page, "dice")) == task["result"]["dice_ppm"]
                assert page.locator("[data-field=winner]").first.get_attribute("data-value") == task["result"]["winner"]
                state = page.locator("[data-test=figures-state]")
                wait_until(lambda: state.get_attribute("data-value") in ("ready", "failed", "missing-blobs", "error"),
                           240, "the figures")
                assert state.get_attribute("data-value") == "ready", state.inner_text()
                images = page.locator("img[data-test=figure]")
                kinds = [images.nth(i).get_attribute("data-kind") for i in range(images.count())]
                assert kinds.count("dice") == 1 and kinds.count("overlay") >= 1
                wait_until(lambda: page.evaluate(
                    "Array.from(document.querySelectorAll('img[data-test=figure]')).every(i => i.complete && i.naturalWidth >= 128)"),
                    20, "the figures to load")

                # The leaderboard counts what RPC says each miner won.
                page.locator("a.brand").click()
                page.locator("tr[data-test=miner-row]").first.wait_for()
                tip = int(page.locator("[data-test=tip-height]").get_attribute("data-value"))
                won: dict[str, int] = {}
                for h in range(1, tip + 1):
                    miner = rpc.call("getblock", ref=h)["header"]["miner"]
                    won[miner] = won.get(miner, 0) + 1
                miner_rows = page.locator("tr[data-test=miner-row]")
                wait_until(lambda: sum(int(field(miner_rows.nth(i), "blocks")) for i in range(miner_rows.count())) >= tip,
                           20, "the leaderboard to catch up")
                for i in range(miner_rows.count()):
                    row = miner_rows.nth(i)
                    assert int(field(row, "blocks")) == won[row.get_attribute("data-miner")]

                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                assert not problems, problems
                assert not foreign, f"the page asked other hosts: {foreign}"
            finally:
                browser.close()
