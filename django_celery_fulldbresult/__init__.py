"""Keep the full record of every Celery task in the Django database."""

from importlib.metadata import PackageNotFoundError, version

try:
    # Declared once, in pyproject.toml.
    __version__ = version("django-celery-fulldbresult")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# Imported here, not only by the app config, so the checks (E001 above all:
# the backend named while the app is not installed) exist in any process
# that imports the package. See the module's docstring.
from . import checks as checks
