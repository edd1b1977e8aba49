"""The demo: a site (this package) signing in through a bundled OpenID Connect
provider (:mod:`example_project.demo_provider`). Start both with ``make demo``."""
