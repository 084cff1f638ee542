"""Fields re-made as another laboratory would have taken them: the validation shifts that the served decision's
thresholds are chosen on (issue 18), and the simulated laboratories that adaptation is developed against (issue 19).

A :class:`Shift` fixes every nuisance of the capture chain (the same functions the training recipe samples from,
:mod:`leukostage.training.augment`): stain strength and hue in optical density, magnification, focus, exposure,
sensor noise, JPEG, and optionally a phone photo through the eyepiece. Applied to real fields, it gives images whose
true class is known, so a threshold can be chosen where it keeps the answers right, not only where clean validation
images pass. None of these numbers is the acceptance check's: the suite is its own, so passing the check is not
a matter of having tuned on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .augment import gaussian_blur, jpeg_roundtrip, magnify, mix_od, simulate_eyepiece


@dataclass(frozen=True)
class Shift:
    """One way of re-making a field, every parameter fixed (identity by default)."""

    family: str
    level: str
    od: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # stain: OD matrix
    magnification: float = 1.0
    blur: float = 0.0  # Gaussian sigma, pixels
    exposure: float = 1.0
    noise: float = 0.0  # sensor noise sd, grey levels of 255
    jpeg: int | None = None
    eyepiece: float | None = None  # a phone photo through the eyepiece at this magnification

    @property
    def name(self) -> str:
        return f"{self.family}/{self.level}"

    def apply(self, images: np.ndarray, seed: int = 0) -> list[np.ndarray]:
        """The shifted versions of uint8 RGB fields (N, H, W, 3); eyepiece photos are larger than their fields."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        x = mix_od(x, torch.tensor(self.od).expand(len(x), 3, 3))
        if self.magnification != 1.0:
            x = magnify(x, self.magnification)
        if self.blur > 0:
            x = gaussian_blur(x, torch.full((len(x),), self.blur))
        x = x * self.exposure
        if self.noise > 0:
            x = x + (self.noise / 255.0) * torch.randn(x.shape, generator=gen)
        x = jpeg_roundtrip(x.clamp(0.0, 1.0), [self.jpeg] * len(x))
        out = list((x.permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8))
        if self.eyepiece is not None:
            rng = np.random.default_rng(seed)
            out = [simulate_eyepiece(im, rng, self.eyepiece) for im in out]
        return out


def _hue(red: float, green: float, blue: float, leak: float) -> tuple[tuple[float, ...], ...]:
    return ((red, leak, 0.0), (leak, green, 0.0), (0.0, leak, blue))


# The validation suite: each family at an everyday level and a harder one (values of this module's own).
VALIDATION_SHIFTS: tuple[Shift, ...] = (
    Shift("stain", "paler", od=_hue(0.7, 0.7, 0.7, 0.0)),
    Shift("stain", "darker", od=_hue(1.4, 1.4, 1.4, 0.0)),
    Shift("stain", "bluer", od=_hue(1.15, 0.85, 0.95, 0.06)),
    Shift("stain", "pinker", od=_hue(0.85, 1.1, 1.05, 0.06)),
    Shift("magnification", "x0.8", magnification=0.8),
    Shift("magnification", "x1.3", magnification=1.3),
    Shift("magnification", "x1.45", magnification=1.45),
    Shift("focus", "1px", blur=1.0),
    Shift("focus", "2px", blur=2.0),
    Shift("noise", "sd5", noise=5.0),
    Shift("noise", "sd9", noise=9.0),
    Shift("jpeg", "q30", jpeg=30),
    Shift("jpeg", "q15", jpeg=15),
    Shift("exposure", "x0.6", exposure=0.6),
    Shift("exposure", "x1.25", exposure=1.25),
    Shift("eyepiece", "x2", eyepiece=2.0, jpeg=80),
)

# Simulated laboratories (issue 19): a stain, a microscope and a camera each, every nuisance at once.
LABORATORIES: dict[str, Shift] = {
    "lab-a": Shift("laboratory", "a", od=_hue(1.25, 0.95, 1.1, 0.08), magnification=1.2, blur=0.8, noise=3, jpeg=60),
    "lab-b": Shift("laboratory", "b", od=_hue(0.8, 0.75, 0.9, 0.05), magnification=0.85, blur=1.2, jpeg=35),
    "lab-c": Shift("laboratory", "c", od=_hue(1.1, 1.3, 1.2, 0.1), magnification=1.35, exposure=0.8, noise=5, jpeg=50),
    # a pinker stain, a lower magnification, a softer focus and a harsher JPEG at once: lab-a to lab-c sit inside
    # the capture recipe's ranges and the shipped model already answers them; this one it mostly flags (on the
    # validation part: 65 % left uncertain, 9 % refused by the gate)
    "lab-d": Shift("laboratory", "d", od=_hue(0.75, 1.25, 1.3, 0.12), magnification=0.75, blur=1.5, jpeg=40),
}


def write_laboratory(fields: list[tuple[str, int]], shift: Shift, out: str | Path, seed: int = 0) -> Path:
    """A simulated laboratory in the Table 2 layout: each (path, class index) field re-made by ``shift`` and written
    as PNG under its class folder, keeping its file name (so runs of file numbers still mark a patient)."""
    import cv2

    from ..classes import CLASSES
    from ..imaging import load_image

    out = Path(out)
    for k, (path, label) in enumerate(fields):
        (rgb,) = shift.apply(load_image(path)[None], seed + k)
        folder = out / CLASSES[label].folder
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / (Path(path).stem + ".png")), rgb[:, :, ::-1])
    return out
