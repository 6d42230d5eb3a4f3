r"""A local web demo: drop a photo, see every face restored (Gradio, on 127.0.0.1).

  sfmnet-demo                          # the demo run (runs/demo) after `python train.py`
  sfmnet-demo --checkpoint=SFMNet_x8.pth --scale=8 --port=7860

The page takes an uploaded or dropped photo (or the built-in astronaut group
photo), finds the faces (dlib), restores each with SFMNet through the
whole-photo pipeline of `sfmnet-infer`, and shows: the photo with numbered
face boxes, the restored photo beside the plainly upscaled one (a slider), a
gallery of every face as LR | bicubic | SFMNet | frequency branch, per-face
timings, and downloads (the restored PNG, a zip of the crops). The model is
loaded and compiled once at start-up; requests are queued and run one at a
time. It listens on 127.0.0.1 unless --listen is given; uploads are limited to
--max_upload_mb and --max_pixels; everything it writes stays in its scratch
folder (deleted on exit). A checkpoint that fails to load, a file that is not
an image, a photo without faces or over the limit: the page says so and the
server keeps running.
"""

from sfmnet_jax import runtime

if __name__ == "__main__":
  runtime.prepare_process()  # before JAX starts (CPU-only hosts: see sfmnet_jax/cpu/process.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sfmnet_jax import cli  # noqa: E402
from sfmnet_jax.data import degradation, image_io  # noqa: E402
from sfmnet_jax.faces import detection as face_detection  # noqa: E402
from sfmnet_jax.faces import photo  # noqa: E402

MODES = ("Whole photo", "Faces only")


def define_flags(fv):
  f = cli.flags
  f.DEFINE_string("checkpoint", "runs/demo", "A training workdir, checkpoint folder, convert "
                  "folder or release .pth/.npz.", flag_values=fv)
  f.DEFINE_enum("scale", None, ["4", "8", "16"], "For checkpoints that do not record it.",
                flag_values=fv)
  f.DEFINE_string("host", "127.0.0.1", "Address to listen on.", flag_values=fv)
  f.DEFINE_bool("listen", False, "Listen on all interfaces (0.0.0.0): anyone who reaches this "
                "machine can use the page.", flag_values=fv)
  f.DEFINE_integer("port", 7860, "Port.", flag_values=fv)
  f.DEFINE_integer("max_upload_mb", 20, "Largest upload accepted.", flag_values=fv)
  f.DEFINE_integer("max_pixels", 8_000_000, "Largest photo (pixels) restored.", flag_values=fv)
  f.DEFINE_string("convention", "celeba", "Crop convention of the model's training data.",
                  flag_values=fv)
  f.DEFINE_integer("upsample", 2, "Detector upsamplings.", flag_values=fv)
  f.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype of the "
                "generator.", flag_values=fv)
  f.DEFINE_string("scratch_dir", None, "Where uploads and results go (default: a new "
                  "temporary folder, removed on exit).", flag_values=fv)


class Restorer:
  """The loaded, compiled model and what one request does with it (no Gradio here)."""

  def __init__(self, checkpoint, scale=None, convention="celeba", upsample=2,
               max_pixels=8_000_000, scratch_dir=None, dtype="float32"):
    self.convention, self.upsample, self.max_pixels = convention, upsample, max_pixels
    self.dtype = dtype
    self.scratch = scratch_dir or tempfile.mkdtemp(prefix="sfmnet_app_")
    os.makedirs(self.scratch, exist_ok=True)
    self.error, self.model, self.scale = None, None, None
    try:
      from sfmnet_jax.weights import checkpoints
      self.model, self.variables, info = checkpoints.load_generator(
          checkpoint, scale=scale, scale_flag="--scale", dtype=dtype)
      self.scale = info["scale"]
      if self.scale is None:
        raise ValueError(f"{checkpoint} does not record its scale: start the app with --scale")
      self.generator = photo.as_generator(self.model, self.variables)
      t0 = time.perf_counter()
      side = degradation.lr_size(self.scale)
      photo.super_resolve(self.model, self.variables, np.zeros((1, side, side, 3), np.uint8))
      logging.info("model from %s (x%d) compiled in %.1f s", checkpoint, self.scale,
                   time.perf_counter() - t0)
    except Exception as e:  # pylint: disable=broad-except  (the page shows it)
      self.error = f"The checkpoint {checkpoint!r} could not be loaded: {e}"
      logging.error("%s", self.error)

  def request_dir(self) -> str:
    return tempfile.mkdtemp(prefix="request_", dir=self.scratch)

  def run(self, image_path, detector="auto", mode=MODES[0], example=False):
    """(annotated, (upscaled, restored) or None, gallery, status markdown, downloads)."""
    if self.error:
      return None, None, [], f"**Error.** {self.error}", []
    try:
      if example:
        from sfmnet_jax.apps.infer import demo_group_photo
        image, name = demo_group_photo(self.scale), "astronaut_group"
      elif not image_path:
        return None, None, [], "Upload or drop a photo first.", []
      else:
        image, name = read_upload(image_path, self.max_pixels)
    except image_io.ImageTooLarge as e:
      return None, None, [], f"**Photo too large.** {e}", []
    except (image_io.ImageReadError, OSError) as e:
      return None, None, [], f"**Not an image.** {e}", []
    t0 = time.perf_counter()
    result = photo.restore_photo(image, {self.scale: self.generator},
                                 convention=self.convention, detector=detector,
                                 upsample=self.upsample)
    total = time.perf_counter() - t0
    annotated = photo.annotate(image, result.faces)
    if not result.faces:
      return annotated, None, [], (f"**No face found** in the {image.shape[1]}x{image.shape[0]} "
                                   f"photo: {photo.size_range(detector, self.scale)}; "
                                   "smaller faces are too small to find."), []
    out_dir = self.request_dir()
    gallery, lines, crops = [], [], []
    restored = [pf for pf in result.faces if pf.sr is not None]
    per_face = result.timings["super_resolve"] / max(len(restored), 1)
    for pf in result.faces:
      if pf.sr is None:
        lines.append(f"- face {pf.index}: {pf.decision(self.scale)}, score {pf.face.score:.2f}")
        continue
      row = _face_row(pf)
      gallery.append((row, f"face {pf.index}: LR | bicubic | SFMNet | frequency branch"))
      path = os.path.join(out_dir, f"{name}_face{pf.index:02d}.png")
      Image.fromarray(row).save(path)
      crops.append(path)
      lines.append(f"- face {pf.index}: {pf.decision(self.scale)}, score {pf.face.score:.2f}, "
                   f"super-resolved in {per_face * 1e3:.0f} ms")
    restored_path = os.path.join(out_dir, f"{name}_restored_x{self.scale}.png")
    Image.fromarray(result.restored).save(restored_path)
    zip_path = os.path.join(out_dir, f"{name}_faces.zip")
    with zipfile.ZipFile(zip_path, "w") as z:
      for path in crops:
        z.write(path, os.path.basename(path))
    h, w = result.restored.shape[:2]
    status = "\n".join([
        f"**{len(result.faces)} face(s)** found, {len(restored)} restored at x{self.scale} "
        f"({self.dtype}); "
        f"restored photo {w}x{h}.",
        f"Detection {result.timings['detect']:.2f} s, super-resolution "
        f"{result.timings['super_resolve']:.2f} s, paste {result.timings['paste']:.2f} s, "
        f"total {total:.2f} s.", f"Sizes: {photo.size_range(detector, self.scale)}.", "",
        *lines])
    slider = None if mode == MODES[1] else (result.upscaled, result.restored)
    return annotated, slider, gallery, status, [restored_path, zip_path]


def read_upload(path, max_pixels):
  """(image, name stem) of an uploaded file; errors name the upload by its own file name.

  Gradio keeps an upload at `<scratch>/uploads/<hash>/<its name>`; a visitor sees
  only `<its name>` in a message, never the server's folders.
  """
  path = os.fspath(path)
  shown = os.path.basename(path)
  image = image_io.read_rgb(path, max_pixels=max_pixels, name=shown)
  return image, os.path.splitext(shown)[0]


def _face_row(pf) -> np.ndarray:
  """LR (nearest-neighbour to 128) | bicubic LR-up | SFMNet | frequency branch, side by side."""
  from sfmnet_jax.data.visualize import grid
  return grid([[pf.lr, pf.lr_up, pf.sr, pf.fre]])


def build_page(restorer: Restorer):
  import gradio as gr
  with gr.Blocks(title="SFMNet face restoration") as page:
    gr.Markdown("## SFMNet: restore every face in a photo\nDrop a photo with small faces, or "
                "use the example. Faces are found with dlib, aligned, super-resolved by SFMNet "
                "and pasted back into the upscaled photo.")
    if restorer.error:
      gr.Markdown(f"**Error.** {restorer.error}")
    with gr.Row():
      with gr.Column(scale=1):
        # A file input, not gr.Image: a file that is not an image reaches our reader, and the
        # page explains it, instead of failing in Gradio's preprocessing.
        upload = gr.File(label="Photo (drop or click to upload)", type="filepath",
                         elem_id="photo")
        with gr.Row():
          gr.Dropdown([f"x{restorer.scale}"] if restorer.scale else ["-"],
                      value=f"x{restorer.scale}" if restorer.scale else "-",
                      label="Scale (the checkpoint's)", interactive=False)
          detector = gr.Radio(list(face_detection.DETECTORS), value="auto", label="Detector")
        mode = gr.Radio(list(MODES), value=MODES[0], label="Show")
        with gr.Row():
          run = gr.Button("Restore", variant="primary", elem_id="restore")
          example = gr.Button("Astronaut example", elem_id="example")
        status = gr.Markdown(elem_id="status")
        downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
      with gr.Column(scale=2):
        annotated = gr.Image(label="Faces found", type="numpy", elem_id="annotated",
                             interactive=False)
        slider = gr.ImageSlider(label="Bicubic | SFMNet", type="numpy", elem_id="slider")
        gallery = gr.Gallery(label="Faces: LR | bicubic | SFMNet | frequency branch",
                             columns=1, elem_id="gallery")
    outputs = [annotated, slider, gallery, status, downloads]
    run.click(lambda p, d, m: restorer.run(p, d, m), [upload, detector, mode], outputs)
    example.click(lambda d, m: restorer.run(None, d, m, example=True), [detector, mode], outputs)
  return page


def _main(fv, positional) -> int:
  if positional:
    raise cli.UsageError(f"unexpected arguments {positional}")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  scratch = fv.scratch_dir or tempfile.mkdtemp(prefix="sfmnet_app_")
  os.environ["GRADIO_TEMP_DIR"] = os.path.join(scratch, "uploads")  # gradio's uploads, too
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  restorer = Restorer(fv.checkpoint, int(fv.scale) if fv.scale else None, fv.convention,
                      fv.upsample, fv.max_pixels, os.path.join(scratch, "results"), fv.dtype)
  host = "0.0.0.0" if fv.listen else fv.host
  if host not in ("127.0.0.1", "localhost"):
    logging.warning("listening on %s: anyone who can reach this machine can use the page", host)
  page = build_page(restorer)
  page.queue(default_concurrency_limit=1, max_size=16)
  try:
    print(f"SFMNet demo on http://{host}:{fv.port} (Ctrl-C stops it)", flush=True)
    page.launch(server_name=host, server_port=fv.port, max_file_size=f"{fv.max_upload_mb}mb",
                share=False, show_error=True, quiet=True, allowed_paths=[scratch],
                footer_links=[])
  finally:
    if not fv.scratch_dir:
      shutil.rmtree(scratch, ignore_errors=True)
  return 0


def main(argv=None) -> int:
  return cli.run(_main, argv, define_flags, __doc__, "sfmnet-demo")


def start_in_subprocess(checkpoint, scratch_dir, *, stdout=None, timeout=300.0, cwd=None):
  """Starts `sfmnet-demo` on a free local port and waits until the page answers.

  Returns (process, url); the caller terminates the process. Raises RuntimeError
  when the server exits or does not answer within `timeout` seconds.
  """
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, "-m", "sfmnet_jax.apps.web", f"--checkpoint={checkpoint}",
                           f"--port={port}", f"--scratch_dir={scratch_dir}"],
                          cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT if stdout else None)
  url = f"http://127.0.0.1:{port}/"
  deadline = time.time() + timeout
  while True:
    try:
      urllib.request.urlopen(url, timeout=2)
      return proc, url
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        raise RuntimeError(f"the app did not start on {url}") from None
      time.sleep(1)


if __name__ == "__main__":
  sys.exit(main())
