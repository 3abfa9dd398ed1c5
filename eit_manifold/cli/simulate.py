"""``eit-manifold simulate``: write a measurement file for a phantom."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app, echo


@app.command("simulate")
def simulate_command(
    electrodes: int = typer.Option(16, help="Number of electrodes L."),
    radius: float = typer.Option(1.0, help="Tank radius."),
    electrode_width: float = typer.Option(0.2, help="Electrode arc length."),
    contact_impedance: float = typer.Option(
        0.01, help="Contact impedance of every electrode (at least what double precision resolves against the "
        "lowest conductivity, see docs/formats.md)."),
    injection: str = typer.Option("adjacent", help="Current patterns: adjacent, opposite or trigonometric."),
    measurement: str = typer.Option("adjacent", help="Measurements: adjacent differences or ground."),
    mesh: str = typer.Option(None, help="Mesh: preset (coarse, default, fine) or a tagged .msh file (2-D or 3-D)."),
    mesh_size: float = typer.Option(None, help="Element size away from the electrodes (overrides the preset)."),
    phantom: str = typer.Option(
        "disks",
        help="Phantom: homogeneous, disks (fixed pair), image (--phantom-image, values in [0, 1]), conductivity "
        "(--phantom-image in S/m, NaN outside the tank: a reconstruction's conductivity.npy), balls (held-out "
        "image of the paper's two-disk family, index --seed), balls-signed / balls-mixed (the same from the signed "
        "and mixed-contrast families), or random disk / three-disks / ellipse (drawn from --seed).",
    ),
    sigma_background: float = typer.Option(1.0, help="Background conductivity (S/m)."),
    phantom_image: Path = typer.Option(None, help="Image of --phantom image (values in [0, 1]) or --phantom "
                                       "conductivity (S/m): .npy, row 0 at the top."),
    sigma_min: float = typer.Option(0.2, help="Conductivity of image value 0."),
    sigma_max: float = typer.Option(1.8, help="Conductivity of image value 1."),
    noise: float = typer.Option(0.01, help="Relative noise: std = noise x RMS of each pattern's data."),
    seed: int = typer.Option(0, help="Random seed (noise, random phantoms; held-out balls index)."),
    out: Path = typer.Option(Path("simulated.npz"), help="Output measurement file (.npz)."),
    plot: Path = typer.Option(None, help="Also write a PNG of phantom and data (written with --out: both or "
                              "neither; 3-D: a horizontal section)."),
    dim: int = typer.Option(2, help="2: disk tank; 3: cylindrical tank (tetrahedra; the 2-D phantoms extruded)."),
    height: float = typer.Option(1.0, help="3-D: height of the tank wall."),
    water_level: float = typer.Option(None, help="3-D: water depth (default: the wall height)."),
    electrode_bottom: float = typer.Option(0.0, help="3-D: lower edge of the electrodes."),
    electrode_top: float = typer.Option(None, help="3-D: upper edge of the electrodes (default: the wall height)."),
    solver: str = typer.Option("auto", help="Linear solver: auto, direct (MUMPS) or iterative (CG + GAMG)."),
    xdmf: Path = typer.Option(None, help="Also write mesh and conductivity as XDMF (ParaView)."),
) -> None:
    """Simulate electrode data for a phantom with the complete electrode model."""
    from eit_manifold.pipelines.simulate import SimulateConfig, simulate

    config = SimulateConfig(
        electrodes=electrodes, radius=radius, electrode_width=electrode_width,
        contact_impedance=contact_impedance, injection=injection, measurement=measurement,
        mesh=mesh, mesh_size=mesh_size, phantom=phantom, sigma_background=sigma_background,
        phantom_image=str(phantom_image) if phantom_image else None, sigma_min=sigma_min,
        sigma_max=sigma_max, noise=noise, seed=seed, out=str(out), plot=str(plot) if plot else None,
        dim=dim, height=height, water_level=water_level, electrode_bottom=electrode_bottom,
        electrode_top=electrode_top, solver=solver, xdmf=str(xdmf) if xdmf else None,
    )
    summary = simulate(config)
    echo(
        f"wrote {summary['out']}: {summary['patterns']} patterns x {summary['measurements_per_pattern']} "
        f"measurements, mesh {summary['n_cells']} cells / {summary['n_nodes']} nodes, noise {summary['noise']:g}"
    )
