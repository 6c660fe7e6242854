"""Metric and image logs that TensorBoard reads, written without TensorFlow.

clu's metric_writers import TensorFlow at module level, which ladd_jax does not depend on. So the scalars and
images go (1) to `metrics.jsonl` (one JSON object per logged step, what tests and reports read), and (2) to
TensorBoard event files through the `tensorboard` package's own event writer and protos (no TensorFlow needed):
`tensorboard --logdir WORKDIR/tb`. Only process 0 writes.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from PIL import Image


class MetricWriter:
    def __init__(self, workdir: str | Path):
        self.active = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._events = None
        if self.active:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._events = EventFileWriter(str(Path(workdir) / "tb"))

    def _summary(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values))
        self._events.add_event(event)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        from tensorboard.compat.proto import summary_pb2

        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._summary(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An HWC uint8 image into TensorBoard's Images tab."""
        if not self.active:
            return
        from tensorboard.compat.proto import summary_pb2

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        h, w = image.shape[:2]
        img = summary_pb2.Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=buf.getvalue())
        self._summary(step, [summary_pb2.Summary.Value(tag=tag, image=img)])

    def flush(self) -> None:
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    """The logged rows of metrics.jsonl, in order."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
