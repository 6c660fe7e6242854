"""Latent consistency distillation (LCM) carried to rectified flow, in the LADD trainer (ladd_jax/train/lcm.py):
`ladd-jax train --config configs/lcm.py:VARIANT --workdir W --config.teacher=DIR --config.data=DIR`.

VARIANT: as configs/ladd.py ("tiny", "toy", "sd3-medium", ...): the same data, student, optimiser, sharding and
loop settings, with the LCM objective in place of the adversarial game.
"""

from pathlib import Path

import ml_collections

from ladd_jax.config_files import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_config_file(Path(__file__).with_name("ladd.py"), arg)
    c.method = "lcm"
    c.adv_weight = 0.0  # no heads
    c.lcm = ml_collections.ConfigDict()
    # The teacher's N-step schedule, and k of its steps per consistency jump. LCM: k = 20 of 1000 DDPM timesteps,
    # which is one step of its 50-step DDIM schedule: N = 50, k = 1.
    c.lcm.num_steps = 50
    c.lcm.skip = 1
    c.lcm.shift = 3.0  # the schedule's SD3 shift (SD3's and the toy teacher's scheduler use 3)
    c.lcm.solver = "euler"  # or "heun" (two teacher evaluations per step)
    c.lcm.guidance_min = c.teacher_cfg  # w ~ U[min, max] per sample; equal ends: fixed (LCM: w in [2, 14],
    c.lcm.guidance_max = c.teacher_cfg  # an embedded w; SD3's transformer has no guidance input to embed it)
    c.lcm.distance = "huber"  # LCM's pseudo-Huber; or "l2"
    c.lcm.huber_c = 0.001  # LCM's default c
    c.ema_decay = 0.95  # the target network's EMA (LCM: 0.95); the exported EMA student is that target
    c.g_lr = 1e-6 if arg not in ("tiny", "toy") else c.g_lr  # LCM: 1e-6 at SD scale (full fine-tuning)
    c.b1 = 0.9  # Adam's default (LCM); LADD's b1 = 0 is for the adversarial game
    return c
