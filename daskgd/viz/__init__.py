"""Viz: Bokeh figures of a trace, the live dashboard and the HTML report."""
