"""Results for readers: the classification table (mean ± std, paired tests) and its figures,
and the table renderers (Markdown, LaTeX, HTML) and display names they share."""
