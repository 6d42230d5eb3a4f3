r"""Reports the paper's metrics for a checkpoint: `python evaluate.py` evaluates the demo run.

  python evaluate.py                                   # runs/demo on the demo test faces
  python evaluate.py --config=configs/helen_x8.py --checkpoint=runs/helen_x8
  python evaluate.py --config=configs/celeba_x8.py --checkpoint=SFMNet_x8.pth \
      --data_dir=datasets/CelebA/test --output_dir=reports/celeba_x8

The flags and `main` are `sfmnet_jax/apps/evaluate.py` (also the `sfmnet-evaluate`
command); `python evaluate.py --help` lists them.
"""

from sfmnet_jax.apps import evaluate

if __name__ == "__main__":
  evaluate.run()
