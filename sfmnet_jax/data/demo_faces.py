"""`sfmnet_demo_faces`: the built-in, download-free demo dataset (a TFDS builder).

Procedural faces from `demo_render.render_face` (no licence attached: they are
drawn by this code), 128x128 HR only; LR and LR-up are made in the input
pipeline exactly as the release made them (PIL bicubic). Train and test
splits use disjoint seeds. The public-domain astronaut portrait from
scikit-image (`astronaut_face`, a real face for sample images) is in `astronaut.py`.
"""

import dataclasses

import tensorflow_datasets as tfds

from sfmnet_jax.data import demo_render

TEST_INDEX_OFFSET = 1_000_000  # test faces use indices disjoint from the train ones


@dataclasses.dataclass(eq=False)
class DemoFacesConfig(tfds.core.BuilderConfig):
  num_train: int = 512
  num_test: int = 32
  seed: int = 0


def demo_config(num_train: int, num_test: int, seed: int = 0) -> DemoFacesConfig:
  return DemoFacesConfig(name=f"train{num_train}_test{num_test}_seed{seed}",
                         num_train=num_train, num_test=num_test, seed=seed,
                         description="Procedural demo faces, 128x128.")


class SfmnetDemoFaces(tfds.core.GeneratorBasedBuilder):
  """Procedural 128x128 faces (deterministic by seed), train and test splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "hr": tfds.features.Image(shape=(128, 128, 3)),
            "file_name": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {
        "train": self._generate_examples(0, cfg.num_train),
        "test": self._generate_examples(TEST_INDEX_OFFSET, cfg.num_test),
    }

  def _generate_examples(self, offset, count):
    cfg = self.builder_config
    for i in range(count):
      index = offset + i
      name = f"demo_{cfg.seed}_{index:07d}.png"
      yield name, {"hr": demo_render.render_face(cfg.seed, index), "file_name": name}
