"""Train a compact text classifier. Configs are in conf/; see README.md.

    python train.py +experiment=baseline
    python train.py +experiment=baseline data=files data.train=my.csv data.text_column=title data.label_column=cat
    python train.py -m +experiment=baseline seed=1,2,3
"""

import hydra
from omegaconf import DictConfig

from hydra_plugins.speedtrain_plugins import register as register_plugins
from speedtrain.cli import run_config  # the task `speedtrain train` runs too

register_plugins()  # hparams_search=optuna, hydra/launcher=slurm|local


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_config(cfg)  # defined here, not assigned: Hydra names the job (train.log) after this file


if __name__ == "__main__":
    main()
