"""Traffic agents: small programs run inside a topology's namespaces (`python -m harness.agents.X`).

They import nothing from the rest of the harness, so they start fast and measure only themselves.
Each prints JSON lines on stdout: first {"ready": ...} when it can take traffic, last its result.
"""
