"""Benchmark: the kiosk's touch screen, from the card seen to the choice on screen.

The whole platform on the demo stack (onecard.platform: server over HTTP with SQLite, board
simulator on a pty, pcscd with the virtual card), `onecard kiosk run` with its screen as its own
process, and the page in Debian's Chromium through Playwright. For each tap the page itself
measures, with the machine's one clock, from when the kiosk saw the card (the kiosk writes it in
the screen's document: `seen_ms`) to the moment the choice screen has been rendered (the frame
after the DOM changed): read, prove, verify offline, the server's entitlements answer, the
server-sent event and the page's update. pcscd's polling of the virtual reader (from the card
inserted to the kiosk seeing it) is excluded, as in bench_tap.py. Each tap is cancelled on the
screen, so no allowance is spent and every tap shows the same choice.

Also printed: the page's bytes over the wire on a fresh load (HTML, script, style, pictograms;
fonts are the system's Noto CJK, not transferred), and the kiosk process's resident memory.

Targets (issue 10): choice on screen <= 150 ms, page < 100 KB without fonts, kiosk RSS < 80 MB.
Run alone (it uses the card reader): `flock /tmp/onecard-pcscd.lock .venv/bin/python
bench/bench_kiosk_screen.py [--taps N]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onecard.platform import start_platform  # noqa: E402
from onecard.procs import Child, free_port  # noqa: E402
from tests.pages import chromium  # noqa: E402

# Installed in the page (by Playwright, not by the page's own script): the time from the kiosk
# seeing the card to the frame after the choice screen was put in the DOM.
WATCH = """() => {
  window.__choiceLatencies = [];
  new MutationObserver(() => {
    const body = document.body;
    if (body.dataset.screen !== "choosing" || body.dataset.measured === body.dataset.seq) return;
    body.dataset.measured = body.dataset.seq;
    const seen = Number(body.dataset.seenMs);
    requestAnimationFrame(() => window.__choiceLatencies.push(Date.now() - seen));
  }).observe(document.body, { attributes: true, attributeFilter: ["data-screen", "data-seq"] });
}"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def page_bytes(browser: Any, url: str) -> tuple[int, dict[str, int]]:
    context = browser.new_context(viewport={"width": 1080, "height": 1920})
    sizes: dict[str, int] = {}

    def count(response: Any) -> None:
        if "/events" not in response.url:
            sizes[response.url.removeprefix(url.rstrip("/"))] = len(response.body())

    page = context.new_page()
    page.on("response", count)
    page.goto(url)
    page.wait_for_selector("body[data-screen=idle]")
    page.wait_for_load_state("networkidle")
    context.close()
    return sum(sizes.values()), sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_platform(Path(tmp) / "p", kiosk=False) as p:
        port = free_port()
        kiosk = Child("kiosk", p.kiosk_run_argv("--screen-port", str(port), screen=True))
        try:
            kiosk.wait_for_line(r"kiosk screen: ", 30)
            url = f"http://127.0.0.1:{port}/"
            with chromium() as browser:
                total, sizes = page_bytes(browser, url)
                context = browser.new_context(viewport={"width": 1080, "height": 1920})
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("body[data-screen=idle]")
                page.evaluate(WATCH)
                for _ in range(args.taps):
                    p.card.insert()
                    page.wait_for_selector("body[data-screen=choosing]", timeout=20_000)
                    page.click("#action-cancel")
                    page.wait_for_selector("body[data-screen=remove_card]", timeout=20_000)
                    p.card.remove()
                    page.wait_for_selector("body[data-screen=idle]", timeout=20_000)
                latencies = [float(x) for x in page.evaluate("window.__choiceLatencies")]
                context.close()
            memory = rss_mb(kiosk.proc.pid)
        finally:
            kiosk.stop()
    print(
        f"kiosk screen: card seen -> choice on screen, {len(latencies)} taps (pcscd polling excluded)"
    )
    print(f"  median {statistics.median(latencies):7.1f} ms   p95 {percentile(latencies, 0.95):7.1f} ms"
          f"   min {min(latencies):.1f}   max {max(latencies):.1f}   (target <= 150 ms)")  # fmt: skip
    print(f"page bytes on a fresh load: {total / 1024:.1f} KB without fonts (target < 100 KB; "
          f"fonts are the system's Noto CJK)")  # fmt: skip
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {size:8d}  {name}")
    print(
        f"kiosk process resident memory after {len(latencies)} taps: {memory:.1f} MB (target < 80 MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
