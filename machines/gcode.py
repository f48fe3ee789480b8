"""G-code for a job a real printer runs: a small box, stretched by dwells to last the job's time.

A TAMC job says how long the machine works, not what it prints (no slicer runs here), so the
program traces the outline of a box a few layers high and fills the rest of the time with
``G4`` dwells. The dwells are short and spread through the layers: a pause lands between two of
them within a second, and the server's progress (read from the file position) advances evenly.

Heaters are set without waiting (``M104``/``M140``, not ``M109``/``M190``) so the job's length is
the dwells', not the heating's; every dwell is preceded by ``M400`` (finish moves) because real
firmware waits for its moves before a dwell and a simulated printer may not.
"""

from __future__ import annotations

import math
import re

__all__ = ["FEED_MM_PER_MIN", "LAYER_MM", "print_program"]

FEED_MM_PER_MIN = 6000.0
"""Outline moves at 100 mm/s."""
Z_FEED_MM_PER_MIN = 600.0
LAYER_MM = 0.2
E_PER_MM = 0.0333
"""Filament (1.75 mm) per mm of a 0.4 mm wide, 0.2 mm high line."""
ORIGIN_MM = (10.0, 10.0)
MOVE_SHARE = 0.25
"""Moves take at most this share of the time (but there is always one layer); dwells fill the rest."""
MIN_REMAINDER_S = 0.05
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""A job id in a comment must not end its line."""


def print_program(
    job_id: str,
    seconds: float,
    *,
    size_mm: tuple[float, float, float] = (20.0, 20.0, 5.0),
    nozzle_c: float = 215.0,
    bed_c: float = 60.0,
) -> str:
    """A G-code print of a ``size_mm`` box outline that lasts about ``seconds`` on the printer."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number >= 0, not {seconds}")
    x_mm, y_mm, z_mm = size_mm
    if min(x_mm, y_mm, z_mm) <= 0:
        raise ValueError(f"size_mm must be positive on every axis, not {size_mm}")
    max_layers = max(1, round(z_mm / LAYER_MM))
    layer_move_s = 2 * (x_mm + y_mm) / (FEED_MM_PER_MIN / 60) + LAYER_MM / (Z_FEED_MM_PER_MIN / 60)
    layers = max(1, min(max_layers, math.floor(MOVE_SHARE * seconds / layer_move_s)))
    dwell_s = max(0.0, seconds - layers * layer_move_s)
    whole = math.floor(dwell_s)
    remainder_ms = round((dwell_s - whole) * 1000)

    slots = 4 * layers
    """A dwell may follow each side of each layer's outline."""
    per_slot = [0] * slots
    for k in range(whole):
        per_slot[(2 * k + 1) * slots // (2 * whole)] += 1

    x0, y0 = ORIGIN_MM
    corners = [(x0 + x_mm, y0), (x0 + x_mm, y0 + y_mm), (x0, y0 + y_mm), (x0, y0)]
    lines = [
        f"; TAMC job {_CONTROL.sub(' ', job_id)}: a {x_mm:g}x{y_mm:g}x{z_mm:g} mm box outline, about {seconds:.1f} s",
        "G21 ; millimetres",
        "G90 ; absolute positions",
        "M82 ; absolute extrusion",
        f"M104 S{nozzle_c:g} ; nozzle target, not waited for",
        f"M140 S{bed_c:g} ; bed target, not waited for",
        "G28 ; home",
        "G92 E0",
    ]
    if remainder_ms * 1e-3 >= MIN_REMAINDER_S:
        lines += ["M400", f"G4 P{remainder_ms}"]
    e = 0.0
    prev = (x0, y0)
    slot = 0
    for layer in range(layers):
        z = (layer + 1) * LAYER_MM
        lines += [f"; layer {layer + 1} of {layers}", f"G1 Z{z:.2f} F{Z_FEED_MM_PER_MIN:g}",
                  f"G0 X{x0:.2f} Y{y0:.2f} F{FEED_MM_PER_MIN:g}"]
        prev = (x0, y0)
        for cx, cy in corners:
            e += math.hypot(cx - prev[0], cy - prev[1]) * E_PER_MM
            lines.append(f"G1 X{cx:.2f} Y{cy:.2f} E{e:.4f} F{FEED_MM_PER_MIN:g}")
            prev = (cx, cy)
            if per_slot[slot]:
                lines.append("M400")
                lines += ["G4 S1"] * per_slot[slot]
            slot += 1
    lines += [
        f"G1 Z{layers * LAYER_MM + 5:.2f} F{Z_FEED_MM_PER_MIN:g} ; lift off the part",
        "M104 S0 ; nozzle off",
        "M140 S0 ; bed off",
        "M84 ; motors off",
        "",
    ]
    return "\n".join(lines)
