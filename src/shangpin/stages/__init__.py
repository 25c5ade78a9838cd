"""Pipeline stages; each module holds one stage, listed in `shangpin.registry`."""
