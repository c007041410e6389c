"""Reporting: tables, figures, learning curves, the cost plan, the results explorer and the generated docs.
May import every lower subpackage; nothing imports it but stages and cli."""
