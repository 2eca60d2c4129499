"""Energy of training: GPU-hours, kilowatt-hours and CO2 of a run from its FLOPs, under stated assumptions."""

from __future__ import annotations

__all__ = ["training_footprint"]


def training_footprint(
    flops: float,
    peak_flops_per_s: float = 312e12,
    utilisation: float = 0.4,
    power_w: float = 400.0,
    pue: float = 1.1,
    kg_co2_per_kwh: float = 0.4,
) -> dict[str, float]:
    """GPU-hours, energy and CO2 of a training run of `flops` FLOPs, under stated assumptions.

    gpu_hours = flops / (peak * utilisation) / 3600; kwh = gpu_hours * power_w / 1000 * pue;
    tonnes_co2 = kwh * kg_co2_per_kwh / 1000. Defaults: an A100's bf16 peak (312 TFLOP/s),
    40% utilisation, 400 W per GPU, a data-centre PUE of 1.1, 0.4 kg CO2 per kWh.
    """
    for name, value in [("flops", flops), ("peak_flops_per_s", peak_flops_per_s), ("power_w", power_w), ("pue", pue)]:
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if not 0.0 < utilisation <= 1.0:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    if kg_co2_per_kwh < 0:
        raise ValueError(f"kg_co2_per_kwh must be >= 0, got {kg_co2_per_kwh}")
    gpu_hours = flops / (peak_flops_per_s * utilisation) / 3600.0
    kwh = gpu_hours * power_w / 1000.0 * pue
    return {"gpu_hours": gpu_hours, "kwh": kwh, "tonnes_co2": kwh * kg_co2_per_kwh / 1000.0}
