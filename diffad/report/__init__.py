"""PNG panels and the HTML report."""
