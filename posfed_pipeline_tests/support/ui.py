"""The Dagster UI in headless Chromium, as an operator meets it: wait for a text, click it,
take a screenshot (``docs/*.png`` with ``POSFED_UPDATE_SCREENSHOTS=1``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from posfed_pipeline_tests.support.repo import REPO_ROOT

PAGE_TIMEOUT_SECONDS = 60


def screenshot_folder(tmp_path: Path) -> Path:
    """docs/ when the screenshots are being refreshed, else the test's temp folder."""
    return REPO_ROOT / "docs" if os.environ.get("POSFED_UPDATE_SCREENSHOTS") == "1" else tmp_path


def wait_visible_text(browser, text: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    locator = (
        By.XPATH,
        f"//*[normalize-space(.)='{text}' and not(*[normalize-space(.)='{text}'])]",
    )
    try:
        return WebDriverWait(browser, PAGE_TIMEOUT_SECONDS).until(
            expected_conditions.visibility_of_element_located(locator)
        )
    except TimeoutException:
        page = browser.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"{text!r} not visible on {browser.current_url}; the page shows:\n{page}")


def dismiss_community_modal(browser) -> None:
    """The first visit shows "Join the Dagster community" over the page: skip it, if it comes."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    skip = (By.XPATH, "//button[normalize-space(.)='Skip']")
    try:
        WebDriverWait(browser, 10).until(expected_conditions.element_to_be_clickable(skip)).click()
    except TimeoutException:
        return  # already dismissed in this browser profile
    WebDriverWait(browser, 10).until(expected_conditions.invisibility_of_element_located(skip))


def save_screenshot(browser, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def click_text(browser, text: str) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    element = wait_visible_text(browser, text)
    WebDriverWait(browser, PAGE_TIMEOUT_SECONDS).until(
        expected_conditions.element_to_be_clickable(element)
    ).click()
