"""Pictures without a display: matplotlib (an optional extra) on the Agg backend, and figures saved atomically."""

from __future__ import annotations

from pathlib import Path

from effx_serve.core.errors import UserError, needs_extra
from effx_serve.core.fs import replacing


def pyplot():
    """matplotlib.pyplot on the Agg backend; a UserError naming the extra when matplotlib is not installed."""
    with needs_extra("plot", "--plot"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    return plt


def optional_pyplot():
    """pyplot, or None when matplotlib is not installed: for pictures that come beside a JSON result, not instead of it."""
    try:
        return pyplot()
    except UserError:
        return None


def save_figure(plt, fig, path: Path) -> Path:
    """Write `fig` to `path` atomically (closing it); folder and format problems are one-line errors."""
    try:
        if not path.parent.is_dir():
            what = "is a file, not a folder" if path.parent.exists() else "does not exist"
            raise UserError(f"--plot {path}: {path.parent} {what}")
        suffix = path.suffix.lstrip(".").lower()
        if suffix not in fig.canvas.get_supported_filetypes():
            raise UserError(f"--plot {path}: unsupported picture format '{suffix}'; use .png")
        fig.tight_layout()
        try:
            with replacing(path) as tmp:
                fig.savefig(tmp, dpi=120, format=suffix)
        except OSError as error:
            raise UserError(f"--plot {path}: cannot write ({error.strerror})") from None
    finally:
        plt.close(fig)
    return path
