"""The local inspection page of `diffad serve` (Gradio, the optional `[app]` extra)."""
