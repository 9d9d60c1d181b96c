"""From finished spans to usage events, and on to cmdrdata."""
