"""Screen geometry: pixels ↔ millimetres ↔ degrees of visual angle. Pure Python/numpy."""
import math
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_DISTANCE_MM = 600.0      # a usual desktop viewing distance


@dataclass(frozen=True)
class ScreenGeometry:
    """One screen in logical pixels. ``px_per_mm`` comes from the screen's DPI
    (logical px per inch / 25.4); ``distance_mm`` is the eyes' distance from the screen.
    ``camera_x``/``camera_y`` is where the camera sits in the same pixel frame (default:
    centred just above the top edge, as on laptops and most monitor webcams)."""
    width_px: int
    height_px: int
    px_per_mm: float
    distance_mm: float = DEFAULT_DISTANCE_MM
    left_px: int = 0             # the screen's top-left in global logical pixels
    top_px: int = 0
    camera_x: float | None = None
    camera_y: float | None = None

    @classmethod
    def from_dpi(cls, width_px: int, height_px: int, dpi: float, **kw) -> "ScreenGeometry":
        return cls(width_px, height_px, dpi / 25.4, **kw)

    @property
    def camera_px(self) -> tuple[float, float]:
        cx = self.left_px + self.width_px / 2 if self.camera_x is None else self.camera_x
        cy = self.top_px - 8.0 * self.px_per_mm if self.camera_y is None else self.camera_y
        return float(cx), float(cy)

    @property
    def px_per_degree(self) -> float:
        """Pixels spanned by one degree at the screen centre."""
        return self.px_per_mm * self.distance_mm * math.tan(math.radians(1.0))

    def px_to_deg(self, px):
        """Visual angle of a distance on screen (near the line of sight), degrees."""
        return np.degrees(np.arctan(np.asarray(px, float) / self.px_per_mm / self.distance_mm))

    def deg_to_px(self, deg):
        return np.tan(np.radians(np.asarray(deg, float))) * self.distance_mm * self.px_per_mm

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScreenGeometry":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def relative(self, fx: float, fy: float) -> tuple[float, float]:
        """A point given as fractions of the screen, in global logical pixels."""
        return (self.left_px + fx * self.width_px, self.top_px + fy * self.height_px)
