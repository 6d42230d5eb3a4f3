r"""Super-resolves your own faces with a trained or released SFMNet.

  python -m sfmnet_jax.infer --checkpoint runs/demo/checkpoints --input face_32x32.png --output out
  python -m sfmnet_jax.infer --checkpoint SFMNet_x8.pth --scale 8 --input photos/ --output out --freq
  python -m sfmnet_jax.infer --checkpoint runs/demo/checkpoints --demo --output out

An input of the model's LR size (128/scale, e.g. 16x16 for x8) is used as it
is; any other image (a larger photo) is centre-cropped to a square and
downscaled to the LR size with PIL's bicubic, which is logged. Writes
128x128 results `<name>_sfmnet_x<scale>.png` (with --freq also the frequency
branch's output, with --bicubic the bicubic upsampling for comparison).
Unreadable files are skipped with a counted warning. --demo uses the
public-domain astronaut portrait that ships with scikit-image.
"""

import argparse
import logging
import os
import sys
from typing import List, Tuple

import jax
import numpy as np

from sfmnet_jax import checkpoints, image_io, resize
from sfmnet_jax.datasets import demo_faces
from sfmnet_jax.visualize import save_png

HR_SIZE = 128
CHUNK = 8


def prepare_lr(image: np.ndarray, lr_size: int, name: str) -> np.ndarray:
  """The image as the model's LR input (uint8, lr_size x lr_size), logging any crop/resize."""
  h, w = image.shape[:2]
  if (h, w) == (lr_size, lr_size):
    return image
  side = min(h, w)
  logging.info("%s: %dx%d image, centre-cropped to %dx%d and %s to %dx%d with PIL bicubic",
               name, w, h, side, side, "downscaled" if side > lr_size else "upscaled",
               lr_size, lr_size)
  return image_io.to_square_size(image, lr_size)


def collect_inputs(paths: List[str]) -> Tuple[List[Tuple[str, np.ndarray]], List[Tuple[str, str]]]:
  """(name, image) for every readable file, and (path, error) for the skipped ones."""
  images, skipped = [], []
  for path in paths:
    try:
      images.append((os.path.splitext(os.path.basename(path))[0], image_io.read_rgb(path)))
    except image_io.ImageReadError as e:
      logging.warning("skipping %s", e)
      skipped.append((path, str(e)))
  return images, skipped


def super_resolve(model, variables, lrs: np.ndarray):
  """(N, s, s, 3) uint8 LR faces -> (lr_up, img_out, img_fre), float in [0, 1], 128x128."""
  lr_up = np.stack([resize.resize_uint8(lr, (HR_SIZE, HR_SIZE)) for lr in lrs])
  lr_up = lr_up.astype(np.float32) / 255.0
  apply = jax.jit(model.apply)
  outs, freqs = [], []
  for i in range(0, len(lr_up), CHUNK):
    chunk = lr_up[i:i + CHUNK]
    padded = np.concatenate([chunk, np.zeros((CHUNK - len(chunk),) + chunk.shape[1:],
                                             np.float32)])  # one compiled shape
    out, fre = apply(variables, padded)
    outs.append(np.asarray(out)[:len(chunk)])
    freqs.append(np.asarray(fre)[:len(chunk)])
  return lr_up, np.concatenate(outs), np.concatenate(freqs)


def run(args) -> int:
  model, variables, info = checkpoints.load_generator(args.checkpoint, use_ema=not args.no_ema)
  scale = info["scale"] or args.scale
  if scale is None:
    raise ValueError(f"{args.checkpoint} does not record its scale: pass --scale 4, 8 or 16")
  if args.scale is not None and info["scale"] is not None and args.scale != info["scale"]:
    raise ValueError(f"{args.checkpoint} is a x{info['scale']} model, --scale says x{args.scale}")
  if args.demo:
    images, skipped = [("astronaut", demo_faces.astronaut_face(HR_SIZE))], []
  else:
    if not args.input or not os.path.exists(args.input):
      raise FileNotFoundError(f"--input not found: {args.input}")
    paths = ([os.path.join(args.input, n) for n in image_io.list_image_files(args.input)]
             if os.path.isdir(args.input) else [args.input])
    images, skipped = collect_inputs(paths)
  if not images:
    raise ValueError(f"no readable image in {args.input} ({len(skipped)} skipped)")
  lr_size = HR_SIZE // scale
  lrs = np.stack([prepare_lr(img, lr_size, name) for name, img in images])
  lr_up, out, fre = super_resolve(model, variables, lrs)
  os.makedirs(args.output, exist_ok=True)
  for i, (name, _) in enumerate(images):
    save_png(out[i], os.path.join(args.output, f"{name}_sfmnet_x{scale}.png"))
    if args.freq:
      save_png(fre[i], os.path.join(args.output, f"{name}_sfmnet_x{scale}_freq.png"))
    if args.bicubic:
      save_png(lr_up[i], os.path.join(args.output, f"{name}_bicubic_x{scale}.png"))
  print(f"wrote {len(images)} super-resolved face(s) (x{scale}, {HR_SIZE}x{HR_SIZE}) to "
        f"{args.output}" + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""))
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="checkpoint folder or release file")
  parser.add_argument("--input", help="an image file or a folder of images")
  parser.add_argument("--output", required=True, help="output folder")
  parser.add_argument("--scale", type=int, choices=(4, 8, 16), default=None,
                      help="needed when the checkpoint does not record it (release files)")
  parser.add_argument("--freq", action="store_true", help="also save the frequency branch")
  parser.add_argument("--bicubic", action="store_true", help="also save bicubic upsampling")
  parser.add_argument("--demo", action="store_true", help="use the astronaut portrait")
  parser.add_argument("--no_ema", action="store_true", help="ignore EMA weights")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  if not args.demo and not args.input:
    parser.error("give --input PATH_OR_DIR or --demo")
  try:
    return run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
