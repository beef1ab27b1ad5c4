"""Files the tool writes next to a step: metrics, leases and quarantine records."""
