#!/usr/bin/env python3
"""A caregiver in headless Chromium: logs in through the dashboard's form, sees only the device
a resident granted, watches its readings arrive live, and, once the grant is revoked, receives
no more readings without reloading. The Rust test drives the device and the grant; the two
synchronise over stdin/stdout, one line per step.

  access_check.py BASE_URL USER PASSWORD DEVICE_ID
"""
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, user, password, device = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3], sys.argv[4]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp()}"]:
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 20)


def rows(selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def step(name):
    print(name, flush=True)
    line = sys.stdin.readline().strip()
    assert line == "go", f"expected go after {name}, got {line!r}"


def sequences():
    return [r.get_attribute("data-sequence") for r in rows("#readings-table tr[data-sequence]")]


try:
    driver.get(base + "/#/")
    wait.until(lambda d: len(rows("#login-user")) > 0)
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait.until(lambda d: len(rows("#devices-table tr[data-device-id]")) > 0)
    ids = {r.get_attribute("data-device-id") for r in rows("#devices-table tr[data-device-id]")}
    assert ids == {device}, f"the caregiver sees more than the granted device: {sorted(ids)}"
    assert driver.find_element(By.ID, "whoami").text == user
    # Security events are for auditors: the page is not offered.
    assert not driver.find_element(By.CSS_SELECTOR, 'nav a[data-nav="security"]').is_displayed()

    driver.get(base + f"/#/device/{device}")
    wait.until(lambda d: "1" in sequences())
    wait.until(lambda d: driver.find_element(By.ID, "live").text == "live")
    step("ready")            # the test publishes reading 2
    wait.until(lambda d: "2" in sequences())
    step("live-ok")          # the test revokes the grant, then publishes reading 3
    time.sleep(4)
    seen = sequences()
    assert "3" not in seen, f"a reading arrived after the grant was revoked: {seen}"
    assert driver.current_url.endswith(f"/#/device/{device}"), "the page was reloaded"
    print("revoked-ok", flush=True)
finally:
    driver.quit()
