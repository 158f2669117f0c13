"""A module that fails to import, as a user's module with a bug would."""

raise RuntimeError("this module is broken")
