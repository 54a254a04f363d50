"""Run records -> paper-style tables (markdown, CSV, LaTeX) and plots."""
