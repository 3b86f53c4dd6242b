"""PNG panels and the HTML report.

- `diffad.report.panels`: `colorize`, `overlay`, `make_panel`, `save_panel` (also for `diffad detect`
  and the training scripts).
- `diffad.report.outputs.write_outputs`: metrics.json, scores.csv and report.html of an evaluation.
- `diffad.report.evaluate`: `diffad evaluate` (loads a detector, runs it over a test split).
"""
