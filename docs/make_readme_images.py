r"""Makes the README's pictures (needs `python train.py` first).

  python docs/make_readme_images.py [--checkpoint=runs/demo]     # photo_before_after.png
  python docs/make_readme_images.py --app [--checkpoint=...]     # app.png: the web demo

The screenshot starts `sfmnet-demo` on a free local port, presses the
astronaut example in Debian's headless `chromium` (driven by playwright) and saves
the page once the result is shown.

The photo is scikit-image's public-domain astronaut portrait, shrunk so that her
face is ~14 px wide and placed three times on a background (the `--demo` photo of
`sfmnet-infer`). Left: the photo with the faces found; middle: one face region
of the plainly upscaled photo (PIL bicubic); right: the same region restored.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sfmnet_jax import runtime  # noqa: E402

runtime.prepare_process()

from PIL import Image, ImageDraw  # noqa: E402

from sfmnet_jax.weights import checkpoints
from sfmnet_jax.faces import photo  # noqa: E402
from sfmnet_jax.apps.infer import demo_group_photo  # noqa: E402


IMAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def app_screenshot(checkpoint):
  from playwright.sync_api import sync_playwright
  from sfmnet_jax.apps import web as app
  proc, url = app.start_in_subprocess(checkpoint, tempfile.mkdtemp(prefix="sfmnet_app_"),
                                      cwd=REPO)
  try:
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                  args=["--headless=new", "--no-sandbox", "--disable-gpu"])
      page = browser.new_page(viewport={"width": 1400, "height": 1100})
      page.goto(url, wait_until="networkidle")
      page.locator("#example").click()
      page.wait_for_selector("#status :text('face(s)')", timeout=600_000)
      page.wait_for_function("document.querySelectorAll('#gallery img').length >= 1")
      time.sleep(2)
      out = os.path.join(IMAGES, "app.png")
      page.screenshot(path=out, full_page=True)
      browser.close()
    print("wrote", out)
  finally:
    proc.terminate()
    proc.wait(timeout=60)


def main():
  checkpoint = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--checkpoint=")),
                    "runs/demo")
  if "--app" in sys.argv[1:]:
    app_screenshot(checkpoint)
    return
  model, variables, info = checkpoints.load_generator(checkpoint)
  scale = info["scale"]
  image = demo_group_photo(scale)
  result = photo.restore_photo(image, {scale: photo.as_generator(model, variables)})
  face = result.faces[0]
  x0, y0, x1, y1 = face.face.box
  cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, 1.6 * (x1 - x0)
  box = [int(round(v * scale)) for v in (cx - side / 2, cy - side / 2, cx + side / 2,
                                         cy + side / 2)]
  tile = 320
  crops = [Image.fromarray(im).crop(box).resize((tile, tile), Image.NEAREST)
           for im in (result.upscaled, result.restored)]
  annotated = Image.fromarray(photo.annotate(image, result.faces, 480))
  annotated = annotated.resize((round(annotated.width * tile / annotated.height), tile))
  canvas = Image.new("RGB", (annotated.width + 2 * tile + 20, tile + 24), (255, 255, 255))
  for x, im in zip((0, annotated.width + 10, annotated.width + tile + 20),
                   (annotated, *crops)):
    canvas.paste(im, (x, 24))
  draw = ImageDraw.Draw(canvas)
  for x, text in ((4, f"photo {image.shape[1]}x{image.shape[0]}, faces found"),
                  (annotated.width + 14, f"face 1, bicubic x{scale}"),
                  (annotated.width + tile + 24, f"face 1, SFMNet x{scale}")):
    draw.text((x, 6), text, fill=(0, 0, 0))
  out = os.path.join(IMAGES, "photo_before_after.png")
  canvas.save(out)
  print("wrote", out, result.to_json()["timings_s"])


if __name__ == "__main__":
  main()
