"""Procedural, licence-free face images for the built-in demo dataset.

`render_face(seed, index)` draws one frontal face at 4x the output size with
PIL (varied skin tones, face shape, hair, eyes with iris, pupil, highlight and
lids, brows, nose shading, lips, ears, neck and clothes, backgrounds, a light
direction and small pose jitter), softens it with the blur a lens gives, and
downsamples it with an antialiasing filter so that edges look photographic.
The same (seed, index) always gives the same image.
"""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SKIN_TONES = [  # light to deep (roughly Fitzpatrick I-VI)
    (255, 224, 206), (241, 194, 167), (224, 172, 138), (198, 142, 104),
    (161, 110, 75), (125, 82, 54), (92, 58, 38), (66, 41, 28)]
HAIR_COLORS = [(20, 15, 12), (45, 30, 20), (85, 55, 30), (140, 95, 55), (200, 160, 100),
               (120, 40, 20), (160, 160, 160), (230, 220, 200)]
IRIS_COLORS = [(70, 45, 25), (110, 70, 35), (60, 90, 140), (80, 120, 80), (100, 110, 120),
               (40, 30, 20)]
LIP_SHIFT = [(-20, -60, -50), (-35, -70, -55), (-10, -50, -30)]


def _jitter(rng, color, amount):
  return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in color)


def _mix(a, b, t):
  return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def _background(rng, out_size):
  """A smooth backdrop: a vertical gradient with soft out-of-focus blobs (drawn small, upscaled)."""
  size = 64
  top = rng.integers(30, 230, 3)
  bottom = np.clip(top + rng.integers(-90, 90, 3), 0, 255)
  t = np.linspace(0, 1, size)[:, None, None]
  grad = (top[None, None] * (1 - t) + bottom[None, None] * t) * np.ones((1, size, 1))
  # Soft blobs (out-of-focus scenery).
  yy, xx = np.mgrid[0:size, 0:size] / size
  for _ in range(int(rng.integers(0, 5))):
    cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    grad += blob[..., None] * rng.uniform(-60, 60, 3)[None, None]
  small = Image.fromarray(np.clip(grad, 0, 255).astype(np.uint8))
  return small.resize((out_size, out_size), Image.BICUBIC)


def _soft_layer(size, draw_fn, blur):
  """An 'L' mask drawn by draw_fn and blurred (only around what was drawn): soft shading."""
  mask = Image.new("L", (size, size), 0)
  draw_fn(ImageDraw.Draw(mask))
  box = mask.getbbox()
  if blur <= 0 or box is None:
    return mask
  pad = int(3 * blur) + 1
  box = (max(box[0] - pad, 0), max(box[1] - pad, 0), min(box[2] + pad, size),
         min(box[3] + pad, size))
  mask.paste(mask.crop(box).filter(ImageFilter.GaussianBlur(blur)), box[:2])
  return mask


def _paint(canvas, color, mask):
  canvas.paste(Image.new("RGB", canvas.size, color), (0, 0), mask)


def _eye(canvas, rng, cx, cy, w, h, iris_color, skin, s):
  size = canvas.size[0]
  d = ImageDraw.Draw(canvas)
  # Eye socket shadow.
  _paint(canvas, _mix(skin, (60, 40, 40), 0.35), _soft_layer(
      size, lambda m: m.ellipse([cx - w * 0.8, cy - h * 1.6, cx + w * 0.8, cy + h * 0.9], 180),
      6 * s))
  # Sclera: an almond from two arcs.
  pts = []
  for t in np.linspace(0, math.pi, 24):
    pts.append((cx - w * math.cos(t), cy - h * math.sin(t) * 1.05))
  for t in np.linspace(math.pi, 2 * math.pi, 24):
    pts.append((cx - w * math.cos(t), cy - h * math.sin(t) * 0.7))
  d.polygon(pts, fill=(235, 232, 228))
  # Iris with a darker limbal ring, pupil, highlight; clipped by the lids.
  r = h * rng.uniform(0.85, 1.0)
  gaze = rng.uniform(-0.15, 0.15) * w
  eye_mask = Image.new("L", canvas.size, 0)
  ImageDraw.Draw(eye_mask).polygon(pts, fill=255)
  iris = Image.new("RGB", canvas.size, (0, 0, 0))
  di = ImageDraw.Draw(iris)
  di.ellipse([cx + gaze - r, cy - r, cx + gaze + r, cy + r], fill=_mix(iris_color, (0, 0, 0), 0.45))
  di.ellipse([cx + gaze - r * 0.85, cy - r * 0.85, cx + gaze + r * 0.85, cy + r * 0.85],
             fill=iris_color)
  di.ellipse([cx + gaze - r * 0.4, cy - r * 0.4, cx + gaze + r * 0.4, cy + r * 0.4],
             fill=(10, 8, 8))
  iris_mask = Image.new("L", canvas.size, 0)
  ImageDraw.Draw(iris_mask).ellipse([cx + gaze - r, cy - r, cx + gaze + r, cy + r], fill=255)
  canvas.paste(iris, (0, 0), Image.fromarray(np.minimum(np.asarray(eye_mask),
                                                        np.asarray(iris_mask))))
  hl = r * 0.22
  d.ellipse([cx + gaze + r * 0.25 - hl, cy - r * 0.35 - hl, cx + gaze + r * 0.25 + hl,
             cy - r * 0.35 + hl], fill=(250, 250, 250))
  # Upper lid line (with lashes' darkness) and a fainter lower lid.
  d.line(pts[:24], fill=(30, 20, 20), width=max(2, int(3 * s)))
  d.line(pts[24:], fill=_mix(skin, (80, 50, 50), 0.5), width=max(1, int(1.5 * s)))
  crease = [(x, y - h * 0.55) for x, y in pts[3:21]]
  d.line(crease, fill=_mix(skin, (60, 40, 40), 0.35), width=max(1, int(1.5 * s)))


def render_face(seed: int, index: int, size: int = 128, supersample: int = 4) -> np.ndarray:
  """One demo face as a (size, size, 3) uint8 array, deterministic in (seed, index)."""
  rng = np.random.default_rng([seed, index])
  out = size * supersample
  margin = out // 8  # drawn beyond the frame so that the pose rotation leaves no corners
  big = out + 2 * margin
  s = out / 512.0  # drawing units are for a 512 canvas
  canvas = _background(rng, big)
  skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 6)
  hair = _jitter(rng, HAIR_COLORS[rng.integers(len(HAIR_COLORS))], 8)
  cx = big / 2 + rng.normal(0, 10) * s
  cy = big / 2 + rng.normal(8, 8) * s
  fw = rng.uniform(135, 170) * s  # half-width of the face
  fh = fw * rng.uniform(1.2, 1.45)
  d = ImageDraw.Draw(canvas)
  # Neck, shoulders and clothes.
  cloth = tuple(int(c) for c in rng.integers(20, 235, 3))
  d.rectangle([cx - fw * 0.45, cy + fh * 0.5, cx + fw * 0.45, big], fill=_mix(skin, (0, 0, 0), 0.15))
  d.ellipse([cx - fw * 2.0, cy + fh * 1.05, cx + fw * 2.0, cy + fh * 2.6], fill=cloth)
  # Hair behind the head (length varies).
  hair_len = rng.uniform(0.3, 1.3)
  if rng.uniform() < 0.9:
    d.ellipse([cx - fw * 1.2, cy - fh * 1.25, cx + fw * 1.2, cy + fh * hair_len], fill=hair)
  # Ears.
  for side in (-1, 1):
    ex = cx + side * fw * 0.98
    d.ellipse([ex - fw * 0.14, cy - fh * 0.12, ex + fw * 0.14, cy + fh * 0.22], fill=skin)
  # Face: an ellipse with a narrower jaw.
  d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh * 0.75], fill=skin)
  jaw = rng.uniform(0.55, 0.8)
  d.polygon([(cx - fw * 0.97, cy), (cx + fw * 0.97, cy), (cx + fw * jaw, cy + fh * 0.8),
             (cx, cy + fh * rng.uniform(1.0, 1.08)), (cx - fw * jaw, cy + fh * 0.8)], fill=skin)
  d.ellipse([cx - fw * jaw, cy + fh * 0.55, cx + fw * jaw, cy + fh * 1.06], fill=skin)
  # Light: a side darkened, the other lit, fading over the face.
  light = rng.uniform(-1, 1)
  face_mask = _soft_layer(big, lambda m: m.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], 255), 0)
  ramp = np.linspace(-1, 1, big)[None, :] * light
  shade = (np.clip(ramp, 0, 1) * 90 * np.asarray(face_mask) / 255.0).astype(np.uint8)
  _paint(canvas, _mix(skin, (0, 0, 0), 0.5), Image.fromarray(shade).filter(
      ImageFilter.GaussianBlur(20 * s)))
  # Fringe / top hair over the forehead.
  fringe = rng.uniform(0.45, 0.8)
  if rng.uniform() < 0.85:
    d.chord([cx - fw * 1.08, cy - fh * 1.2, cx + fw * 1.08, cy - fh * (1.2 - 2 * fringe * 0.55)],
            180, 360, fill=hair)
    top, edge = cy - fh * 1.15, cy - fh * (1.2 - 2 * fringe * 0.55) - fh * 0.12
    for _ in range(int(60 * s) + 10):  # strands, slightly lighter or darker than the hair
      x0 = cx + rng.uniform(-0.9, 0.9) * fw
      y0 = rng.uniform(top, (top + edge) / 2)
      shade = (255, 255, 255) if rng.uniform() < 0.5 else (0, 0, 0)
      d.line([(x0, y0), (x0 + rng.normal(0, 10) * s, rng.uniform((top + edge) / 2, edge))],
             fill=_mix(hair, shade, rng.uniform(0.03, 0.12)), width=max(1, int(2 * s)))
  # Eyes and brows.
  eye_y = cy - fh * rng.uniform(0.05, 0.15)
  eye_dx = fw * rng.uniform(0.38, 0.46)
  ew, eh = fw * rng.uniform(0.2, 0.25), fw * rng.uniform(0.085, 0.11)
  iris = _jitter(rng, IRIS_COLORS[rng.integers(len(IRIS_COLORS))], 10)
  brow_t = rng.uniform(4, 9) * s
  for side in (-1, 1):
    ex = cx + side * eye_dx
    _eye(canvas, rng, ex, eye_y, ew, eh, iris, skin, s)
    by = eye_y - eh * rng.uniform(2.2, 3.0)
    d.line([(ex - side * ew * 1.1, by + eh * 0.6), (ex, by - eh * 0.3), (ex + side * ew * 1.2,
                                                                          by + eh * 0.4)],
           fill=_mix(hair, (0, 0, 0), 0.3), width=int(brow_t), joint="curve")
  # Nose: bridge shadow on the unlit side, a lit tip, nostrils.
  ny = cy + fh * rng.uniform(0.22, 0.3)
  nw = fw * rng.uniform(0.16, 0.22)
  side = 1 if light > 0 else -1
  _paint(canvas, _mix(skin, (40, 20, 10), 0.45), _soft_layer(
      big, lambda m: m.polygon([(cx + side * nw * 0.3, eye_y), (cx + side * nw * 0.8, ny),
                                (cx + side * nw * 0.2, ny)], 200), 7 * s))
  _paint(canvas, _mix(skin, (255, 255, 255), 0.25), _soft_layer(
      big, lambda m: m.ellipse([cx - nw * 0.4, ny - nw * 0.5, cx + nw * 0.4, ny + nw * 0.1], 200),
      6 * s))
  for sx in (-1, 1):
    d.ellipse([cx + sx * nw * 0.55 - nw * 0.22, ny + nw * 0.15, cx + sx * nw * 0.55 + nw * 0.22,
               ny + nw * 0.42], fill=_mix(skin, (30, 15, 10), 0.6))
  # Lips: upper and lower shapes and the mouth line.
  my = cy + fh * rng.uniform(0.5, 0.58)
  mw = fw * rng.uniform(0.3, 0.42)
  lip = tuple(int(np.clip(c + dc, 0, 255))
              for c, dc in zip(skin, LIP_SHIFT[rng.integers(len(LIP_SHIFT))]))
  up, low = eh * rng.uniform(0.7, 1.1), eh * rng.uniform(1.0, 1.6)
  d.polygon([(cx - mw, my), (cx - mw * 0.4, my - up), (cx, my - up * 0.7), (cx + mw * 0.4, my - up),
             (cx + mw, my)], fill=_mix(lip, (0, 0, 0), 0.12))
  d.chord([cx - mw, my - low, cx + mw, my + low], 0, 180, fill=lip)
  smile = rng.uniform(-0.15, 0.35) * up
  d.line([(cx - mw, my - smile), (cx - mw * 0.5, my), (cx + mw * 0.5, my), (cx + mw, my - smile)],
         fill=_mix(lip, (0, 0, 0), 0.55), width=max(1, int(2.5 * s)), joint="curve")
  # Cheek blush.
  for sx in (-1, 1):
    _paint(canvas, _mix(skin, (220, 90, 90), 0.35), _soft_layer(
        big, lambda m, sx=sx: m.ellipse([cx + sx * fw * 0.55 - fw * 0.18, ny - fw * 0.12,
                                         cx + sx * fw * 0.55 + fw * 0.18, ny + fw * 0.16],
                                        int(rng.uniform(40, 110))), 14 * s))
  # Pose jitter, lens softness, antialiased downsampling, a little sensor noise.
  canvas = canvas.rotate(rng.normal(0, 4), resample=Image.BICUBIC, center=(cx, cy))
  canvas = canvas.crop((margin, margin, margin + out, margin + out))
  canvas = canvas.filter(ImageFilter.GaussianBlur(0.6 * supersample))
  small = np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.float64)
  small += rng.normal(0, rng.uniform(0.5, 2.0), small.shape)
  return np.clip(np.round(small), 0, 255).astype(np.uint8)
