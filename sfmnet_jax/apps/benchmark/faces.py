r"""sfmnet-benchmark faces [--checkpoints=runs/demo] [--hr_dir=DIR]
                       [--face_sizes=12,16,20,24,32,48,64] [--detectors=auto,mtcnn8,hog2]
                       [--photos_per_size=3] [--faces_per_photo=8]

Face detection's recall, false positives and seconds per megapixel by face
size, on photos composed from crops whose places are known (the demo faces,
the astronaut, and the 128x128 crops of --hr_dir), and the faces each
generator of --checkpoints restores there, scored against their HR crops
(PSNR on Y, LPIPS) beside the plain upscale (evaluation/faces.py).
"""

from sfmnet_jax import cli, runtime
from sfmnet_jax.apps.benchmark import common


def define_flags(fv, argv):
  del argv
  f = cli.flags
  f.DEFINE_list("checkpoints", ["runs/demo"], "Generators whose restorations of the found "
                "faces are scored ('' for none).", flag_values=fv)
  f.DEFINE_string("hr_dir", None, "A folder of 128x128 HR crops to compose from too.",
                  flag_values=fv)
  f.DEFINE_list("face_sizes", ["12", "16", "20", "24", "32", "48", "64"], "Crop sizes (px) in "
                "the composed photos.", flag_values=fv)
  f.DEFINE_list("detectors", ["auto", "mtcnn8", "hog2"], "Detectors to measure (the "
                "restoration uses `auto`): auto, hog<u>, cnn<u>, mtcnn<min face>, blazeface.",
                flag_values=fv)
  f.DEFINE_integer("photos_per_size", 3, "Composed photos per crop size.", flag_values=fv)
  f.DEFINE_integer("faces_per_photo", 8, "Faces per composed photo.", flag_values=fv)
  common.define_output(fv, "faces")


def run(fv):
  from sfmnet_jax.evaluation import faces  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.faces import photo  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.weights import checkpoints  # pylint: disable=g-import-not-at-top
  sizes = common.int_list(fv, "face_sizes")
  crops = faces.crops_from(fv.hr_dir)
  real = crops[:1] + [c[:, ::-1].copy() for c in crops[:1]]
  result = {"benchmark": "faces", "sizes": sizes, "crops": len(crops), "hr_dir": fv.hr_dir,
            "detection": {}}
  for kind, subset in (("astronaut (a real photo)", real), ("all crops", crops)):
    print(kind)
    result["detection"][kind] = faces.detection_rows(
        subset, faces.candidates(fv.detectors), sizes, fv.photos_per_size, fv.faces_per_photo)
  result["restoration"] = []
  for checkpoint in [c for c in fv.checkpoints if c]:
    model, variables, info = checkpoints.load_generator(checkpoint)
    if info["scale"] is None:
      raise cli.UsageError(f"{checkpoint} records no scale: give a training or convert folder")
    print(f"restoration, x{info['scale']} ({checkpoint})")
    result["restoration"] += [dict(r, checkpoint=checkpoint) for r in faces.restoration_rows(
        crops, photo.as_generator(model, variables), info["scale"], sizes, "auto",
        fv.photos_per_size, fv.faces_per_photo)]
  result["machine"] = runtime.machine_info()
  common.write_json(result, "faces", fv.output)
  return result
