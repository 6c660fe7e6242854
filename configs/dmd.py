"""Distribution Matching Distillation (DMD / DMD2) in the LADD trainer (ladd_jax/train/dmd.py): the student's samples
follow the teacher's CFG-guided score minus a fake score trained on the student's own samples.

    ladd-jax train --config configs/dmd.py:VARIANT --workdir W --config.teacher=DIR --config.data=DIR

VARIANT: as configs/ladd.py ("tiny", "toy", "sd3-medium", ...). The fake score is a full trainable copy of the
teacher (its params and Adam moments: three teacher-sized trees more than LADD's state).
"""

from pathlib import Path

import ml_collections

from ladd_jax.config_files import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_config_file(Path(__file__).with_name("ladd.py"), arg)
    c.method = "dmd"
    # DMD alone; > 0: LADD's heads play beside the fake score (DMD2's GAN term, on the teacher's features).
    c.adv_weight = 0.0
    c.distill_weight = 1.0  # DMD's loss; its gradient is normalised per sample, so 1 is DMD's own scale
    # The real score's CFG scale: DMD2 guides SDXL's real score at 8; the toy teacher samples at CFG 3.
    c.distill_cfg = c.teacher_cfg if c.variant in ("tiny", "toy") else 8.0
    c.dmd = ml_collections.ConfigDict()
    # Times of the distribution-matching gradient and of the fake score's training (DMD2: 2%-98% of the schedule).
    c.dmd.t_min = 0.02
    c.dmd.t_max = 0.98
    c.d_steps = 5  # fake-score (and heads') updates per student update: DMD2's two time-scale rule
    c.dmd.fake_score_lr = c.g_lr  # DMD2 trains the fake score at the student's rate; d_lr stays the heads'
    c.b1 = 0.9  # DMD2's Adam (the adversarial games use b1 = 0)
    return c
