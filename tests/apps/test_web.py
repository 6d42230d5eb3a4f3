"""The web demo in a real headless Chromium: upload, restore, errors, and the server lives on."""

import os
import shutil
import urllib.request

import numpy as np
import pytest
from PIL import Image

from helpers import GOLDEN, REPO
from sfmnet_jax.apps import web as app
from sfmnet_jax.data import astronaut
from sfmnet_jax.weights import convert

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install "
                "chromium)")
  root = tmp_path_factory.mktemp("app")
  assert convert.main([str(GOLDEN), str(root / "x4"), "--scale=4"]) == 0
  log = open(root / "server.log", "w")
  try:
    proc, url = app.start_in_subprocess(root / "x4", root / "scratch", stdout=log, cwd=REPO)
  except RuntimeError as e:
    log.close()
    raise AssertionError(f"{e}: " + (root / "server.log").read_text()[-3000:]) from None
  yield {"url": url, "root": root, "proc": proc}
  proc.terminate()
  proc.wait(timeout=60)
  log.close()


def _restore(page, path, detector="auto"):
  clear = page.locator("#photo button[aria-label=Clear]")
  if clear.count():
    clear.first.click()
  page.locator("#photo input[type=file]").set_input_files(str(path))
  page.get_by_label(detector, exact=True).check()
  page.locator("#restore").click()


def test_page_restores_a_group_photo_and_survives_bad_uploads(server, tmp_path):
  from playwright.sync_api import sync_playwright
  image, _ = astronaut.astronaut_group_photo(3, (240, 360), 14.0, seed=2)
  Image.fromarray(image).save(tmp_path / "group.png")
  (tmp_path / "notes.png").write_text("this is not an image")
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(server["url"], wait_until="networkidle")
    _restore(page, tmp_path / "group.png")
    page.wait_for_selector("#status :text('face(s)')", timeout=180_000)
    status = page.locator("#status").inner_text()
    assert "3 face(s) found, 3 restored at x4 (float32)" in status and "1440x960" in status, status
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 3")
    links = [a.get_attribute("href") for a in page.locator("#downloads a").all()]
    restored = [h for h in links if h and "restored_x4.png" in h]
    assert restored, links
    path = tmp_path / "restored.png"
    urllib.request.urlretrieve(restored[0] if restored[0].startswith("http")
                               else server["url"].rstrip("/") + restored[0], path)
    assert Image.open(path).size == (360 * 4, 240 * 4)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert np.asarray(Image.open(tmp_path / "page.png")).std() > 10  # a page, not a blank
    # A file that is not an image: the page says so, and the next request works.
    _restore(page, tmp_path / "notes.png")
    page.wait_for_selector("#status :text('Not an image')", timeout=60_000)
    status = page.locator("#status").inner_text()
    # The visitor's own file name, never the server's scratch folder.
    assert "notes.png: not a readable image" in status, status
    assert str(server["root"]) not in status and "uploads" not in status, status
    _restore(page, tmp_path / "group.png")
    page.wait_for_selector("#status :text('3 face(s) found')", timeout=120_000)
    browser.close()
  assert server["proc"].poll() is None
  # Everything the app wrote is in its scratch folder.
  written = [os.path.join(d, f) for d, _, fs in os.walk(server["root"] / "scratch") for f in fs]
  assert any(f.endswith("restored_x4.png") for f in written)
