"""syncd: keeps a SmarterProctoring roster in step with Canvas or OneRoster, pushing only changes."""

__version__ = "0.1.0"
