"""Sample grids during training: one row per prompt, the teacher (many steps, CFG) beside the student at 1, 2 and
4 steps (no CFG), from the same fixed noise, so successive grids show the student's progress. Multi-aspect data
gives one block of rows per bucket, each under a label with its size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from ladd_jax.flow import denoise, sample_student, student_timesteps
from ladd_jax.models.mmdit import MMDiT
from ladd_jax.pipeline import SD3Pipeline
from ladd_jax.sample import image_grid


class SampleGrids:
    def __init__(
        self,
        teacher_folder: str | Path,
        teacher: tuple[Any, Any],
        student: MMDiT,
        prompts: Sequence[str],
        latent_sizes: Sequence[tuple[int, int]],  # one (h, w) per bucket
        student_steps: Sequence[int],
        teacher_steps: int,
        teacher_cfg: float,
        max_sequence_length: int,
        shift: float | None,
        seed: int,
    ):
        self.pipe = SD3Pipeline.from_pretrained(teacher_folder, transformer=teacher)
        self.prompts, self.student_steps, self.shift = list(prompts), tuple(student_steps), shift
        scale = self.pipe.vae_scale_factor
        self.sizes = [(h * scale, w * scale) for h, w in latent_sizes]
        self.noise, self.teacher_images = [], []  # per bucket
        for height, width in self.sizes:
            noise = self.pipe.initial_latents(len(prompts), height, width, seed=[seed + i for i in range(len(prompts))])
            self.noise.append(noise)
            self.teacher_images.append(
                self.pipe(
                    self.prompts,
                    None,
                    teacher_steps,
                    teacher_cfg,
                    height,
                    width,
                    latents=noise,
                    max_sequence_length=max_sequence_length,
                )
            )
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            self.prompts, max_sequence_length=max_sequence_length, do_classifier_free_guidance=False
        )
        self._denoise = jax.jit(lambda p, x, t: denoise(x, student.apply({"params": p}, x, t, embeds, pooled), t))
        self.key = jax.random.key(seed)

    def student_images(self, params: Any, steps: int, bucket: int = 0) -> np.ndarray:
        ts = student_timesteps(steps, self.shift)
        latents = sample_student(lambda x, t: self._denoise(params, x, t), self.noise[bucket], ts, self.key)
        return self.pipe.decode(latents)

    def grid(self, params: Any) -> np.ndarray:
        """uint8 [rows * H, cols * W, 3]: columns teacher, student at each of student_steps; with several buckets,
        a labelled block of rows per bucket (narrower ones padded)."""
        blocks = []
        for k, teacher in enumerate(self.teacher_images):
            columns = [teacher] + [self.student_images(params, n, k) for n in self.student_steps]
            images = np.stack(columns, axis=1).reshape(-1, *teacher.shape[1:])
            blocks.append(image_grid(images, len(self.prompts), len(columns)))
        if len(blocks) == 1:
            return blocks[0]
        width = max(b.shape[1] for b in blocks)
        labelled = []
        for (height, w), block in zip(self.sizes, blocks, strict=True):
            band = Image.new("RGB", (width, 12))
            ImageDraw.Draw(band).text((2, 0), f"{height}x{w}", fill=(255, 255, 255))
            labelled += [np.asarray(band), np.pad(block, ((0, 0), (0, width - block.shape[1]), (0, 0)))]
        return np.concatenate(labelled)

    def save(self, params: Any, path: Path) -> np.ndarray:
        grid = self.grid(params)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        return grid
