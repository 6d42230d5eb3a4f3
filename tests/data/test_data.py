"""Data: PIL-exact resizing, image reading, face folders, demo faces and the tf.data pipeline."""

import os
import struct
import zlib

import ml_collections
import numpy as np
import pytest
import skimage.data
from PIL import Image

from sfmnet_jax.data import astronaut, demo_render, image_io, resize, sources
from sfmnet_jax.data import pipeline


def pil_resize(image, size):
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


def astronaut128():
  return pil_resize(skimage.data.astronaut(), (128, 128))


@pytest.mark.parametrize("size", [(32, 32), (16, 16), (8, 8), (128, 128), (256, 256), (37, 19)])
def test_resize_is_bit_exact_pil_bicubic(size):
  rng = np.random.default_rng(0)
  squares = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), astronaut128(),
             rng.integers(0, 256, (178, 178, 3), dtype=np.uint8)]
  one_axis = [rng.integers(0, 256, (size[0], 53, 3), dtype=np.uint8),
              rng.integers(0, 256, (41, size[1], 3), dtype=np.uint8)]
  for image in squares[:2] if size[0] != size[1] else squares + one_axis:
    if size[0] != size[1]:
      size = (size[0], image.shape[1])  # one axis: the height only
    want = pil_resize(image, size)
    np.testing.assert_array_equal(resize.resize_uint8(image, size), want)
    np.testing.assert_array_equal(resize.tf_resize_uint8(image, size).numpy(), want)


def _cfg(tmp_path, **kw):
  base = dict(source="folder", scale=8, tfds_data_dir=str(tmp_path / "tfds"), train_dir=None,
              test_dir=None, resize_to_square=False, skip_unreadable=False,
              demo_num_train=16, demo_num_test=6, demo_seed=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _faces(n, seed=0):
  return [demo_render.render_face(seed, i) for i in range(n)]


def _write_folder(root, images, lr=None, lr_dir="LR_bicubic", names=None):
  names = names or [f"{i:03d}.png" for i in range(len(images))]
  os.makedirs(root / "HR", exist_ok=True)
  for name, img in zip(names, images):
    Image.fromarray(img).save(root / "HR" / name)
  if lr is not None:
    os.makedirs(root / lr_dir, exist_ok=True)
    for name, img in zip(names, lr):
      Image.fromarray(img).save(root / lr_dir / name)
  return root


def _all_eval(split, scale, batch=4, **kw):
  return list(pipeline.eval_dataset(split, scale, pipeline.Sharding(batch, **kw)).as_numpy_iterator())


def _as_uint8(x):
  return np.round(np.asarray(x) * 255).astype(np.uint8)


def test_folder_uses_its_lr_files_as_they_are(tmp_path):
  hr = _faces(3)
  lr = [np.asarray(Image.fromarray(h).resize((16, 16), Image.NEAREST)) for h in hr]  # not bicubic
  root = _write_folder(tmp_path / "faces", hr, lr)
  split = sources.get_split(_cfg(tmp_path, train_dir=str(root)), "train")
  assert split.num_examples == 3 and split.has_lr
  batches = _all_eval(split, 8, batch=3)
  by_name = {}
  for b in batches:
    for i in range(3):
      by_name[_as_uint8(b["hr"][0, i]).tobytes()] = (b["lr"][0, i], b["lr_up"][0, i])
  for h, l in zip(hr, lr):
    got_lr, got_up = by_name[h.tobytes()]
    np.testing.assert_array_equal(_as_uint8(got_lr), l)
    np.testing.assert_array_equal(_as_uint8(got_up), pil_resize(l, (128, 128)))


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_folder_without_lr_makes_it_like_the_release(tmp_path, scale):
  hr = _faces(2) + [astronaut128()]
  root = _write_folder(tmp_path / "faces", hr)
  split = sources.get_split(_cfg(tmp_path, scale=scale, train_dir=str(root)), "train")
  (batch,) = _all_eval(split, scale, batch=3)
  for i in range(3):
    h = _as_uint8(batch["hr"][0, i])
    lr = pil_resize(h, (128 // scale,) * 2)
    np.testing.assert_array_equal(_as_uint8(batch["lr"][0, i]), lr)
    np.testing.assert_array_equal(_as_uint8(batch["lr_up"][0, i]), pil_resize(lr, (128, 128)))


def test_plain_folder_of_any_size_with_resize_option(tmp_path):
  root = tmp_path / "photos"
  root.mkdir()
  photo = skimage.data.astronaut()[:400, :300]
  Image.fromarray(photo).save(root / "a.jpg", quality=95)
  cfg = _cfg(tmp_path, train_dir=str(root))
  with pytest.raises(ValueError, match=r"a\.jpg: HR is 300x400, expected 128x128.*resize_to_square"):
    sources.get_split(cfg, "train")
  cfg.resize_to_square = True
  (batch,) = _all_eval(sources.get_split(cfg, "train"), 8, batch=1)
  decoded = image_io.read_rgb(root / "a.jpg")
  want = pil_resize(decoded[50:350, :300], (128, 128))
  np.testing.assert_array_equal(_as_uint8(batch["hr"][0, 0]), want)


def test_odd_image_modes_are_converted(tmp_path):
  base = _faces(1)[0]
  root = tmp_path / "modes" / "HR"
  root.mkdir(parents=True)
  gray = np.asarray(Image.fromarray(base).convert("L"))
  Image.fromarray(gray).save(root / "gray.png")
  rgba = np.dstack([base, np.full(base.shape[:2], 128, np.uint8)])
  Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
  _write_png16(root / "gray16.png", gray.astype(np.uint16)[..., None] * 257)
  _write_png16(root / "rgb16.png", base.astype(np.uint16) * 257)
  Image.fromarray(base).convert("P", palette=Image.ADAPTIVE).save(root / "palette.png")
  np.testing.assert_array_equal(image_io.read_rgb(root / "gray.png"), np.dstack([gray] * 3))
  np.testing.assert_array_equal(image_io.read_rgb(root / "rgba.png"), base)  # alpha dropped
  np.testing.assert_array_equal(image_io.read_rgb(root / "gray16.png"), np.dstack([gray] * 3))
  np.testing.assert_array_equal(image_io.read_rgb(root / "rgb16.png"), base)
  assert image_io.read_rgb(root / "palette.png").shape == (128, 128, 3)
  split = sources.get_split(_cfg(tmp_path, train_dir=str(tmp_path / "modes")), "train")
  assert split.num_examples == 5


def _write_png16(path, arr):
  """A 16-bit PNG (grayscale or RGB), written by hand: Pillow cannot write 16-bit RGB."""
  h, w, c = arr.shape
  raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  header = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 0, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _corrupt_files(root):
  png = root / "HR" / "000.png"
  (root / "HR" / "truncated.png").write_bytes(png.read_bytes()[:300])
  (root / "HR" / "notes.txt").write_text("not an image")
  (root / "HR" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are ignored


def test_unreadable_files_error_or_counted_skip(tmp_path):
  root = _write_folder(tmp_path / "faces", _faces(3))
  _corrupt_files(root)
  cfg = _cfg(tmp_path, train_dir=str(root))
  with pytest.raises(image_io.ImageReadError, match=r"notes\.txt: not a readable image"):
    sources.get_split(cfg, "train")
  cfg.skip_unreadable = True
  split = sources.get_split(cfg, "train")
  assert split.num_examples == 3
  assert sorted(os.path.basename(s["path"]) for s in split.skipped) == ["notes.txt",
                                                                       "truncated.png"]
  # Reported again when the prepared data is reused.
  assert len(sources.get_split(cfg, "train").skipped) == 2
  with pytest.raises(image_io.ImageReadError, match=r"truncated\.png"):
    image_io.read_rgb(root / "HR" / "truncated.png")


def test_read_errors_can_name_the_file_by_its_own_name(tmp_path):
  """A server reading an upload from its scratch folder shows the upload's own name only."""
  scratch = tmp_path / "scratch" / "uploads" / "0123abcd"
  scratch.mkdir(parents=True)
  (scratch / "text.png").write_text("this is not an image")
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(scratch / "big.png")
  with pytest.raises(image_io.ImageReadError) as e:
    image_io.read_rgb(scratch / "text.png", name="text.png")
  assert str(e.value).startswith("text.png: not a readable image (")
  assert str(tmp_path) not in str(e.value) and e.value.__cause__ is None
  with pytest.raises(image_io.ImageTooLarge) as e:
    image_io.read_rgb(scratch / "big.png", max_pixels=1000, name="big.png")
  assert str(e.value).startswith("big.png: 50x40 = ") and str(tmp_path) not in str(e.value)
  with pytest.raises(FileNotFoundError) as e:
    image_io.read_rgb(scratch / "gone.png", name="gone.png")
  assert str(tmp_path) not in str(e.value)
  # Without a name, the path (the user's own) is named, with PIL's reason.
  with pytest.raises(image_io.ImageReadError, match=r"scratch/uploads/0123abcd/text\.png: not a"):
    image_io.read_rgb(scratch / "text.png")


def test_lr_missing_or_wrong_size_names_the_file(tmp_path):
  hr = _faces(2)
  lr = [pil_resize(h, (16, 16)) for h in hr]
  root = _write_folder(tmp_path / "a", hr, lr)
  os.remove(root / "LR_bicubic" / "001.png")
  with pytest.raises(FileNotFoundError, match=r"LR_bicubic/001\.png: LR file missing"):
    sources.get_split(_cfg(tmp_path, train_dir=str(root)), "train")
  root = _write_folder(tmp_path / "b", hr, [pil_resize(h, (32, 32)) for h in hr])
  with pytest.raises(ValueError, match=r"LR_bicubic/000\.png: LR is 32x32, expected 16x16"):
    sources.get_split(_cfg(tmp_path, train_dir=str(root)), "train")
  # The x4 LR folder of the same HR is fine for scale 4.
  root = _write_folder(tmp_path / "c", hr, [pil_resize(h, (32, 32)) for h in hr], "LR_x4_bicubic")
  assert sources.get_split(_cfg(tmp_path, scale=4, train_dir=str(root)), "train").has_lr


def test_missing_empty_folder_and_bad_scale(tmp_path):
  with pytest.raises(sources.DataNotFoundError, match=r"face folder not found.*python train\.py"):
    sources.get_split(_cfg(tmp_path, train_dir=str(tmp_path / "nope")), "train")
  (tmp_path / "empty" / "HR").mkdir(parents=True)
  with pytest.raises(sources.DataNotFoundError, match=r"no image files in .*empty/HR"):
    sources.get_split(_cfg(tmp_path, train_dir=str(tmp_path / "empty")), "train")
  with pytest.raises(sources.DataNotFoundError, match=r"data\.test_dir is not set"):
    sources.get_split(_cfg(tmp_path), "test")
  with pytest.raises(ValueError, match=r"scale must be one of \(4, 8, 16\)"):
    sources.get_split(_cfg(tmp_path, scale=3), "train")
  with pytest.raises(sources.DataNotFoundError, match=r"celeb_a.*not prepared.*datasets celeba"):
    sources.get_split(_cfg(tmp_path, source="celeba"), "train")


def test_demo_faces_are_deterministic_and_varied():
  a, b = demo_render.render_face(0, 5), demo_render.render_face(0, 5)
  np.testing.assert_array_equal(a, b)
  faces = _faces(12)
  assert not np.array_equal(faces[0], faces[1])
  assert not np.array_equal(demo_render.render_face(1, 5), a)
  centre_tones = [f[60:70, 54:74].reshape(-1, 3).mean(0).sum() for f in faces]
  assert max(centre_tones) - min(centre_tones) > 150  # light and dark skin both occur
  assert astronaut.astronaut_face().shape == (128, 128, 3)


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("demo")
  return sources.get_split(_cfg(tmp, source="demo", demo_num_train=20), "train")


def _take(split, n, start=0, seed=0, **kw):
  it = pipeline.TrainIterator(split, 8, pipeline.Sharding(8, **kw), seed=seed, start_step=start)
  return [next(it) for _ in range(n)], it


def test_train_batches_shape_order_and_exact_resume(demo_split):
  full, it = _take(demo_split, 6, local_devices=2)
  assert full[0]["hr"].shape == (2, 4, 128, 128, 3) and full[0]["lr"].shape == (2, 4, 16, 16, 3)
  assert it.state() == {"step": 6, "seed": 0, "num_examples": 20, "global_batch": 8}
  resumed, _ = _take(demo_split, 3, start=3, local_devices=2)  # crosses an epoch (2 steps each)
  for a, b in zip(full[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other, _ = _take(demo_split, 1, seed=1, local_devices=2)
  assert not np.array_equal(other[0]["hr"], full[0]["hr"])
  with pytest.raises(ValueError, match="seed=3"):
    it.check_state({"seed": 3, "num_examples": 20, "global_batch": 8})


def test_each_epoch_visits_distinct_examples_and_processes_split_batches():
  n, g = 20, 8
  for epoch in range(3):
    seen = np.concatenate([pipeline.train_batch_indices(7, epoch * 2 + s, n, g) for s in range(2)])
    assert len(set(seen.tolist())) == 16
  batch = pipeline.train_batch_indices(7, 5, n, g)
  parts = [pipeline.Sharding(g, p, 2, 2).local_slice(batch) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), batch)


def test_process_shards_read_their_part_of_the_global_batch(demo_split):
  (one,), _ = _take(demo_split, 1, local_devices=2)
  halves = [_take(demo_split, 1, process_index=p, process_count=2)[0][0] for p in range(2)]
  joined = np.concatenate([h["hr"].reshape(-1, 128, 128, 3) for h in halves])
  np.testing.assert_array_equal(joined, one["hr"].reshape(-1, 128, 128, 3))


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_visits_every_image_exactly_once(tmp_path, processes):
  split = sources.get_split(_cfg(tmp_path, source="demo"), "test")  # 6 images
  seen = []
  for p in range(processes):
    for b in pipeline.eval_dataset(split, 8, pipeline.Sharding(4, p, processes, 2 // processes)):
      idx, mask = b["index"].numpy().ravel(), b["mask"].numpy().ravel()
      assert np.array_equal(mask, (idx >= 0).astype(np.float32))
      seen += idx[idx >= 0].tolist()
  assert sorted(seen) == list(range(6))


def test_flip_augmentation(demo_split):
  plain, _ = _take(demo_split, 2)
  it = pipeline.TrainIterator(demo_split, 8, pipeline.Sharding(8), seed=0, augment_flip=True)
  flipped = [next(it) for _ in range(2)]
  n_flipped = 0
  for a, b in zip(plain, flipped):
    for i in range(8):
      hr, hr_aug = a["hr"][0, i], b["hr"][0, i]
      if np.array_equal(hr_aug, hr[:, ::-1]) and not np.array_equal(hr, hr[:, ::-1]):
        n_flipped += 1
        np.testing.assert_array_equal(b["lr_up"][0, i], a["lr_up"][0, i][:, ::-1])
      else:
        np.testing.assert_array_equal(hr_aug, hr)
  assert 2 <= n_flipped <= 14


def test_celeba_crop_is_the_centred_square(tmp_path):
  image = skimage.data.astronaut()[:218, 100:278]
  encoded = tmp_path / "c.png"
  Image.fromarray(image).save(encoded)

  class FakeCeleba(sources.Split):
    num_examples = 1

    def data_source(self):
      return [{"image": encoded.read_bytes()}]

  split = FakeCeleba("celeba:test", None, "test", image_key="image", hr_box=sources.CELEBA_BOX)
  (batch,) = list(pipeline.eval_dataset(split, 4, pipeline.Sharding(1)).as_numpy_iterator())
  np.testing.assert_array_equal(_as_uint8(batch["hr"][0, 0]), pil_resize(image[20:198], (128, 128)))
