"""Reports: figures, sections and the self-contained HTML of an audit or a map."""
