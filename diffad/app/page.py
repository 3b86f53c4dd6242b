"""`diffad serve`'s page, built with Gradio (the optional `[app]` extra).

Upload images (or name a folder on the server), and each comes back as one row: input | map overlay |
reconstruction (when the model makes them) | the region above the threshold, with its score and the
verdict. The threshold slider starts at the model's saved default threshold and re-draws rows,
verdicts and the CSV from the cached maps, without running the model again. A file that is not an
image it can read gets a message on the page; the others go on, and so does the server.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffad.app import inspection
from diffad.errors import DiffadError

TITLE = "diffad inspection"
CSS = ".diffad-verdicts table { font-variant-numeric: tabular-nums; }"


def _rows(state: dict, threshold: float):
    results = state["results"]
    if not results:
        return None, [], None
    picture = inspection.panel(results, threshold, state["low"])
    table = inspection.verdict_rows(results, threshold)
    return picture, table, inspection.write_downloads(results, threshold, Path(state["folder"]))


def _summary(state: dict, threshold: float) -> str:
    results = state["results"]
    flagged = sum(r.score >= threshold for r in results)
    lines = [f"**{flagged} of {len(results)} images defective** at threshold {threshold:.4g}."]
    lines += [f"- ⚠ {problem}" for problem in state["problems"]]
    return "\n".join(lines)


def inspect_values(inspector: inspection.Inspector, files, folder: str | None) -> dict:
    """Run the detector on the uploads and the folder: every value the page shows, and its state."""
    chosen = [(Path(f).name, f) for f in files or []]
    problems = []
    if folder and folder.strip():
        from diffad.scoring.detect_cli import find_inputs

        try:
            chosen += [(name, str(path)) for path, name in find_inputs([folder.strip()])]
        except DiffadError as err:
            problems.append(f"folder {folder.strip()}: {err}")
    if not chosen and not problems:
        problems.append("nothing to inspect: upload images or give a folder on the server")
    results, unread = inspector.run(chosen)
    lo, hi = inspection.score_range(results, inspector.saved)
    threshold = inspector.default[1] if inspector.default else (lo + hi) / 2
    state = {
        "results": results,
        "problems": problems + unread,
        "low": inspection.colour_floor(results) if results else lo,
        "folder": tempfile.mkdtemp(prefix="diffad-serve-"),
    }
    picture, table, downloads = _rows(state, threshold)
    print(f"diffad serve: {len(results)} images inspected, {len(state['problems'])} messages")
    return {
        "picture": picture,
        "table": table,
        "message": _summary(state, threshold),
        "downloads": downloads,
        "slider": {"minimum": lo, "maximum": hi, "value": threshold, "step": (hi - lo) / 1000},
        "state": state,
    }


def build_page(inspector: inspection.Inspector, folder: str | None = None):
    """The Gradio Blocks of the page for `inspector`; `launch` serves it. `folder`: a folder on the
    server inspected now, whose results the page shows when it opens."""
    import gradio as gr

    default = inspector.default[1] if inspector.default else None
    first = inspect_values(inspector, None, folder) if folder else {}
    slider = first.get("slider") or {
        "minimum": 0.0 if default is None else min(0.0, default),
        "maximum": 1.0 if default is None else max(1.0, 2 * default),
        "value": 0.5 if default is None else default,
    }

    def inspect(files, folder):
        values = inspect_values(inspector, files, folder)
        return (
            *(values[k] for k in ("picture", "table", "message", "downloads")),
            gr.Slider(**values["slider"]),
            values["state"],
        )

    def rethreshold(threshold, state):
        if not state or not state["results"]:
            return None, None, "nothing inspected yet", None
        picture, table, downloads = _rows(state, float(threshold))
        return picture, table, _summary(state, float(threshold)), downloads

    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"## {TITLE}\n{inspector.describe()}")
        with gr.Row():
            files = gr.File(label="images", file_count="multiple", type="filepath", scale=3)
            with gr.Column(scale=2):
                folder_box = gr.Textbox(
                    label="or a folder on the server", placeholder="/data/parts/today", value=folder or ""
                )
                run = gr.Button("Inspect", variant="primary")
        threshold = gr.Slider(label="threshold (score at or above: defective)", interactive=True, **slider)
        message = gr.Markdown(first.get("message"))
        table = gr.Dataframe(
            first.get("table"),
            headers=["image", "score", "verdict"],
            label="verdicts",
            interactive=False,
            elem_classes="diffad-verdicts",
        )
        picture = gr.Image(
            first.get("picture"),
            label="input | map overlay | reconstruction | region above the threshold",
            type="numpy",
            format="png",  # exact colours (webp is lossy)
            interactive=False,
            show_label=False,  # the panel's own column titles say it
        )
        downloads = gr.File(
            first.get("downloads"),
            label="download: scores.csv and maps.zip (16-bit maps)",
            file_count="multiple",
        )
        state = gr.State(first.get("state"))
        outputs = [picture, table, message, downloads, threshold, state]
        run.click(inspect, inputs=[files, folder_box], outputs=outputs, api_name="inspect")
        threshold.release(
            rethreshold,
            inputs=[threshold, state],
            outputs=[picture, table, message, downloads],
            api_name="rethreshold",
        )
    return page


def theme():
    """Gradio's default look with system fonts: the page loads nothing from the internet."""
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def launch(page, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve `page` on host:port; with `block` False, return once it listens (tests)."""
    # One detection at a time: the model is not shared safely between threads, and a CPU has no
    # room for two anyway.
    page.queue(default_concurrency_limit=1)
    return page.launch(
        server_name=host,
        server_port=port,
        share=False,
        theme=theme(),
        css=CSS,
        ssr_mode=False,
        quiet=not block,
        prevent_thread_lock=not block,
        show_error=True,
    )
