"""What mixopt shows people: terminal.py formats every verb's tables and lines, html.py writes the
`mixopt report` page. The CLI's layer: it reads any stage, and no stage imports it."""
