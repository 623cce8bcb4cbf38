"""The coordinator's read-only web dashboard (`coordinator serve --http-port`): agents, campaigns
as they run, each campaign's report page as it fills in, and Prometheus /metrics."""
