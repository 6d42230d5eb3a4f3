r"""Super-resolves faces with a trained or released SFMNet: LR crops, or whole photos.

  sfmnet-infer --checkpoint=runs/demo --input=photo.jpg --output=out
  sfmnet-infer --checkpoint=SFMNet_x8.pth --scale=8 --input=photos/ --output=out
  sfmnet-infer --checkpoint=runs/demo --demo --output=out   # astronaut group photo

An input of the model's LR size (128/scale, e.g. 16x16 at x8) is an aligned LR
face and is super-resolved as it is (`<name>_sfmnet_x8.png`, 128x128). A
larger photo goes through the whole-photo pipeline (`photo.py`): every face is
detected (dlib, offline), aligned into the training crop (--convention),
sampled at the LR size, super-resolved and blended back into the photo
upscaled by the model's scale. Per photo it writes
  <name>_restored_x8.png   the photo, upscaled, with the faces restored
  <name>_faces.png         the photo with numbered face boxes and landmarks
  <name>_faces.json        every face: box, landmarks, score, transform, what was done
  <name>_face01_lr.png, <name>_face01_sfmnet_x8.png, ...  each face's crops
(--freq adds the frequency branch, --bicubic the bicubic baselines). Faces too
large for the scale are left as they are and reported (--restore_large to
restore them anyway). --nodetect keeps the old behaviour for photos: centre
crop to a square, PIL-bicubic to the LR size. Unreadable files and photos over
--max_pixels are skipped and counted; a photo without faces is reported.
"""

from sfmnet_jax import runtime

if __name__ == "__main__":
  runtime.prepare_process()  # before JAX starts (CPU-only hosts: see sfmnet_jax/cpu/process.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from sfmnet_jax import cli  # noqa: E402
from sfmnet_jax.data import degradation, image_io  # noqa: E402
from sfmnet_jax.data.degradation import HR_SIZE  # noqa: E402
from sfmnet_jax.data.visualize import save_png  # noqa: E402
from sfmnet_jax.faces import alignment, photo  # noqa: E402
from sfmnet_jax.faces import detection as face_detection  # noqa: E402
from sfmnet_jax.weights import checkpoints  # noqa: E402


def define_flags(fv):
  f = cli.flags
  f.DEFINE_string("checkpoint", "runs/demo", "A training workdir, checkpoint folder, convert "
                  "folder or release .pth/.npz.", flag_values=fv)
  f.DEFINE_string("input", None, "An image file or a folder of images.", flag_values=fv)
  f.DEFINE_string("output", None, "Output folder.", flag_values=fv)
  f.DEFINE_enum("scale", None, ["4", "8", "16"], "Needed when the checkpoint does not record "
                "it (release files).", flag_values=fv)
  f.DEFINE_bool("demo", False, "Use a built-in group photo of the public-domain astronaut.",
                flag_values=fv)
  f.DEFINE_bool("detect", True, "Find faces in photos (--nodetect: centre-crop instead).",
                flag_values=fv)
  f.DEFINE_enum("detector", "auto", list(face_detection.DETECTORS), "Face detector.",
                flag_values=fv)
  f.DEFINE_integer("upsample", 2, "Detector upsamplings (each doubles the size: 2 finds faces "
                   "of ~20 px).", flag_values=fv)
  f.DEFINE_float("min_score", None, "Drop detections below this score.", flag_values=fv)
  f.DEFINE_string("convention", "celeba", "Crop convention the model was trained on: celeba, "
                  "helen, dic (68 points: non-commercial) or a JSON template file.",
                  flag_values=fv)
  f.DEFINE_bool("restore_large", False, "Also restore faces larger than the scale suits.",
                flag_values=fv)
  f.DEFINE_bool("freq", False, "Also save the frequency branch.", flag_values=fv)
  f.DEFINE_bool("bicubic", False, "Also save bicubic upsampling.", flag_values=fv)
  f.DEFINE_bool("ema", True, "Use EMA weights when the checkpoint has them.", flag_values=fv)
  f.DEFINE_integer("max_pixels", photo.DEFAULT_MAX_PIXELS, "Refuse larger photos.",
                   flag_values=fv)


def demo_group_photo(scale: int):
  """Three astronauts, faces about 0.65 x the LR crop's side (at x4 ~21 px; at least 20 px,
  what the detector finds, so at x8 and x16 they are too large and left as they are)."""
  from sfmnet_jax.data import demo_faces
  width = max(0.65 * HR_SIZE / scale, 20.0)
  return demo_faces.astronaut_group_photo(3, (240, 360), width, seed=1)[0]


def collect_inputs(paths, max_pixels):
  """(name, image) for every readable file, and (path, error) for the skipped ones."""
  images, skipped = [], []
  for path in paths:
    try:
      images.append((os.path.splitext(os.path.basename(path))[0],
                     image_io.read_rgb(path, max_pixels=max_pixels)))
    except (image_io.ImageReadError, image_io.ImageTooLarge) as e:
      logging.warning("skipping %s", e)
      skipped.append((path, str(e)))
  return images, skipped


def write_photo(result: photo.PhotoResult, name: str, out_dir: str, freq: bool, bicubic: bool):
  s = result.scale
  save_png(result.restored, os.path.join(out_dir, f"{name}_restored_x{s}.png"))
  if bicubic:
    save_png(result.upscaled, os.path.join(out_dir, f"{name}_bicubic_x{s}.png"))
  save_png(photo.annotate(result.photo, result.faces), os.path.join(out_dir, f"{name}_faces.png"))
  for pf in result.faces:
    if pf.sr is None:
      continue
    stem = os.path.join(out_dir, f"{name}_face{pf.index:02d}")
    save_png(pf.lr, f"{stem}_lr.png")
    save_png(pf.sr, f"{stem}_sfmnet_x{s}.png")
    if freq:
      save_png(pf.fre, f"{stem}_sfmnet_x{s}_freq.png")
    if bicubic:
      save_png(pf.lr_up, f"{stem}_bicubic_x{s}.png")
  with open(os.path.join(out_dir, f"{name}_faces.json"), "w") as f:
    json.dump(result.to_json(), f, indent=1)


def run(fv) -> int:
  model, variables, info = checkpoints.load_generator(
      fv.checkpoint, use_ema=fv.ema, scale=int(fv.scale) if fv.scale else None,
      scale_flag="--scale")
  scale = info["scale"]
  if scale is None:
    raise ValueError(f"{fv.checkpoint} does not record its scale: pass --scale=4, 8 or 16")
  convention = alignment.get_convention(fv.convention)
  convention.warn_licence()
  if fv.demo:
    images, skipped = [("astronaut_group", demo_group_photo(scale))], []
  else:
    if not fv.input or not os.path.exists(fv.input):
      raise FileNotFoundError(f"--input not found: {fv.input}")
    paths = ([os.path.join(fv.input, n) for n in image_io.list_image_files(fv.input)]
             if os.path.isdir(fv.input) else [fv.input])
    images, skipped = collect_inputs(paths, fv.max_pixels)
  if not images:
    raise ValueError(f"no readable image in {fv.input} ({len(skipped)} skipped)")
  lr_size = degradation.lr_size(scale)
  os.makedirs(fv.output, exist_ok=True)
  crops, counts = [], {"photos": 0, "faces": 0, "too_large": 0, "no_face": 0}
  for name, image in images:
    if image.shape[:2] == (lr_size, lr_size):
      crops.append((name, image))
    elif not fv.detect:
      logging.info("%s: %dx%d photo, centre-cropped and resized to %dx%d (--nodetect)", name,
                   image.shape[1], image.shape[0], lr_size, lr_size)
      crops.append((name, image_io.to_square_size(image, lr_size)))
    else:
      result = photo.restore_photo(image, model, variables, scale, convention=convention,
                                   detector=fv.detector, upsample=fv.upsample,
                                   min_score=fv.min_score, restore_large=fv.restore_large)
      counts["photos"] += 1
      if not result.faces:
        counts["no_face"] += 1
        print(f"{name}: no face found ({fv.detector} detector, {fv.upsample} upsamplings); "
              "try --upsample=3 or --detector=cnn")
        continue
      write_photo(result, name, fv.output, fv.freq, fv.bicubic)
      large = sum(pf.status == "too_large" for pf in result.faces)
      counts["faces"] += len(result.faces) - large
      counts["too_large"] += large
      print(f"{name}: {len(result.faces)} face(s), {len(result.faces) - large} restored"
            + (f", {large} left as they are (too large for x{scale})" if large else "")
            + f" -> {name}_restored_x{scale}.png")
  if crops:
    lr_up, out, fre = photo.super_resolve(model, variables, [c for _, c in crops])
    for i, (name, _) in enumerate(crops):
      save_png(out[i], os.path.join(fv.output, f"{name}_sfmnet_x{scale}.png"))
      if fv.freq:
        save_png(fre[i], os.path.join(fv.output, f"{name}_sfmnet_x{scale}_freq.png"))
      if fv.bicubic:
        save_png(lr_up[i], os.path.join(fv.output, f"{name}_bicubic_x{scale}.png"))
    print(f"wrote {len(crops)} super-resolved face crop(s) (x{scale}, {HR_SIZE}x{HR_SIZE})")
  print(f"done: {counts['photos']} photo(s), {counts['faces']} face(s) restored, "
        f"{counts['too_large']} too large, {counts['no_face']} photo(s) without a face, "
        f"{len(crops)} crop(s); skipped {len(skipped)} unreadable file(s); output in {fv.output}")
  return 0


def _main(fv, positional) -> int:
  if positional:
    raise cli.UsageError(f"unexpected arguments {positional}")
  if not fv.demo and not fv.input:
    raise cli.UsageError("give --input=PATH_OR_DIR or --demo")
  if not fv.output:
    raise cli.UsageError("give --output=DIR")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    return run(fv)
  except (FileNotFoundError, ValueError, face_detection.ModelFileMissing) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
  return cli.run(_main, argv, define_flags, __doc__, "sfmnet-infer")


if __name__ == "__main__":
  sys.exit(main())
