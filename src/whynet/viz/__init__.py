"""Pictures from explanations: overlays, grids, highlighted text, molecules.

numpy lives here, at the edge; nothing in viz depends on a method. Every function returns plain
data (uint8 arrays, PNG bytes, SVG/HTML strings) so the report can embed it without files.
"""

from whynet.viz.explanation import explanation_figures, explanation_html, show
from whynet.viz.images import figure_png, grid_png, heatmap, overlay, png_bytes, to_rgb
from whynet.viz.molecules import molecule_svg, smiles_atom_weights, smiles_svg
from whynet.viz.text import highlight_text

__all__ = [
    "explanation_figures",
    "explanation_html",
    "show",
    "figure_png",
    "grid_png",
    "heatmap",
    "highlight_text",
    "molecule_svg",
    "overlay",
    "png_bytes",
    "smiles_atom_weights",
    "smiles_svg",
    "to_rgb",
]
