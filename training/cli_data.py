"""``evit synth``: write a synthetic aerial COCO dataset."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the data commands to the ``evit`` app."""

    @app.command("synth")
    def synth(
        out_dir: Path = typer.Argument(..., help="Folder to write train/ and val/ into."),
        num_images: int = typer.Option(1000, "--num-images", "-n", min=1, help="Images in total (train + val)."),
        image_size: int = typer.Option(320, "--image-size", "-s", min=16, help="Square image side in pixels."),
        seed: int = typer.Option(0, "--seed", help="Same seed, same dataset."),
        val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.95,
                                           help="Share of images in val/."),
        workers: int = typer.Option(1, "--workers", "-j", min=1,
                                    help="Processes rendering in parallel (same images for any number)."),
        preview: bool = typer.Option(True, "--preview/--no-preview",
                                     help="Also write preview.png: a grid of train images with their boxes."),
    ) -> None:
        """Render synthetic aerial scenes (persons, vehicles, obstacles) as a COCO dataset:
        OUT_DIR/{train,val}/images/*.jpg and OUT_DIR/{train,val}/annotations.json."""
        from evit_training.data.synthetic import generate_dataset, write_preview

        paths = generate_dataset(out_dir, num_images, image_size=image_size, seed=seed,
                                 val_fraction=val_fraction, progress=True, workers=workers)
        for split, p in paths.items():
            typer.echo(f"{split}: {p['annotations']} (images in {p['images']})")
        if preview:
            png = write_preview(paths["train"]["annotations"], Path(out_dir) / "preview.png")
            typer.echo(f"preview: {png}")
