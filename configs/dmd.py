"""Distribution Matching Distillation (DMD / DMD2) in the LADD trainer (ladd_jax/train/dmd.py): the student's samples
follow the teacher's CFG-guided score minus a fake score trained on the student's own samples.

    ladd-jax train --config configs/dmd.py:VARIANT[-RECIPE] --workdir W --config.teacher=DIR --config.data=DIR

VARIANT: as configs/ladd.py ("tiny", "toy", "sd3-medium", ...). The fake score is a full trainable copy of the
teacher (its params and Adam moments: three teacher-sized trees more than LADD's state). RECIPE:
    dmd2      DMD alone, DMD2's settings (the default)
    anchored  LADD's heads beside DMD (DMD2's GAN term) and DMD's regression anchor on the stored ODE pairs: the
              toy world's best-measured route (ladd_jax/toy/assets/alignment/README.md, "DMD's regression anchor":
              8-9 of the demo's 10 student targets at three seeds, about 33 CPU minutes); `ladd-jax demo --recipe
              anchored-mix` runs it with its control
"""

from pathlib import Path

import ml_collections

from ladd_jax.config_files import load_with_option

RECIPES = ("dmd2", "anchored")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c, recipe = load_with_option(Path(__file__).with_name("ladd.py"), arg, RECIPES, "dmd2", "RECIPE")
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
    if recipe == "anchored":
        # Toy world (alignment notes, "Distribution matching (DMD)"): at weight 1 the heads give LADD's FD and
        # blobs, at 0.02 DMD's alignment and crowded samples (high FD), at 0.1 most of both.
        c.adv_weight = 0.1
        # Toy world ("DMD's regression anchor"): 0.1 kept more alignment than 0.25 and both 1-step FD bounds, which
        # 0.05 lost; a cosine-decayed weight gave the FD back.
        c.anchor_weight = 0.1
        if c.variant == "toy":  # the cheaper mix's rates ("A cheaper mix": fast_e), a third of the long mix's step
            c.total_steps = 4800  # 2400 steps held 6 of the 10 student targets, 4800 held 8-9 at three seeds
            # Half the long mix's batch at 3x its rates (the fake score's at 10x, so that 2 updates a step track the
            # student): its 1-step alignment bounds in a quarter of its minutes.
            c.batch_size = 8
            c.g_lr, c.dmd.fake_score_lr = 3e-4, 1e-3
            c.d_steps = 2  # fake-score and heads' updates per student update (DMD2: 5)
            c.ema_decay = 0.99  # with the rates' cosine decay, bought back 15-31% of the mix's 1-step FD
            c.lr_decay = "cosine"
    return c
