#!/usr/bin/env python3
"""Drives the dashboard of a running msec in headless Chromium through WebDriver and checks
that each page renders data from the API, and that the device page updates live.

  dashboard_check.py BASE_URL USER PASSWORD   (exit 0 when every check passed; the failure otherwise)
"""
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, user, password = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp()}"]:
    options.add_argument(flag)
# An explicit driver path: Selenium must not try to download one.
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 20)


def rows(selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


try:
    driver.get(base + "/#/")
    # Nothing is shown before logging in.
    wait.until(lambda d: len(rows("#login-user")) > 0)
    assert not rows("#devices-table"), "devices shown before login"
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait.until(lambda d: len(rows("#devices-table tr[data-device-id]")) > 0)
    ids = {r.get_attribute("data-device-id") for r in rows("#devices-table tr[data-device-id]")}
    for expected in ["park-env-01", "park-people-01", "home-001-bed", "truck-01"]:
        assert expected in ids, f"{expected} missing from the devices page: {sorted(ids)}"
    assert "live" == driver.find_element(By.ID, "live").text, "the live stream did not connect"

    driver.get(base + "/#/map")
    wait.until(lambda d: len(rows(".map svg circle")) > 0)
    assert {m.get_attribute("data-tenant") for m in rows(".map svg")} >= {"santander", "fujisawa"}

    driver.get(base + "/#/device/truck-01")
    wait.until(lambda d: len(rows('.chart[data-series="temperature"] polyline')) > 0)
    first = rows("#readings-table tr[data-sequence]")[0].get_attribute("data-sequence")
    # The truck publishes every few hundred ms: a newer reading must appear without a reload.
    wait.until(lambda d: rows("#readings-table tr[data-sequence]")[0].get_attribute("data-sequence") != first)

    driver.get(base + "/#/security")
    wait.until(lambda d: len(rows("#events-table tr[data-event-id]")) > 0)
    assert "malformed_envelope" in driver.find_element(By.ID, "events-table").text
    print("dashboard checks passed")
finally:
    driver.quit()
