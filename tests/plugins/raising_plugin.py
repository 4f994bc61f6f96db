"""A plugin module that fails on import, as a broken third-party package would (registry tests)."""

raise RuntimeError("this plugin is broken")
