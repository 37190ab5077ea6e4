from repdiag.errors import UserError  # noqa: F401
