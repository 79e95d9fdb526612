"""Pipeline files and the stage runner (imports devide, crawlers, knowledge; nothing imports it)."""
