"""Headless Chromium from the distribution's packages (``chromium``, ``chromium-driver``,
installed by scripts/install-system-deps.sh), driven by Selenium: the Dagster UI as an
operator sees it, for the browser tests and the partitions benchmark."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def missing_browser() -> list[str]:
    """What of Chromium and its driver is not installed here."""
    return [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]


def headless_chromium(profile: Path):
    """A Chrome WebDriver on a fresh profile folder (its driver log inside it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        # Root in a container has no user namespace for the sandbox.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile / 'chromium'}",
        "--window-size=1600,900",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium then never tries to download one.
    return webdriver.Chrome(
        options=options,
        service=Service(executable_path=str(CHROMEDRIVER), log_output=str(profile / "driver.log")),
    )
