"""``cmdrdata-run``: run a command with the agent bootstrapped into its Python processes."""
